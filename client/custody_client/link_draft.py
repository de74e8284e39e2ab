"""A link being recorded, encoded as the SignLinkRequest it will be, as it is recorded.

Artifacts are appended to the request's wire encoding as they are hashed (protobuf
lets repeated fields come in any order and pieces), so a step with 100,000 files holds
about 100 bytes per artifact once, instead of a dict, a message tree (~370 bytes per
artifact) and its serialization. Only protobuf's generated module is imported (for
`to_message`), no gRPC: `custody run` fills the draft while gRPC loads in a thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from custody_api.v1 import custody_pb2 as pb
from custody_client.errors import InputError
from custody_client.models import Byproducts, EnvelopeKind

ENVELOPE_TO_PB = {
    EnvelopeKind.METABLOCK: pb.ENVELOPE_METABLOCK,
    EnvelopeKind.DSSE: pb.ENVELOPE_DSSE,
    EnvelopeKind.STATEMENT: pb.ENVELOPE_STATEMENT,
}

# custody.v1.SignLinkRequest field numbers
_STEP_NAME, _COMMAND, _MATERIALS, _PRODUCTS, _BYPRODUCTS, _ENVIRONMENT, _KEY_ALIAS, \
    _ENVELOPE = range(1, 9)
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Artifact.digest = {"sha256": <64 hex>}: field 2, one map entry {1: "sha256", 2: hex}.
_SHA256_DIGEST = b"\x12\x4a\x0a\x06sha256\x12\x40"


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 negatives: ten bytes, two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _string(field: int, text: str) -> bytes:
    return _length_delimited(field, text.encode("utf-8"))


def _artifact(path: str, sha256: str) -> bytes:
    if not _HEX64.fullmatch(sha256):
        raise InputError(f"artifact {path!r:.100}: sha256 must be 64 lowercase hex digits")
    body = _string(1, path) + _SHA256_DIGEST + sha256.encode("ascii")
    return _varint(len(body)) + body


class LinkDraft:
    """A link being recorded: step name, command, artifacts, byproducts, environment."""

    def __init__(self, *, step_name: str, command: Sequence[str] = ()) -> None:
        self.step_name = step_name
        self._body = bytearray(_string(_STEP_NAME, step_name))
        for argument in command:
            self._body += _string(_COMMAND, argument)
        self._byproducts: Byproducts | None = None
        self._environment: dict[str, str] = {}

    def add_materials(self, artifacts: Iterable[tuple[str, str]]) -> int:
        """Add (path, sha256 hex) pairs as materials; returns how many were added."""
        return self._add(_MATERIALS, artifacts)

    def add_products(self, artifacts: Iterable[tuple[str, str]]) -> int:
        return self._add(_PRODUCTS, artifacts)

    def _add(self, field: int, artifacts: Iterable[tuple[str, str]]) -> int:
        tag = _varint(field << 3 | 2)
        body = self._body
        count = 0
        for path, sha256 in artifacts:
            body += tag
            body += _artifact(path, sha256)
            count += 1
        return count

    def set_byproducts(self, byproducts: Byproducts) -> None:
        self._byproducts = byproducts

    def set_environment(self, environment: Mapping[str, str]) -> None:
        self._environment.update(environment)

    def request_bytes(self, *, key_alias: str, envelope: EnvelopeKind) -> bytes:
        """The serialized SignLinkRequest."""
        tail = bytearray()
        if self._byproducts is not None:
            message = _string(1, self._byproducts.stdout) + _string(2, self._byproducts.stderr)
            if self._byproducts.return_value is not None:
                message += _varint(3 << 3) + _varint(self._byproducts.return_value)
            tail += _length_delimited(_BYPRODUCTS, message)
        for name, value in self._environment.items():
            tail += _length_delimited(_ENVIRONMENT, _string(1, name) + _string(2, value))
        tail += _string(_KEY_ALIAS, key_alias)
        tail += _varint(_ENVELOPE << 3) + _varint(ENVELOPE_TO_PB[envelope])
        return b"".join((self._body, tail))  # one copy

    def to_message(self, *, key_alias: str = "",
                   envelope: EnvelopeKind = EnvelopeKind.METABLOCK) -> pb.SignLinkRequest:
        """The request as a protobuf message (for inspection and tests)."""
        return pb.SignLinkRequest.FromString(
            self.request_bytes(key_alias=key_alias, envelope=envelope))
