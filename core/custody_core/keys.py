"""Public keys in the in-toto / securesystemslib key dict format, and their keyids.

Key ids are opaque: a layout states them and a signature names one, and matching
always uses the keyid as given. `compute_keyid` is only used to give a new key
an id. Two formulas exist:

- modern (securesystemslib >= 0.x `compute_default_keyid`, in-toto 3.1): sha256
  hex of the canonical JSON of {"keytype", "scheme", "keyval": {"public"}};
- legacy (older securesystemslib, the in-toto demo fixtures): the hashed dict
  also holds "keyid_hash_algorithms" (usually ["sha256", "sha512"]), so the same
  key gets another id. `compute_legacy_keyid` reproduces it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from custody_core.canonical import encode_canonical
from custody_core.errors import KeyFormatError

__all__ = [
    "LEGACY_KEYID_HASH_ALGORITHMS",
    "SCHEMES",
    "CryptoPublicKey",
    "KeyType",
    "PublicKey",
    "compute_keyid",
    "compute_legacy_keyid",
]

KeyType = Literal["ecdsa", "ed25519", "rsa"]
CryptoPublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

ECDSA_P256 = "ecdsa-sha2-nistp256"
ECDSA_P384 = "ecdsa-sha2-nistp384"
ED25519 = "ed25519"
RSA_PSS_SHA256 = "rsassa-pss-sha256"

# scheme -> keytype
SCHEMES: Mapping[str, str] = {
    ECDSA_P256: "ecdsa",
    ECDSA_P384: "ecdsa",
    ED25519: "ed25519",
    RSA_PSS_SHA256: "rsa",
}
LEGACY_KEYID_HASH_ALGORITHMS: tuple[str, ...] = ("sha256", "sha512")

_CURVE_FOR_SCHEME: Mapping[str, type[ec.EllipticCurve]] = {
    ECDSA_P256: ec.SECP256R1,
    ECDSA_P384: ec.SECP384R1,
}
_HASH_FOR_SCHEME: Mapping[str, type[hashes.HashAlgorithm]] = {
    ECDSA_P256: hashes.SHA256,
    ECDSA_P384: hashes.SHA384,
    RSA_PSS_SHA256: hashes.SHA256,
}
_ED25519_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PublicKey:
    """A public verification key as a layout lists it.

    `keyid` is taken as given and never recomputed when matching signatures.
    `public` is PEM SubjectPublicKeyInfo for ecdsa and rsa, and 64 lowercase hex
    characters for ed25519. `keyid_hash_algorithms` is kept only when a legacy
    key dict carried it, so that `to_dict` gives the dict back.
    """

    keyid: str
    keytype: str
    scheme: str
    public: str
    keyid_hash_algorithms: tuple[str, ...] | None = None
    _crypto_key: CryptoPublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str) or not self.keyid:
            raise KeyFormatError("key: keyid must be a non-empty string")
        if self.scheme not in SCHEMES:
            raise KeyFormatError(f"key {self.keyid}: unsupported scheme {self.scheme!r}")
        if SCHEMES[self.scheme] != self.keytype:
            raise KeyFormatError(
                f"key {self.keyid}: keytype {self.keytype!r} does not fit scheme {self.scheme!r}"
            )
        if not isinstance(self.public, str):
            raise KeyFormatError(f"key {self.keyid}: public key value must be a string")
        if self.keyid_hash_algorithms is not None and not all(
            isinstance(name, str) for name in self.keyid_hash_algorithms
        ):
            raise KeyFormatError(f"key {self.keyid}: keyid_hash_algorithms must be strings")
        object.__setattr__(self, "_crypto_key", _load_public(self))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether `signature` is valid over `data`. Never raises on a bad signature."""
        key = self._crypto_key
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, data, ec.ECDSA(_HASH_FOR_SCHEME[self.scheme]()))
            else:
                digest = _HASH_FOR_SCHEME[self.scheme]()
                pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.AUTO)
                key.verify(signature, data, pss, digest)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """The key dict as in-toto 3.1 writes it into a layout's `keys`.

        in-toto 3.1 (securesystemslib 1.x `SSlibKey.to_dict` plus "keyid") writes
        no `keyid_hash_algorithms`; it is included only for a legacy key read
        from a dict that had it.
        """
        result: dict[str, Any] = {
            "keyid": self.keyid,
            "keytype": self.keytype,
            "scheme": self.scheme,
            "keyval": {"public": self.public},
        }
        if self.keyid_hash_algorithms is not None:
            result["keyid_hash_algorithms"] = list(self.keyid_hash_algorithms)
        return result

    @property
    def crypto_key(self) -> CryptoPublicKey:
        """The `cryptography` public key object."""
        return self._crypto_key

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, keyid: str | None = None) -> PublicKey:
        """Read a layout or securesystemslib key dict.

        Accepts legacy dicts too: keytype "ecdsa-sha2-nistp256|384" (read as
        "ecdsa"), `keyid_hash_algorithms` present or not, a `private` part (ignored,
        never kept). The keyid is `keyid`, else data["keyid"], else computed the
        way the dict's writer would have: the legacy formula when the dict has
        `keyid_hash_algorithms`, the modern one otherwise.
        """
        if not isinstance(data, Mapping):
            raise KeyFormatError("key: key must be a JSON object")
        keytype = data.get("keytype")
        scheme = data.get("scheme")
        keyval = data.get("keyval")
        if not isinstance(keytype, str) or not isinstance(scheme, str):
            raise KeyFormatError("key: keytype and scheme must be strings")
        if not isinstance(keyval, Mapping) or not isinstance(keyval.get("public"), str):
            raise KeyFormatError("key: keyval.public must be a string")
        if keytype == scheme and scheme in _CURVE_FOR_SCHEME:
            keytype = "ecdsa"  # legacy keytype spelling
        public: str = keyval["public"]
        hash_algorithms = _read_hash_algorithms(data.get("keyid_hash_algorithms"))
        if keyid is None:
            keyid = data.get("keyid")
        if keyid is None:
            if hash_algorithms is None:
                keyid = compute_keyid(keytype=keytype, scheme=scheme, public=public)
            else:
                keyid = compute_legacy_keyid(
                    keytype=keytype,
                    scheme=scheme,
                    public=public,
                    hash_algorithms=hash_algorithms,
                )
        if not isinstance(keyid, str):
            raise KeyFormatError("key: keyid must be a string")
        if keytype == "ed25519":
            public = public.lower()  # after any keyid computation: it hashed the text as written
        return cls(
            keyid=keyid,
            keytype=keytype,
            scheme=scheme,
            public=public,
            keyid_hash_algorithms=hash_algorithms,
        )

    @classmethod
    def from_crypto(cls, key: object, *, scheme: str | None = None) -> PublicKey:
        """From a `cryptography` public key; keyid by the modern formula."""
        if isinstance(key, ed25519.Ed25519PublicKey):
            keytype = "ed25519"
            public = key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ).hex()
            default_scheme = ED25519
        elif isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            if isinstance(key, rsa.RSAPublicKey):
                keytype, default_scheme = "rsa", RSA_PSS_SHA256
            else:
                keytype, default_scheme = "ecdsa", _ecdsa_scheme_for_curve(key.curve)
            public = key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode("ascii")
        else:
            raise KeyFormatError(f"key: unsupported public key type {type(key).__name__}")
        chosen_scheme = scheme or default_scheme
        return cls(
            keyid=compute_keyid(keytype=keytype, scheme=chosen_scheme, public=public),
            keytype=keytype,
            scheme=chosen_scheme,
            public=public,
        )

    @classmethod
    def from_pem(cls, pem: str | bytes, *, scheme: str | None = None) -> PublicKey:
        """From a PEM SubjectPublicKeyInfo; keyid by the modern formula."""
        pem_bytes = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_public_key(pem_bytes)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError("key: not a PEM SubjectPublicKeyInfo public key") from exc
        return cls.from_crypto(key, scheme=scheme)


