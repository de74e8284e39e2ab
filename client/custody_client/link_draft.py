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

# Field numbers, as in protos/custody/v1/custody.proto. WIRE_FIELDS below lists each with
# the wire type it is written with; tests/client/test_wire_fields.py holds that table to the
# generated descriptors and fails when a message gains a field this encoder does not write.
# custody.v1.SignLinkRequest
_STEP_NAME = 1
_COMMAND = 2
_MATERIALS = 3
_PRODUCTS = 4
_BYPRODUCTS = 5
_ENVIRONMENT = 6
_KEY_ALIAS = 7
_ENVELOPE = 8
_PRELIMINARY_LINK = 9
_RUN_ID = 10
# custody.v1.Artifact
_ARTIFACT_PATH = 1
_ARTIFACT_DIGEST = 2
# custody.v1.Byproducts
_STDOUT = 1
_STDERR = 2
_RETURN_VALUE = 3
# The entries of a map<string, string> (Artifact.digest, SignLinkRequest.environment)
_MAP_KEY = 1
_MAP_VALUE = 2
# Wire types
_VARINT = 0
_LENGTH_DELIMITED = 2

_LD = _LENGTH_DELIMITED
WIRE_FIELDS: dict[str, dict[str, tuple[int, int]]] = {
    "custody.v1.SignLinkRequest": {
        "step_name": (_STEP_NAME, _LD), "command": (_COMMAND, _LD),
        "materials": (_MATERIALS, _LD), "products": (_PRODUCTS, _LD),
        "byproducts": (_BYPRODUCTS, _LD), "environment": (_ENVIRONMENT, _LD),
        "key_alias": (_KEY_ALIAS, _LD), "envelope": (_ENVELOPE, _VARINT),
        "preliminary_link": (_PRELIMINARY_LINK, _LD), "run_id": (_RUN_ID, _LD),
    },
    "custody.v1.SignLinkRequest.EnvironmentEntry": {
        "key": (_MAP_KEY, _LD), "value": (_MAP_VALUE, _LD),
    },
    "custody.v1.Artifact": {"path": (_ARTIFACT_PATH, _LD), "digest": (_ARTIFACT_DIGEST, _LD)},
    "custody.v1.Artifact.DigestEntry": {"key": (_MAP_KEY, _LD), "value": (_MAP_VALUE, _LD)},
    "custody.v1.Byproducts": {
        "stdout": (_STDOUT, _LD), "stderr": (_STDERR, _LD),
        "return_value": (_RETURN_VALUE, _VARINT),
    },
}
_HEX_DIGITS = b"0123456789abcdef"


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 negatives: ten bytes, two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _length_delimited(field: int, data: bytes) -> bytes:
    return _key(field, _LENGTH_DELIMITED) + _varint(len(data)) + data


def _string(field: int, text: str) -> bytes:
    return _length_delimited(field, text.encode("utf-8"))


# Artifact.digest = {"sha256": <64 hex>}: one map entry {key: "sha256", value: hex}, all of
# it but the 64 hex digits, which follow.
_SHA256_ENTRY = _string(_MAP_KEY, "sha256") + _key(_MAP_VALUE, _LENGTH_DELIMITED) + _varint(64)
_SHA256_DIGEST = _key(_ARTIFACT_DIGEST, _LENGTH_DELIMITED) + _varint(len(_SHA256_ENTRY) + 64) \
    + _SHA256_ENTRY
# An Artifact whose path has fewer than 50 UTF-8 bytes is under 128 bytes long, so both
# its length and its path's length are one-byte varints: this prefix, by path length.
_SHORT_PATH = 50
_SHORT_PREFIX = tuple(_varint(size + 2 + len(_SHA256_DIGEST) + 64)
                      + _key(_ARTIFACT_PATH, _LENGTH_DELIMITED) + _varint(size)
                      for size in range(_SHORT_PATH))


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
        self._preliminary_link = b""
        self._run_id = ""

    def add_materials(self, artifacts: Iterable[tuple[str, str]]) -> int:
        """Add (path, sha256 hex) pairs as materials; returns how many were added."""
        return self._add(_MATERIALS, artifacts)

    def add_products(self, artifacts: Iterable[tuple[str, str]]) -> int:
        return self._add(_PRODUCTS, artifacts)

    def _add(self, field: int, artifacts: Iterable[tuple[str, str]]) -> int:
        # The loop runs once per file of a tree: appends of ready-made pieces, no calls
        # per varint, faster than building each Artifact with the helpers above (measured:
        # see docs/PERFORMANCE.md#linkdraft-encoding).
        tag = _key(field, _LENGTH_DELIMITED)
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
                artifact_path = _length_delimited(_ARTIFACT_PATH, encoded)
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

    def set_preliminary_link(self, signed: bytes) -> None:
        """`record stop`: the signed link of `record start`, whose materials the server
        signs once it has checked them (then add no materials here)."""
        self._preliminary_link = signed

    def set_run_id(self, run_id: str) -> None:
        """The pipeline run this step belongs to (the server's attestation store groups
        links by it; the signed link records it as `custody.run-id`)."""
        self._run_id = run_id

    def request_bytes(self, *, key_alias: str, envelope: EnvelopeKind) -> bytes:
        """The serialized SignLinkRequest."""
        tail = bytearray()
        if self._byproducts is not None:
            byproducts = self._byproducts
            message = _string(_STDOUT, byproducts.stdout) + _string(_STDERR, byproducts.stderr)
            if byproducts.return_value is not None:
                message += _key(_RETURN_VALUE, _VARINT) + _varint(byproducts.return_value)
            tail += _length_delimited(_BYPRODUCTS, message)
        for name, value in self._environment.items():
            entry = _string(_MAP_KEY, name) + _string(_MAP_VALUE, value)
            tail += _length_delimited(_ENVIRONMENT, entry)
        tail += _string(_KEY_ALIAS, key_alias)
        tail += _key(_ENVELOPE, _VARINT) + _varint(ENVELOPE_NUMBERS[envelope])
        if self._preliminary_link:
            tail += _length_delimited(_PRELIMINARY_LINK, self._preliminary_link)
        if self._run_id:
            tail += _string(_RUN_ID, self._run_id)
        return b"".join((self._body, tail))  # one copy

    def to_message(self, *, key_alias: str = "",
                   envelope: EnvelopeKind = EnvelopeKind.METABLOCK) -> pb.SignLinkRequest:
        """The request as a protobuf message (for inspection and tests)."""
        from custody_api.v1 import custody_pb2 as pb

        return pb.SignLinkRequest.FromString(
            self.request_bytes(key_alias=key_alias, envelope=envelope))
