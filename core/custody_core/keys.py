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
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from custody_core.canonical import encode_canonical
from custody_core.errors import KeyFormatError, UnusableKeyError

__all__ = [
    "LEGACY_KEYID_HASH_ALGORITHMS",
    "REFERENCE_SCHEMES",
    "SCHEMES",
    "CryptoPublicKey",
    "KeyType",
    "PublicKey",
    "compute_keyid",
    "compute_legacy_keyid",
]

KeyType = Literal["ecdsa", "ed25519", "rsa", "ml-dsa"]
CryptoPublicKey: TypeAlias = Any  # rsa, ec, ed25519 or (cryptography >= 48) ML-DSA

ECDSA_P256 = "ecdsa-sha2-nistp256"
ECDSA_P384 = "ecdsa-sha2-nistp384"
ECDSA_P521 = "ecdsa-sha2-nistp521"
ED25519 = "ed25519"
RSA_PSS_SHA256 = "rsassa-pss-sha256"
MLDSA_TYPE = "ml-dsa"


@dataclass(frozen=True)
class _Scheme:
    """How a securesystemslib 1.x scheme verifies (signer/_key.py SSlibKey._verify)."""

    keytype: str
    hash: type[hashes.HashAlgorithm] | None = None
    curve: type[ec.EllipticCurve] | None = None
    rsa_padding: Literal["pss", "pkcs1v15", ""] = ""
    mldsa_class: Any = None
    # securesystemslib registers it in KEY_FOR_TYPE_AND_SCHEME, so in-toto 3.1 loads a
    # layout that lists it. SSlibKey verifies the SHA-224 RSA schemes too, but Key.from_dict
    # refuses them: in-toto-verify refuses every layout that lists such a key.
    in_reference: bool = True


def _scheme_table() -> dict[str, _Scheme]:
    table = {
        ECDSA_P256: _Scheme("ecdsa", hashes.SHA256, ec.SECP256R1),
        ECDSA_P384: _Scheme("ecdsa", hashes.SHA384, ec.SECP384R1),
        ECDSA_P521: _Scheme("ecdsa", hashes.SHA512, ec.SECP521R1),
        ED25519: _Scheme("ed25519"),
    }
    rsa_hashes: dict[str, type[hashes.HashAlgorithm]] = {
        "sha224": hashes.SHA224, "sha256": hashes.SHA256,
        "sha384": hashes.SHA384, "sha512": hashes.SHA512,
    }
    for name, digest in rsa_hashes.items():
        in_reference = name != "sha224"
        table[f"rsassa-pss-{name}"] = _Scheme("rsa", digest, rsa_padding="pss",
                                               in_reference=in_reference)
        table[f"rsa-pkcs1v15-{name}"] = _Scheme("rsa", digest, rsa_padding="pkcs1v15",
                                                 in_reference=in_reference)
    try:  # ML-DSA needs cryptography >= 48, as in securesystemslib
        from cryptography.hazmat.primitives.asymmetric import mldsa
    except ImportError:  # pragma: no cover - depends on the installed cryptography
        return table
    for name, key_class in (("ml-dsa-44/1", mldsa.MLDSA44PublicKey),
                            ("ml-dsa-65/1", mldsa.MLDSA65PublicKey),
                            ("ml-dsa-87/1", mldsa.MLDSA87PublicKey)):
        table[name] = _Scheme(MLDSA_TYPE, hashes.SHA512, mldsa_class=key_class)
    return table


_SCHEME_TABLE: Mapping[str, _Scheme] = MappingProxyType(_scheme_table())
# scheme -> keytype: every scheme securesystemslib 1.x verifies with the keys in-toto uses
SCHEMES: Mapping[str, str] = MappingProxyType(
    {name: scheme.keytype for name, scheme in _SCHEME_TABLE.items()}
)
# The schemes in-toto 3.1 loads in a layout's keys (see _Scheme.in_reference).
REFERENCE_SCHEMES: frozenset[str] = frozenset(
    name for name, scheme in _SCHEME_TABLE.items() if scheme.in_reference
)
LEGACY_KEYID_HASH_ALGORITHMS: tuple[str, ...] = ("sha256", "sha512")
_LEGACY_ECDSA_KEYTYPES = frozenset({ECDSA_P256, ECDSA_P384, ECDSA_P521})
_ED25519_HEX = re.compile(r"[0-9a-f]{64}")
_MLDSA_CONTEXT = b"tuf\x01"  # securesystemslib get_mldsa_payload(data, 1) (TAP 21)


