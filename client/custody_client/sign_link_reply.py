"""SignLinkResponse read from its wire bytes, without protobuf's runtime.

`custody run` sends a request LinkDraft encoded by hand and gets back one small message;
loading protobuf only to read it would lengthen every run (measured: see
docs/PERFORMANCE.md#client-start-up-and-exit). The wire format is
protobuf's: (field number, wire type) keys as varints, then a varint or a length and
bytes. As protobuf does, a field that comes twice keeps its last value, and unknown fields
(or known ones with another wire type) are skipped; anything that does not parse is a
ClientError, like a garbled reply.
"""

from __future__ import annotations

from collections.abc import Iterator

from custody_client.errors import ClientError
from custody_client.models import EnvelopeKind, SignedMetadata
from custody_core.api_enums import ENVELOPES_BY_NUMBER

# custody.v1.SignLinkResponse field numbers, as in protos/custody/v1/custody.proto.
# WIRE_FIELDS below lists each with the wire type it is read from;
# tests/client/test_wire_fields.py holds that table to the generated descriptor and fails
# when the message gains a field this reader does not know.
_SIGNED = 1
_FILE_NAME = 2
_KEYID = 3
_KEY_ALIAS = 4
_KEY_VERSION = 5
_ENVELOPE = 6
_SHA256 = 7
_STRINGS = {_FILE_NAME: "file_name", _KEYID: "keyid", _KEY_ALIAS: "key_alias",
            _SHA256: "sha256"}

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5

WIRE_FIELDS: dict[str, dict[str, tuple[int, int]]] = {
    "custody.v1.SignLinkResponse": {
        "signed": (_SIGNED, _LENGTH_DELIMITED),
        **{name: (number, _LENGTH_DELIMITED) for number, name in _STRINGS.items()},
        "key_version": (_KEY_VERSION, _VARINT),
        "envelope": (_ENVELOPE, _VARINT),
    },
}


class _Malformed(ValueError):
    pass


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFF_FFFF_FFFF_FFFF, position
        shift += 7


def wire_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) in order: an int for varints, bytes for the rest."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire_type == _VARINT:
            value, position = _varint(data, position)
            yield number, wire_type, value
            continue
        if wire_type == _LENGTH_DELIMITED:
            size, position = _varint(data, position)
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
        else:
            raise _Malformed(f"wire type {wire_type}")
        end = position + size
        if end > len(data):
            raise _Malformed("truncated field")
        yield number, wire_type, data[position:end]
        position = end


def read_sign_link_response(data: bytes) -> SignedMetadata:
    """The signed link and what the server says about it."""
    signed = b""
    strings = dict.fromkeys(_STRINGS.values(), "")
    key_version = envelope = 0
    try:
        for number, wire_type, value in wire_fields(data):
            if isinstance(value, int):  # a varint
                if number == _KEY_VERSION:
                    key_version = value & 0xFFFF_FFFF  # uint32
                elif number == _ENVELOPE:
                    envelope = value
            elif wire_type == _LENGTH_DELIMITED:
                if number == _SIGNED:
                    signed = value
                elif number in _STRINGS:
                    strings[_STRINGS[number]] = value.decode("utf-8")
            # anything else, a known field with another wire type included, is skipped
    except (_Malformed, UnicodeDecodeError) as error:
        raise ClientError(f"SignLink: the server's reply does not parse ({error})",
                          code="INTERNAL") from None
    return SignedMetadata(
        content=signed,
        file_name=strings["file_name"],
        keyid=strings["keyid"],
        key_alias=strings["key_alias"],
        key_version=key_version,
        envelope=ENVELOPES_BY_NUMBER.get(envelope, EnvelopeKind.METABLOCK),
        sha256=strings["sha256"],
    )
