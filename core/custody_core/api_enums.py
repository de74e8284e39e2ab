"""The two choices a caller names: how signed metadata is wrapped, and a key's algorithm.

Client and server share these values, and the custody.v1 API carries them as enum
numbers (protos/custody/v1/custody.proto). The numbers are written here once, as plain
data: the core imports no generated code, and `custody run` encodes its SignLinkRequest
by hand without loading protobuf (custody_client.link_draft), so neither side can take
them from custody_api at import time. tests/api/test_api_enums.py holds them to the
generated descriptor, so a value added to the proto fails there instead of being dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class EnvelopeKind(enum.Enum):
    """How signed metadata is wrapped (custody.v1.Envelope)."""

    METABLOCK = "metablock"  # classic in-toto {"signed", "signatures"}
    DSSE = "dsse"  # DSSE around the classic link or layout JSON
    STATEMENT = "statement"  # DSSE around an in-toto Statement v1 (links only)


class KeyAlgorithm(enum.Enum):
    """A service key's algorithm (custody.v1.KeyAlgorithm), named as the CLI spells it;
    `.keytype` and `.scheme` are its in-toto / securesystemslib names."""

    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    ED25519 = "ed25519"
    RSA_3072 = "rsa-3072"

    @property
    def keytype(self) -> str:
        """in-toto / securesystemslib `keytype`."""
        return _KEYTYPE[self]

    @property
    def scheme(self) -> str:
        """in-toto / securesystemslib `scheme`: fixes the hash and padding of a signature."""
        return _SCHEME[self]


_KEYTYPE = {
    KeyAlgorithm.ECDSA_P256: "ecdsa",
    KeyAlgorithm.ECDSA_P384: "ecdsa",
    KeyAlgorithm.ED25519: "ed25519",
    KeyAlgorithm.RSA_3072: "rsa",
}
_SCHEME = {
    KeyAlgorithm.ECDSA_P256: "ecdsa-sha2-nistp256",
    KeyAlgorithm.ECDSA_P384: "ecdsa-sha2-nistp384",
    KeyAlgorithm.ED25519: "ed25519",
    KeyAlgorithm.RSA_3072: "rsassa-pss-sha256",
}

# The number 0 of both API enums (ENVELOPE_UNSPECIFIED, KEY_ALGORITHM_UNSPECIFIED): the
# field was not set, and the server applies its default. It names no value here.
UNSPECIFIED = 0

ENVELOPE_NUMBERS: Mapping[EnvelopeKind, int] = MappingProxyType({
    EnvelopeKind.METABLOCK: 1,
    EnvelopeKind.DSSE: 2,
    EnvelopeKind.STATEMENT: 3,
})
ENVELOPES_BY_NUMBER: Mapping[int, EnvelopeKind] = MappingProxyType(
    {number: kind for kind, number in ENVELOPE_NUMBERS.items()})

KEY_ALGORITHM_NUMBERS: Mapping[KeyAlgorithm, int] = MappingProxyType({
    KeyAlgorithm.ECDSA_P256: 1,
    KeyAlgorithm.ECDSA_P384: 2,
    KeyAlgorithm.ED25519: 3,
    KeyAlgorithm.RSA_3072: 4,
})
KEY_ALGORITHMS_BY_NUMBER: Mapping[int, KeyAlgorithm] = MappingProxyType(
    {number: algorithm for algorithm, number in KEY_ALGORITHM_NUMBERS.items()})