@dataclass(frozen=True)
class PublicKey:
    """A public verification key as a layout lists it.

    `keyid` is taken as given and never recomputed when matching signatures.
    `public` is PEM SubjectPublicKeyInfo for ecdsa, rsa and ml-dsa, and 64 lowercase hex
    characters for ed25519. `keyid_hash_algorithms` is kept only when a legacy
    key dict carried it, so that `to_dict` gives the dict back.

    `material` identifies the key itself: the SHA-256 of its DER SubjectPublicKeyInfo,
    the same for every keyid, scheme and encoding the key is listed under. A threshold
    counts keys by it (one key is one functionary).

    UnusableKeyError (a KeyFormatError): the scheme is not one securesystemslib 1.x
    verifies, or the public key does not parse or does not fit the keytype and scheme.
    """

    keyid: str
    keytype: str
    scheme: str
    public: str
    keyid_hash_algorithms: tuple[str, ...] | None = None
    _crypto_key: CryptoPublicKey = field(init=False, repr=False, compare=False)
    material: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str) or not self.keyid:
            raise KeyFormatError("key: keyid must be a non-empty string")
        if not isinstance(self.keytype, str) or not isinstance(self.scheme, str):
            raise KeyFormatError(f"key {self.keyid}: keytype and scheme must be strings")
        if self.scheme not in SCHEMES:
            raise UnusableKeyError(f"key {self.keyid}: unsupported scheme {self.scheme!r:.80}")
        if SCHEMES[self.scheme] != self.keytype:
            raise UnusableKeyError(
                f"key {self.keyid}: keytype {self.keytype!r:.80} does not fit scheme "
                f"{self.scheme!r}"
            )
        if not isinstance(self.public, str):
            raise KeyFormatError(f"key {self.keyid}: public key value must be a string")
        if self.keyid_hash_algorithms is not None and not all(
            isinstance(name, str) for name in self.keyid_hash_algorithms
        ):
            raise KeyFormatError(f"key {self.keyid}: keyid_hash_algorithms must be strings")
        crypto_key = _load_public(self)
        object.__setattr__(self, "_crypto_key", crypto_key)
        der = crypto_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        object.__setattr__(self, "material", hashlib.sha256(der).hexdigest())

    @property
    def in_reference(self) -> bool:
        """Whether in-toto 3.1 loads a layout that lists this key (see REFERENCE_SCHEMES)."""
        return self.scheme in REFERENCE_SCHEMES

    def verify(self, signature: bytes, data: bytes | memoryview) -> bool:
        """Whether `signature` is valid over `data`. Never raises on a bad signature."""
        key = self._crypto_key
        scheme = _SCHEME_TABLE[self.scheme]
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                assert scheme.hash is not None
                key.verify(signature, data, ec.ECDSA(scheme.hash()))
            elif isinstance(key, rsa.RSAPublicKey):
                assert scheme.hash is not None
                digest = scheme.hash()
                pad: padding.AsymmetricPadding = (
                    padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.AUTO)
                    if scheme.rsa_padding == "pss"
                    else padding.PKCS1v15()
                )
                key.verify(signature, data, pad, digest)  # type: ignore[arg-type]  # any buffer
            else:  # ML-DSA, over securesystemslib's payload
                key.verify(signature, _MLDSA_CONTEXT + hashlib.sha512(data).digest())
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
        if keytype == scheme and scheme in _LEGACY_ECDSA_KEYTYPES:
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
        """From a `cryptography` public key; keyid by the modern formula. The default
        scheme is securesystemslib's: rsassa-pss-sha256, the curve's ECDSA scheme,
        ed25519, ml-dsa-NN/1."""
        mldsa_scheme = next((name for name, s in _SCHEME_TABLE.items()
                             if s.mldsa_class is not None and isinstance(key, s.mldsa_class)),
                            None)
        if isinstance(key, ed25519.Ed25519PublicKey):
            keytype, default_scheme = "ed25519", ED25519
            public = key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ).hex()
        else:
            if isinstance(key, rsa.RSAPublicKey):
                keytype, default_scheme = "rsa", RSA_PSS_SHA256
            elif isinstance(key, ec.EllipticCurvePublicKey):
                keytype, default_scheme = "ecdsa", _ecdsa_scheme_for_curve(key.curve)
            elif mldsa_scheme is not None:
                keytype, default_scheme = MLDSA_TYPE, mldsa_scheme
            else:
                raise KeyFormatError(f"key: unsupported public key type {type(key).__name__}")
            pem_key: Any = key
            public = pem_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode("ascii")
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
    for scheme, spec in _SCHEME_TABLE.items():
        if spec.curve is not None and isinstance(curve, spec.curve):
            return scheme
    raise KeyFormatError(f"key: unsupported elliptic curve {curve.name}")


def _load_public(key: PublicKey) -> CryptoPublicKey:
    """Parse `key.public` and check that it fits the keytype and scheme."""
    spec = _SCHEME_TABLE[key.scheme]
    if key.keytype == "ed25519":
        if not _ED25519_HEX.fullmatch(key.public):
            raise UnusableKeyError(
                f"key {key.keyid}: ed25519 public key must be 64 lowercase hex"
            )
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.public))
    try:
        loaded = serialization.load_pem_public_key(key.public.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise UnusableKeyError(
            f"key {key.keyid}: public key is not a PEM SubjectPublicKeyInfo"
        ) from exc
    if key.keytype == "rsa":
        if not isinstance(loaded, rsa.RSAPublicKey):
            raise UnusableKeyError(f"key {key.keyid}: PEM does not hold an RSA key")
        return loaded
    if spec.mldsa_class is not None:
        if not isinstance(loaded, spec.mldsa_class):
            raise UnusableKeyError(f"key {key.keyid}: PEM does not hold a {key.scheme} key")
        return loaded
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise UnusableKeyError(f"key {key.keyid}: PEM does not hold an EC key")
    assert spec.curve is not None
    if not isinstance(loaded.curve, spec.curve):
        raise UnusableKeyError(
            f"key {key.keyid}: curve {loaded.curve.name} does not fit scheme {key.scheme}"
        )
    return loaded
