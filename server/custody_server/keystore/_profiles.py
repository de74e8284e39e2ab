"""How each KeyAlgorithm maps onto PKCS#11: generation, signing, public key decoding.

Facts of SoftHSM 2.6.1 that shape this (see softhsm/README.md, "Hazards"):
- no CKM_ECDSA_SHA256: hash in Python, sign the digest with CKM_ECDSA, and turn the raw
  r||s into DER with `encode_dss_signature` (faster than python-pkcs11's helper: see
  docs/PERFORMANCE.md#ecdsa-signatures-to-der);
- Ed25519 is CKK_EC_EDWARDS on the curve OID 1.3.101.112, signed with pure CKM_EDDSA;
- RSA-3072 signs PSS(sha256, MGF1-sha256, salt 32) over a digest hashed in Python
  (CKM_RSA_PKCS_PSS), so large payloads are hashed outside the token lock;
- CKA_EC_POINT comes back as a DER OCTET STRING around the point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, KeyType, Mechanism

from custody_core.api_enums import KeyAlgorithm

CryptoPublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7
_P384_PARAMS = bytes.fromhex("06052b81040022")  # OID 1.3.132.0.34
_ED25519_OID_PARAMS = bytes.fromhex("06032b6570")  # OID 1.3.101.112
# Some tokens name the Edwards curve by a PrintableString instead of the OID.
_ED25519_NAME_PARAMS = b"\x13\x0cedwards25519"
_RSA_BITS = 3072
_RSA_PUBLIC_EXPONENT = b"\x01\x00\x01"
_PSS_SALT_LENGTH = 32  # = sha256 digest length, as in-toto's rsassa-pss-sha256 expects


@dataclass(frozen=True)
class Pkcs11Profile:
    """Everything the store needs to generate with, sign with and read one algorithm."""

    algorithm: KeyAlgorithm
    key_type: KeyType
    generate_mechanism: Mechanism
    public_template: Mapping[Attribute, Any]
    key_length: int | None
    sign_mechanism: Mechanism
    sign_parameter: tuple[Mechanism, MGF, int] | None
    # Applied to the payload outside the token lock; the token signs what it returns.
    prepare_message: Callable[[bytes], bytes]
    # Turns the token's raw signature into the bytes in-toto expects.
    encode_signature: Callable[[bytes], bytes]

    def sign_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"mechanism": self.sign_mechanism}
        if self.sign_parameter is not None:
            arguments["mechanism_param"] = self.sign_parameter
        return arguments


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def _unchanged(data: bytes) -> bytes:
    return data


def _raw_ecdsa_to_der(raw: bytes) -> bytes:
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


PROFILES: dict[KeyAlgorithm, Pkcs11Profile] = {
    KeyAlgorithm.ECDSA_P256: Pkcs11Profile(
        algorithm=KeyAlgorithm.ECDSA_P256,
        key_type=KeyType.EC,
        generate_mechanism=Mechanism.EC_KEY_PAIR_GEN,
        public_template={Attribute.EC_PARAMS: _P256_PARAMS},
        key_length=None,
        sign_mechanism=Mechanism.ECDSA,
        sign_parameter=None,
        prepare_message=_sha256,
        encode_signature=_raw_ecdsa_to_der,
    ),
    KeyAlgorithm.ECDSA_P384: Pkcs11Profile(
        algorithm=KeyAlgorithm.ECDSA_P384,
        key_type=KeyType.EC,
        generate_mechanism=Mechanism.EC_KEY_PAIR_GEN,
        public_template={Attribute.EC_PARAMS: _P384_PARAMS},
        key_length=None,
        sign_mechanism=Mechanism.ECDSA,
        sign_parameter=None,
        prepare_message=_sha384,
        encode_signature=_raw_ecdsa_to_der,
    ),
    KeyAlgorithm.ED25519: Pkcs11Profile(
        algorithm=KeyAlgorithm.ED25519,
        key_type=KeyType.EC_EDWARDS,
        generate_mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
        public_template={Attribute.EC_PARAMS: _ED25519_OID_PARAMS},
        key_length=None,
        sign_mechanism=Mechanism.EDDSA,
        sign_parameter=None,
        prepare_message=_unchanged,  # pure Ed25519 signs the message itself
        encode_signature=_unchanged,
    ),
    KeyAlgorithm.RSA_3072: Pkcs11Profile(
        algorithm=KeyAlgorithm.RSA_3072,
        key_type=KeyType.RSA,
        generate_mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN,
        public_template={
            Attribute.PUBLIC_EXPONENT: _RSA_PUBLIC_EXPONENT,
            Attribute.MODULUS_BITS: _RSA_BITS,
        },
        key_length=_RSA_BITS,
        sign_mechanism=Mechanism.RSA_PKCS_PSS,
        sign_parameter=(Mechanism.SHA256, MGF.SHA256, _PSS_SALT_LENGTH),
        prepare_message=_sha256,
        encode_signature=_unchanged,
    ),
}

# What a public key object must carry to be read back (besides CKA_KEY_TYPE).
PUBLIC_ATTRIBUTES_BY_KEY_TYPE: dict[KeyType, tuple[Attribute, ...]] = {
    KeyType.EC: (Attribute.EC_PARAMS, Attribute.EC_POINT),
    KeyType.EC_EDWARDS: (Attribute.EC_PARAMS, Attribute.EC_POINT),
    KeyType.RSA: (Attribute.MODULUS, Attribute.PUBLIC_EXPONENT),
}


def algorithm_of(key_type: KeyType, attributes: Mapping[Attribute, Any]) -> KeyAlgorithm | None:
    """The algorithm of a public key object, or None if it is not one this store supports."""
    if key_type == KeyType.EC:
        return {
            _P256_PARAMS: KeyAlgorithm.ECDSA_P256,
            _P384_PARAMS: KeyAlgorithm.ECDSA_P384,
        }.get(bytes(attributes[Attribute.EC_PARAMS]))
    if key_type == KeyType.EC_EDWARDS:
        params = bytes(attributes[Attribute.EC_PARAMS])
        if params in (_ED25519_OID_PARAMS, _ED25519_NAME_PARAMS):
            return KeyAlgorithm.ED25519
        return None
    if key_type == KeyType.RSA:
        modulus = int.from_bytes(attributes[Attribute.MODULUS], "big")
        return KeyAlgorithm.RSA_3072 if modulus.bit_length() == _RSA_BITS else None
    return None


def crypto_public_key(
    algorithm: KeyAlgorithm, attributes: Mapping[Attribute, Any]
) -> CryptoPublicKey:
    """Build the `cryptography` public key from a public key object's attributes."""
    if algorithm is KeyAlgorithm.RSA_3072:
        return rsa.RSAPublicNumbers(
            e=int.from_bytes(attributes[Attribute.PUBLIC_EXPONENT], "big"),
            n=int.from_bytes(attributes[Attribute.MODULUS], "big"),
        ).public_key()
    if algorithm is KeyAlgorithm.ED25519:
        point = _unwrap_point(bytes(attributes[Attribute.EC_POINT]), raw_length=32)
        return ed25519.Ed25519PublicKey.from_public_bytes(point)
    curve: ec.EllipticCurve = (
        ec.SECP256R1() if algorithm is KeyAlgorithm.ECDSA_P256 else ec.SECP384R1()
    )
    point_length = 1 + 2 * ((curve.key_size + 7) // 8)  # uncompressed: 04 || x || y
    point = _unwrap_point(bytes(attributes[Attribute.EC_POINT]), raw_length=point_length)
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)


def _unwrap_point(value: bytes, *, raw_length: int) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point on SoftHSM, bare on some tokens."""
    if len(value) == raw_length:
        return value
    if len(value) >= 2 and value[0] == 0x04:
        header = 2 if value[1] < 0x80 else 2 + (value[1] & 0x7F)  # DER short or long length
        body = value[header:]
        if len(body) == raw_length:
            return body
    raise ValueError("CKA_EC_POINT has an unexpected encoding")
