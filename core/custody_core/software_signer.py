"""Software keys for tests of the core only. Production keys live in the HSM."""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from custody_core.errors import KeyFormatError
from custody_core.keys import ECDSA_P256, ECDSA_P384, ED25519, RSA_PSS_SHA256, PublicKey

__all__ = ["SoftwareSigner"]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_RSA_GENERATED_BITS = 3072


class SoftwareSigner:
    """Signs with a private key held in process memory (implements `Signer`).

    Signatures are in the form in-toto expects before hex/base64: DER for
    ECDSA (SHA-256 on P-256, SHA-384 on P-384), raw 64 bytes for Ed25519,
    RSASSA-PSS with SHA-256, MGF1-SHA-256 and salt length = digest length.
    """

    def __init__(self, private_key: PrivateKey, public_key: PublicKey) -> None:
        self._private_key = private_key
        self._public_key = public_key

    def __repr__(self) -> str:  # never show the private key
        key = self._public_key
        return f"SoftwareSigner(keyid={key.keyid!r}, scheme={key.scheme!r})"

    @classmethod
    def generate(cls, scheme: str) -> SoftwareSigner:
        """A fresh key for `scheme`; keyid by the modern formula."""
        private_key: PrivateKey
        if scheme == ED25519:
            private_key = ed25519.Ed25519PrivateKey.generate()
        elif scheme == ECDSA_P256:
            private_key = ec.generate_private_key(ec.SECP256R1())
        elif scheme == ECDSA_P384:
            private_key = ec.generate_private_key(ec.SECP384R1())
        elif scheme == RSA_PSS_SHA256:
            private_key = rsa.generate_private_key(
                public_exponent=65537, key_size=_RSA_GENERATED_BITS
            )
        else:
            raise KeyFormatError(f"signer: unsupported scheme {scheme!r}")
        return cls(private_key, PublicKey.from_crypto(private_key.public_key(), scheme=scheme))

    @classmethod
    def from_private_pem(
        cls, pem: bytes, *, password: bytes | None = None, keyid: str | None = None
    ) -> SoftwareSigner:
        """Load a PEM private key (PKCS#8 or traditional); keyid given or modern formula."""
        try:
            private_key = serialization.load_pem_private_key(pem, password=password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError("signer: cannot load the PEM private key") from exc
        if not isinstance(
            private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
        ):
            raise KeyFormatError(f"signer: unsupported private key {type(private_key).__name__}")
        public_key = PublicKey.from_crypto(private_key.public_key())
        if keyid is not None:
            public_key = PublicKey(
                keyid=keyid,
                keytype=public_key.keytype,
                scheme=public_key.scheme,
                public=public_key.public,
            )
        return cls(private_key, public_key)

    @property
    def public_key(self) -> PublicKey:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        key = self._private_key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            digest: hashes.HashAlgorithm = (
                hashes.SHA384() if self._public_key.scheme == ECDSA_P384 else hashes.SHA256()
            )
            return key.sign(data, ec.ECDSA(digest))
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        return key.sign(data, pss, hashes.SHA256())
