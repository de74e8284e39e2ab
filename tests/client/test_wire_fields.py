"""The hand-made SignLink wire code knows custody.proto: every number, every wire type,
every field.

`custody_client.link_draft` writes SignLinkRequest and `custody_client.sign_link_reply`
reads SignLinkResponse without protobuf's runtime, from field numbers of their own
(`WIRE_FIELDS`). Held here to the generated descriptors, so that a renumbered field, a
changed type or a field added to the proto cannot be dropped silently.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from custody_api.v1 import custody_pb2 as pb
from custody_client import link_draft, sign_link_reply

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
_VARINT_TYPES = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM,
}
_FIXED64_TYPES = {FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
                  FieldDescriptor.TYPE_DOUBLE}
_FIXED32_TYPES = {FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32,
                  FieldDescriptor.TYPE_FLOAT}

# Fields the hand-made code deliberately leaves out, by message, each with the reason.
# None today: the draft writes every SignLinkRequest field and the reader reads every
# SignLinkResponse field. A field added to the proto fails the test below until it is
# handled in the module or listed here.
NOT_WRITTEN: dict[str, set[str]] = {}
NOT_READ: dict[str, set[str]] = {}

CODECS = [
    pytest.param(link_draft.WIRE_FIELDS, pb.SignLinkRequest.DESCRIPTOR, NOT_WRITTEN,
                 id="link_draft-SignLinkRequest"),
    pytest.param(sign_link_reply.WIRE_FIELDS, pb.SignLinkResponse.DESCRIPTOR, NOT_READ,
                 id="sign_link_reply-SignLinkResponse"),
]


def wire_type(field: FieldDescriptor) -> int:
    """The wire type protobuf writes `field` with (one element, for a repeated field)."""
    if field.is_packed:
        return LENGTH_DELIMITED
    if field.type in _VARINT_TYPES:
        return VARINT
    if field.type in _FIXED64_TYPES:
        return FIXED64
    if field.type in _FIXED32_TYPES:
        return FIXED32
    assert field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES,
                          FieldDescriptor.TYPE_MESSAGE), field.full_name
    return LENGTH_DELIMITED


def handled_messages(message: Descriptor, table: dict[str, dict[str, tuple[int, int]]]
                     ) -> dict[str, Descriptor]:
    """`message` and every message type the fields handled in `table` lead to."""
    found = {message.full_name: message}
    for name in table.get(message.full_name, {}):
        field = message.fields_by_name.get(name)
        if field is not None and field.message_type is not None:
            found |= handled_messages(field.message_type, table)
    return found


@pytest.mark.parametrize(("table", "root", "not_handled"), CODECS)
def test_every_message_on_the_wire_has_its_fields_listed(
    table: dict[str, dict[str, tuple[int, int]]], root: Descriptor,
    not_handled: dict[str, set[str]],
) -> None:
    messages = handled_messages(root, table)
    # Nested messages and map entries too: an Artifact or Byproducts field counts.
    assert set(table) == set(messages)
    for full_name, message in messages.items():
        in_proto = set(message.fields_by_name) - not_handled.get(full_name, set())
        assert set(table[full_name]) == in_proto, (
            f"{full_name}: the proto has {sorted(in_proto)}, the hand-made code handles "
            f"{sorted(table[full_name])}; handle a new field or list it as not handled")


@pytest.mark.parametrize(("table", "root", "not_handled"), CODECS)
def test_every_number_and_wire_type_is_the_protos(
    table: dict[str, dict[str, tuple[int, int]]], root: Descriptor,
    not_handled: dict[str, set[str]],
) -> None:
    for full_name, message in handled_messages(root, table).items():
        for name, (number, wire) in table.get(full_name, {}).items():
            field = message.fields_by_name[name]
            assert (number, wire) == (field.number, wire_type(field)), field.full_name
