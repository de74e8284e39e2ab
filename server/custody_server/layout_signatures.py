"""Signed layouts as SignLayout's `append` and `refresh` take them: who signed, and adding a
signature without changing anything else (as `in-toto-sign -a` does).

- Metablock: a new signature covers the canonical JSON of `signed`, which is what the
  existing signatures cover; `signed` and the existing signature objects are kept as they
  are (written in in-toto's indented style).
- DSSE: a new signature covers PAE(payloadType, payload) over the payload bytes as
  received; the base64 payload text and the existing signature objects are kept.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from custody_core.api_enums import EnvelopeKind
from custody_core.envelope import Envelope, parse_envelope
from custody_core.errors import MetadataError, SignatureError
from custody_core.keys import PublicKey
from custody_core.signer import Signer
from custody_core.strict_json import parse_json
from custody_server.errors import RequestError
from custody_server.lifecycle.model import KeyVersion

ALIAS_PREFIX = "alias:"


class KeyidLookup(Protocol):
    """What this module needs of the key ring: the Custody version of a keyid, if any."""

    def find_keyid(self, keyid: str) -> KeyVersion | None: ...


@dataclass(frozen=True)
class SignedLayout:
    """A signed layout as received: its envelope, its payload and its raw document."""

    kind: EnvelopeKind  # METABLOCK or DSSE
    envelope: Envelope
    document: Mapping[str, Any]

    @property
    def payload(self) -> dict[str, Any]:
        """A copy of the layout, to change."""
        return copy.deepcopy(dict(self.envelope.payload))

    @property
    def keyids(self) -> tuple[str, ...]:
        """The keyids of its signatures, in order, without repeats."""
        return tuple(dict.fromkeys(s.keyid for s in self.envelope.signatures))

    def verifies(self, key: PublicKey) -> bool:
        return key.keyid in self.envelope.verified_keyids({key.keyid: key})


def read_signed_layout(data: bytes, *, what: str) -> SignedLayout:
    """The layout in a Metablock or DSSE envelope; RequestError says why not."""
    document = parse_json(data, what="layout").value
    if not isinstance(document, dict) or not ("signed" in document or "payload" in document):
        raise RequestError(f"{what} needs a signed layout (a Metablock or a DSSE envelope)")
    try:
        envelope = parse_envelope(data)
    except MetadataError as error:
        raise MetadataError(f"layout: {error}") from None
    if envelope.payload.get("_type") != "layout":
        raise MetadataError(
            f"layout _type must be 'layout', got {envelope.payload.get('_type')!r:.40}")
    kind = EnvelopeKind.METABLOCK if envelope.kind == "metablock" else EnvelopeKind.DSSE
    return SignedLayout(kind=kind, envelope=envelope, document=document)


def refuse_aliases(payload: Mapping[str, Any], *, what: str) -> None:
    """A signed layout names keys by keyid: "alias:NAME" would need resolving, which
    changes what the existing signatures cover."""
    for step in payload.get("steps") or []:
        pubkeys = step.get("pubkeys") if isinstance(step, dict) else None
        for entry in pubkeys if isinstance(pubkeys, list) else []:
            if isinstance(entry, str) and entry.startswith(ALIAS_PREFIX):
                raise RequestError(
                    f"{what}: step '{str(step.get('name', ''))[:100]}' names {entry[:80]!r}; "
                    "a signed layout lists keyids (resolve aliases by signing it without "
                    "--append first)")


def check_custody_signatures(layout: SignedLayout, *, keys: KeyidLookup, what: str) -> None:
    """Every signature by a Custody key version must verify: otherwise the layout changed
    after it was signed, and a new signature must not vouch for it."""
    for keyid in layout.keyids:
        version = keys.find_keyid(keyid)
        if version is not None and not layout.verifies(version.public_key):
            raise RequestError(
                f"{what}: the layout's signature by {version.name} (keyid {keyid[:8]}) does "
                "not verify: the layout changed after it was signed")


def appended(layout: SignedLayout, signer: Signer) -> bytes:
    """The layout with one more signature, by `signer`, over what the others cover."""
    data = bytes(layout.envelope.signed_bytes)  # bytes already: parse_envelope default
    signature = signer.sign(data)
    if not signer.public_key.verify(signature, data):
        raise SignatureError(f"signer {signer.public_key.keyid} produced a signature that "
                             "does not verify")
    existing = _signature_objects(layout.document)
    if layout.kind is EnvelopeKind.METABLOCK:
        entry = {"keyid": signer.public_key.keyid, "sig": signature.hex()}
        document: dict[str, Any] = {"signatures": [*existing, entry],
                                    "signed": layout.document["signed"]}
    else:
        entry = {"keyid": signer.public_key.keyid,
                 "sig": base64.b64encode(signature).decode("ascii")}
        document = {"payload": layout.document["payload"],
                    "payloadType": layout.document.get("payloadType"),
                    "signatures": [*existing, entry]}
    return json.dumps(document, indent=1, separators=(",", ": "),
                      sort_keys=True).encode("ascii")


def _signature_objects(document: Mapping[str, Any]) -> Sequence[Any]:
    signatures = document.get("signatures")
    return signatures if isinstance(signatures, list) else []
