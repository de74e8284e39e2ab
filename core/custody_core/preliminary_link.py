"""The preliminary link of `record start`, checked at `record stop` before it is used.

in-toto-record signs the unfinished link at `start` and checks that signature at `stop`,
so whoever can write the working directory in between cannot change the recorded
materials. Custody does the same with the service's key: `custody record start` has the
preliminary link (the step's materials, no command, no products) signed by SignLink and
keeps it; `record stop` hands it back, and SignLink signs the final link with its
materials only if `check_preliminary_link` accepts it.
"""

from __future__ import annotations

from collections.abc import Mapping

from custody_core.envelope import parse_envelope
from custody_core.errors import MetadataError, SignatureError
from custody_core.keys import PublicKey
from custody_core.models import Link
from custody_core.step_links import link_from_envelope

__all__ = ["check_preliminary_link"]


def check_preliminary_link(
    data: bytes,
    *,
    step_name: str,
    keys: Mapping[str, PublicKey],
    environment: Mapping[str, str],
) -> Link:
    """The preliminary link in `data`, if one of `keys` signed it, it is for `step_name`,
    records no products and no command, and its environment holds every item of
    `environment` (who asked for it).

    MetadataError: `data` is not a preliminary link for this step. SignatureError: none
    of `keys` signed it, or another identity asked for it.
    """
    try:
        envelope = parse_envelope(data)
        link = link_from_envelope(envelope)
    except MetadataError as exc:
        raise MetadataError(f"preliminary link: {exc}") from None
    if not envelope.verified_keyids(keys):
        raise SignatureError(
            "preliminary link: not signed by the key this step signs with (changed since "
            "`record start`, or recorded with another key): record the step again"
        )
    if link.name != step_name:
        raise MetadataError(
            f"preliminary link: it is for step {link.name[:100]!r}, not {step_name[:100]!r}"
        )
    if link.products or link.command:
        raise MetadataError("preliminary link: it records a command or products; a "
                            "`record start` link records only materials")
    for name, value in environment.items():
        if link.environment.get(name) != value:
            raise SignatureError(f"preliminary link: recorded for another {name}, not "
                                 f"{value[:100]!r}")
    return link