def compute_keyid(*, keytype: str, scheme: str, public: str) -> str:
    """The modern keyid: what securesystemslib 1.x `compute_default_keyid` returns."""
    return _sha256_canonical({"keytype": keytype, "scheme": scheme, "keyval": {"public": public}})


def compute_legacy_keyid(
    *,
    keytype: str,
    scheme: str,
    public: str,
    hash_algorithms: Sequence[str] = LEGACY_KEYID_HASH_ALGORITHMS,
) -> str:
    """The legacy keyid (old securesystemslib): `keyid_hash_algorithms` is hashed too."""
    return _sha256_canonical(
        {
            "keytype": keytype,
            "scheme": scheme,
            "keyval": {"public": public},
            "keyid_hash_algorithms": list(hash_algorithms),
        }
    )


def _sha256_canonical(value: dict[str, Any]) -> str:
    return hashlib.sha256(encode_canonical(value)).hexdigest()


def _read_hash_algorithms(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise KeyFormatError("key: keyid_hash_algorithms must be a list of strings")
    return tuple(value)


def _ecdsa_scheme_for_curve(curve: ec.EllipticCurve) -> str:
    for scheme, curve_type in _CURVE_FOR_SCHEME.items():
        if isinstance(curve, curve_type):
            return scheme
    raise KeyFormatError(f"key: unsupported elliptic curve {curve.name}")


def _load_public(key: PublicKey) -> CryptoPublicKey:
    """Parse `key.public` and check that it fits the keytype and scheme."""
    if key.keytype == "ed25519":
        if not _ED25519_HEX.fullmatch(key.public):
            raise KeyFormatError(f"key {key.keyid}: ed25519 public key must be 64 lowercase hex")
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.public))
    try:
        loaded = serialization.load_pem_public_key(key.public.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(
            f"key {key.keyid}: public key is not a PEM SubjectPublicKeyInfo"
        ) from exc
    if key.keytype == "rsa":
        if not isinstance(loaded, rsa.RSAPublicKey):
            raise KeyFormatError(f"key {key.keyid}: PEM does not hold an RSA key")
        return loaded
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise KeyFormatError(f"key {key.keyid}: PEM does not hold an EC key")
    if not isinstance(loaded.curve, _CURVE_FOR_SCHEME[key.scheme]):
        raise KeyFormatError(
            f"key {key.keyid}: curve {loaded.curve.name} does not fit scheme {key.scheme}"
        )
    return loaded
