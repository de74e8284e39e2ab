"""The core's API enum numbers (custody_core.api_enums) are the generated descriptor's.

Client and server both convert through those numbers, and `custody run` writes them on
the wire by hand: a number that drifted from the proto would sign with another envelope
than the one asked for, and a value added to the proto would be unknown to both sides.
"""

from __future__ import annotations

import enum

import pytest
from google.protobuf.descriptor import EnumDescriptor

from custody_api.v1 import custody_pb2 as pb
from custody_core.api_enums import (
    ENVELOPE_NUMBERS,
    ENVELOPES_BY_NUMBER,
    KEY_ALGORITHM_NUMBERS,
    KEY_ALGORITHMS_BY_NUMBER,
    UNSPECIFIED,
    EnvelopeKind,
    KeyAlgorithm,
)

CASES = [
    (pb.Envelope.DESCRIPTOR, "ENVELOPE_", EnvelopeKind, ENVELOPE_NUMBERS, ENVELOPES_BY_NUMBER),
    (pb.KeyAlgorithm.DESCRIPTOR, "KEY_ALGORITHM_", KeyAlgorithm, KEY_ALGORITHM_NUMBERS,
     KEY_ALGORITHMS_BY_NUMBER),
]


@pytest.mark.parametrize(("descriptor", "prefix", "kind", "numbers", "by_number"), CASES,
                         ids=["Envelope", "KeyAlgorithm"])
def test_every_proto_value_is_a_member_with_its_number(
    descriptor: EnumDescriptor, prefix: str, kind: type[enum.Enum],
    numbers: dict[enum.Enum, int], by_number: dict[int, enum.Enum],
) -> None:
    proto = {value.name.removeprefix(prefix): value.number for value in descriptor.values}
    assert proto.pop("UNSPECIFIED") == UNSPECIFIED
    assert {member.name: numbers[member] for member in kind} == proto
    assert {number: member.name for number, member in by_number.items()} == {
        number: name for name, number in proto.items()}


def test_key_algorithms_name_the_schemes_the_proto_documents() -> None:
    # custody.proto documents each KeyAlgorithm's scheme in a comment; the keys the HSM
    # makes carry these schemes, and verifiers pick hash and padding by them.
    assert {a.name: (a.keytype, a.scheme) for a in KeyAlgorithm} == {
        "ECDSA_P256": ("ecdsa", "ecdsa-sha2-nistp256"),
        "ECDSA_P384": ("ecdsa", "ecdsa-sha2-nistp384"),
        "ED25519": ("ed25519", "ed25519"),
        "RSA_3072": ("rsa", "rsassa-pss-sha256"),
    }
