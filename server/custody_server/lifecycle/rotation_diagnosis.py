"""Verify's explanation of a threshold failure that a key rotation caused.

A layout lists key versions by keyid. When a step fails its threshold and a link for it is
validly signed by a version of an alias whose other versions the step lists, the cause is
a rotation (the link is newer than the layout) or an old link (older than the layout): the
failure's reason then says which, and what to do, e.g.

    package.5e6f7a8b.link is signed by build v3, but the layout lists build v1, build v2
    for step 'package': build was rotated after the layout was signed (v3 signs since
    2026-03-05T09:00:00Z): re-sign the layout (custody sign-layout --refresh)

Only link files at the top of the link directory are looked at (a sublayout's steps have
their own failures); a verdict without such a failure is returned as it is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Protocol

from custody_core.envelope import parse_envelope
from custody_core.errors import MetadataError
from custody_core.models import Layout, Step
from custody_core.verdict import Stage, Verdict
from custody_server.lifecycle.model import KeyVersion
from custody_server.lifecycle.rotation import format_time

_MAX_EXPLAINED = 3  # causes named per failure; the rest is counted


class KeyidLookup(Protocol):
    def find_keyid(self, keyid: str) -> KeyVersion | None: ...


def explain_rotations(verdict: Verdict, *, layout: bytes, links: Mapping[str, bytes],
                      keys: KeyidLookup) -> Verdict:
    """The verdict, with the rotation named in each threshold failure it caused."""
    failing = [f for f in verdict.failures if f.stage is Stage.THRESHOLD and f.step]
    if not failing:
        return verdict
    try:
        steps = {s.name: s for s in Layout.from_payload(parse_envelope(layout).payload).steps}
    except MetadataError:
        return verdict  # the verdict names what is wrong with the layout
    failures = []
    for failure in verdict.failures:
        step = steps.get(failure.step or "") if failure in failing else None
        causes = _causes(step, links, keys) if step is not None else []
        if causes:
            more = len(causes) - _MAX_EXPLAINED
            reason = failure.reason + "; " + "; ".join(causes[:_MAX_EXPLAINED]) + (
                f"; and {more} more such link(s)" if more > 0 else "")
            failure = dataclasses.replace(failure, reason=reason)
        failures.append(failure)
    return Verdict.of(failures=tuple(failures), warnings=verdict.warnings,
                      trace=verdict.trace)


def _causes(step: Step, links: Mapping[str, bytes], keys: KeyidLookup) -> list[str]:
    listed: dict[str, list[KeyVersion]] = {}
    for keyid in step.pubkeys:
        version = keys.find_keyid(keyid)
        if version is not None:
            listed.setdefault(version.alias, []).append(version)
    if not listed:
        return []
    prefixes = {keyid[:8] for keyid in step.pubkeys}
    name = re.compile(re.escape(step.name) + r"\.([0-9a-f]{8})\.link")
    causes = []
    for file_name in sorted(links):
        match = name.fullmatch(file_name)
        if match is None or match[1] in prefixes:
            continue  # not this step's, or a listed key's (the core said why it failed)
        signer = _service_signer(links[file_name], match[1], keys)
        if signer is not None and signer.alias in listed:
            causes.append(_cause(file_name, signer, listed[signer.alias], step.name))
    return causes


def _service_signer(data: bytes, prefix: str, keys: KeyidLookup) -> KeyVersion | None:
    """The Custody key version whose valid signature the link file carries, if any."""
    try:
        envelope = parse_envelope(data)
    except MetadataError:
        return None
    for signature in envelope.signatures:
        version = keys.find_keyid(signature.keyid)
        if (version is not None and version.keyid.startswith(prefix)
                and envelope.verified_keyids({version.keyid: version.public_key})):
            return version
    return None


def _cause(file_name: str, signer: KeyVersion, listed: list[KeyVersion], step: str) -> str:
    names = ", ".join(v.name for v in sorted(listed, key=lambda v: v.version))
    head = (f"{file_name} is signed by {signer.name}, but the layout lists {names} for "
            f"step '{step}'")
    if signer.version < min(v.version for v in listed):
        newest = max(listed, key=lambda v: v.version)
        return (f"{head}: the link is older than the layout: record the step again, so "
                f"that {newest.alias}'s current version signs it")
    since = signer.lifecycle.became_active
    when = f" ({signer.name} signs since {format_time(since)})" if since else ""
    return (f"{head}: {signer.alias} was rotated after the layout was signed{when}: "
            "re-sign the layout (custody sign-layout --refresh)")
