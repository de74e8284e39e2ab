"""A link being recorded, encoded as the SignLinkRequest it will be, as it is recorded.

Artifacts are appended to the request's wire encoding as they are hashed (protobuf
lets repeated fields come in any order and pieces), so a step with 100,000 files holds
about 100 bytes per artifact once, instead of a dict, a message tree (~370 bytes per
artifact) and its serialization. Neither gRPC nor protobuf is imported (only
`to_message` loads the generated module): `custody run` fills the draft while both load
in a thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from custody_client.errors import InputError
from custody_client.models import Byproducts, EnvelopeKind
from custody_core.api_enums import ENVELOPE_NUMBERS

if TYPE_CHECKING:
    from custody_api.v1 import custody_pb2 as pb

# custody.v1.SignLinkRequest field numbers
_STEP_NAME, _COMMAND, _MATERIALS, _PRODUCTS, _BYPRODUCTS, _ENVIRONMENT, _KEY_ALIAS, \
    _ENVELOPE = range(1, 9)
_HEX_DIGITS = b"0123456789abcdef"
# Artifact.digest = {"sha256": <64 hex>}: field 2, one map entry {1: "sha256", 2: hex}.
_SHA256_DIGEST = b"\x12\x4a\x0a\x06sha256\x12\x40"
# An Artifact whose path has fewer than 50 UTF-8 bytes is under 128 bytes long, so both
# its length and its path's length are one-byte varints: this prefix, by path length.
_SHORT_PATH = 50
_SHORT_PREFIX = tuple(bytes((size + 2 + len(_SHA256_DIGEST) + 64, 1 << 3 | 2, size))
                      for size in range(_SHORT_PATH))


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


def _hex_digest(path: str, sha256: str) -> bytes:
    digest = sha256.encode("utf-8")
    # translate() deletes the hex digits: anything left over is not lowercase hex.
    if len(digest) != 64 or digest.translate(None, _HEX_DIGITS):
        raise InputError(f"artifact {path!r:.100}: sha256 must be 64 lowercase hex digits")
    return digest


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
        # The loop runs once per file of a tree: appends of ready-made pieces, no calls
        # per varint (3x faster than building each Artifact with the helpers above).
        tag = _varint(field << 3 | 2)
        body = self._body
        count = 0
        for path, sha256 in artifacts:
            digest = _hex_digest(path, sha256)
            encoded = path.encode("utf-8")
            size = len(encoded)
            body += tag
            if size < _SHORT_PATH:
                body += _SHORT_PREFIX[size]
                body += encoded
            else:
                artifact_path = _length_delimited(1, encoded)
                body += _varint(len(artifact_path) + len(_SHA256_DIGEST) + 64)
                body += artifact_path
            body += _SHA256_DIGEST
            body += digest
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
        tail += _varint(_ENVELOPE << 3) + _varint(ENVELOPE_NUMBERS[envelope])
        return b"".join((self._body, tail))  # one copy

    def to_message(self, *, key_alias: str = "",
                   envelope: EnvelopeKind = EnvelopeKind.METABLOCK) -> pb.SignLinkRequest:
        """The request as a protobuf message (for inspection and tests)."""
        from custody_api.v1 import custody_pb2 as pb

        return pb.SignLinkRequest.FromString(
            self.request_bytes(key_alias=key_alias, envelope=envelope))
