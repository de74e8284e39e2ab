"""The key algorithms the key store generates, with their in-toto key type and scheme."""

from __future__ import annotations

import enum


class KeyAlgorithm(enum.Enum):
    """A key algorithm, named as the API names it; `.keytype`/`.scheme` are in-toto's names."""

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
