"""The hand-made SignLinkResponse reader reads what protobuf writes, as protobuf would."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custody_api.v1 import custody_pb2 as pb
from custody_client.errors import ClientError
from custody_client.models import EnvelopeKind, SignedMetadata
from custody_client.sign_link_reply import read_sign_link_response

ENVELOPES = {pb.ENVELOPE_METABLOCK: EnvelopeKind.METABLOCK, pb.ENVELOPE_DSSE: EnvelopeKind.DSSE,
             pb.ENVELOPE_STATEMENT: EnvelopeKind.STATEMENT}


def expected(message: pb.SignLinkResponse) -> SignedMetadata:
    return SignedMetadata(content=message.signed, file_name=message.file_name,
                          keyid=message.keyid, key_alias=message.key_alias,
                          key_version=message.key_version,
                          envelope=ENVELOPES.get(message.envelope, EnvelopeKind.METABLOCK),
                          sha256=message.sha256)


@settings(max_examples=200, deadline=None)
@given(signed=st.binary(max_size=600), file_name=st.text(max_size=150),
       keyid=st.text(max_size=70), key_alias=st.text(max_size=40),
       key_version=st.integers(min_value=0, max_value=2**32 - 1),
       envelope=st.sampled_from([0, 1, 2, 3]), sha256=st.text(max_size=70))
def test_any_reply_reads_as_protobuf_reads_it(signed: bytes, file_name: str, keyid: str,
                                              key_alias: str, key_version: int, envelope: int,
                                              sha256: str) -> None:
    message = pb.SignLinkResponse(signed=signed, file_name=file_name, keyid=keyid,
                                  key_alias=key_alias, key_version=key_version,
                                  envelope=envelope, sha256=sha256)  # type: ignore[arg-type]
    assert read_sign_link_response(message.SerializeToString()) == expected(message)


def test_envelope_numbers_are_the_generated_ones() -> None:
    for number, kind in ENVELOPES.items():
        data = pb.SignLinkResponse(envelope=number).SerializeToString()
        assert read_sign_link_response(data).envelope is kind


def test_unknown_fields_are_skipped_and_the_last_value_wins() -> None:
    first = pb.SignLinkResponse(signed=b"old", keyid="a" * 64, key_version=1)
    second = pb.SignLinkResponse(signed=b"{}", key_version=2, envelope=pb.ENVELOPE_DSSE)
    # field 9 as varint, 10 as fixed64, 11 as bytes, 12 as fixed32: from a newer server;
    # key_version as bytes and signed as fixed32: skipped, as protobuf skips them
    unknown = (b"\x48\x96\x01" + b"\x51" + bytes(8) + b"\x5a\x03abc" + b"\x65" + bytes(4)
               + b"\x2a\x01x" + b"\x0d" + bytes(4))
    data = first.SerializeToString() + unknown + second.SerializeToString()
    merged = pb.SignLinkResponse.FromString(data)
    assert read_sign_link_response(data) == expected(merged)
    assert read_sign_link_response(data).content == b"{}"


@pytest.mark.parametrize("data", [
    b"\x0a\x05abc",  # bytes shorter than their length
    b"\x28",  # a key without its varint
    b"\x28\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint over ten bytes
    b"\x12\x02\xff\xfe",  # a file name that is not UTF-8
    b"\x0b",  # wire type 3 (start group)
    b"\x00\x01",  # field number 0
])
def test_a_reply_that_does_not_parse_is_a_client_error(data: bytes) -> None:
    with pytest.raises(ClientError, match="does not parse") as error:
        read_sign_link_response(data)
    assert error.value.code == "INTERNAL"


@pytest.mark.parametrize("stray", [
    b"\x0d" + b"abcd",  # signed (1) as fixed32
    b"\x09" + b"abcdefgh",  # signed (1) as fixed64
    b"\x15" + b"abcd",  # file_name (2) as fixed32
    b"\x08\x05",  # signed (1) as a varint
], ids=["signed-fixed32", "signed-fixed64", "file_name-fixed32", "signed-varint"])
def test_a_known_field_in_another_wire_type_is_skipped_even_last(stray: bytes) -> None:
    data = pb.SignLinkResponse(signed=b"{}", file_name="a.link").SerializeToString() + stray
    assert read_sign_link_response(data) == expected(pb.SignLinkResponse.FromString(data))
    assert read_sign_link_response(data).content == b"{}"
