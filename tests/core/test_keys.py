"""Public keys and keyids against securesystemslib / in-toto and the fixtures."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from formats_support import DEMO, KEY_KINDS, PEM_PASSWORD, PEMS, core_signer, demo_layout
from hypothesis import given, settings
from hypothesis import strategies as st
from in_toto.models._signer import load_public_key_from_file
from securesystemslib.signer._key import SSlibKey

from custody_core.errors import KeyFormatError
from custody_core.keys import SCHEMES, PublicKey, compute_keyid, compute_legacy_keyid
from custody_core.software_signer import SoftwareSigner

FIXTURE_KINDS = ("rsa", "ecdsa", "ed25519")


def test_layout_keys_keep_their_legacy_keyids() -> None:
    for keyid, key_dict in demo_layout()["signed"]["keys"].items():
        key = PublicKey.from_dict(key_dict)
        assert key.keyid == keyid
        assert key.keyid_hash_algorithms == ("sha256", "sha512")
        # The stated id is the legacy formula, not the modern one.
        fields = {"keytype": key.keytype, "scheme": key.scheme, "public": key.public}
        assert compute_legacy_keyid(**fields) == keyid
        assert compute_keyid(**fields) != keyid


def test_legacy_pub_files_give_the_layout_keyids() -> None:
    # bob.pub and carl.pub are PEMs; the legacy id hashed the PEM without its final newline.
    layout_keyids = set(demo_layout()["signed"]["keys"])
    for name in ("bob", "carl"):
        pem = (DEMO / f"{name}.pub").read_text().strip()
        key = PublicKey.from_dict(
            {
                "keytype": "rsa",
                "scheme": "rsassa-pss-sha256",
                "keyval": {"public": pem},
                "keyid_hash_algorithms": ["sha256", "sha512"],
            }
        )
        assert key.keyid in layout_keyids


def test_danny_legacy_json_key_gets_its_legacy_keyid() -> None:
    public = json.loads((DEMO / "danny.pub").read_text())
    private = json.loads((DEMO / "danny").read_text())
    key = PublicKey.from_dict(public)
    assert key.keyid == private["keyid"]
    assert key.keytype == "ed25519"
    # A private part in the dict is ignored and never written out.
    with_private = PublicKey.from_dict(private)
    assert with_private == key
    assert "private" not in json.dumps(with_private.to_dict())


@pytest.mark.parametrize("kind", FIXTURE_KINDS)
def test_from_pem_matches_in_toto_key_dict(kind: str) -> None:
    path = PEMS / f"{kind}_public.pem"
    reference = load_public_key_from_file(str(path))
    key = PublicKey.from_pem(path.read_bytes())
    assert key.to_dict() == reference  # exactly what in-toto 3.1 writes into layouts
    assert PublicKey.from_dict(reference) == key
    assert PublicKey.from_pem(path.read_text()) == key


@pytest.mark.parametrize("scheme", ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ed25519"])
def test_generated_keys_keyid_matches_securesystemslib(scheme: str) -> None:
    signer = SoftwareSigner.generate(scheme)
    key = signer.public_key
    reference = SSlibKey.from_crypto(key.crypto_key)
    assert (reference.keyid, reference.keytype, reference.scheme) == (
        key.keyid,
        key.keytype,
        key.scheme,
    )
    assert reference.keyval["public"] == key.public


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_sign_and_verify(kind: str) -> None:
    signer = core_signer(kind)
    signature = signer.sign(b"payload")
    assert signer.public_key.verify(signature, b"payload")
    assert not signer.public_key.verify(signature, b"payload!")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not signer.public_key.verify(flipped, b"payload")


@pytest.mark.parametrize("kind", FIXTURE_KINDS)
def test_encrypted_private_pems_load_with_password(kind: str) -> None:
    pem = (PEMS / f"{kind}_private_encrypted.pem").read_bytes()
    signer = SoftwareSigner.from_private_pem(pem, password=PEM_PASSWORD)
    assert signer.public_key == PublicKey.from_pem((PEMS / f"{kind}_public.pem").read_bytes())
    with pytest.raises(KeyFormatError):
        SoftwareSigner.from_private_pem(pem, password=b"wrong")


def test_signer_keyid_override_and_repr_hides_key() -> None:
    pem = (PEMS / "ed25519_private_unencrypted.pem").read_bytes()
    signer = SoftwareSigner.from_private_pem(pem, keyid="abcd" * 16)
    assert signer.public_key.keyid == "abcd" * 16
    assert "PRIVATE" not in repr(signer) and "abcd" in repr(signer)


def test_legacy_ecdsa_keytype_is_read_as_ecdsa() -> None:
    public = (PEMS / "ecdsa_public.pem").read_text()
    key = PublicKey.from_dict(
        {
            "keyid": "1234",
            "keytype": "ecdsa-sha2-nistp256",
            "scheme": "ecdsa-sha2-nistp256",
            "keyval": {"public": public, "private": ""},
        }
    )
    assert (key.keyid, key.keytype, key.scheme) == ("1234", "ecdsa", "ecdsa-sha2-nistp256")


def test_keyid_argument_wins_and_is_never_recomputed() -> None:
    reference = load_public_key_from_file(str(PEMS / "ed25519_public.pem"))
    assert PublicKey.from_dict(reference, keyid="given").keyid == "given"
    reference["keyid"] = "stated"
    assert PublicKey.from_dict(reference).keyid == "stated"
    del reference["keyid"]
    assert PublicKey.from_dict(reference).keyid == PublicKey.from_pem(
        (PEMS / "ed25519_public.pem").read_bytes()
    ).keyid


def test_uppercase_ed25519_hex_is_normalised() -> None:
    key = SoftwareSigner.generate("ed25519").public_key
    data = key.to_dict()
    data["keyval"]["public"] = key.public.upper()
    assert PublicKey.from_dict(data).public == key.public


def _pem(kind: str) -> str:
    return (PEMS / f"{kind}_public.pem").read_text(encoding="ascii")


def _p384_pem() -> str:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _key_dict(keytype: str, scheme: str, public: Any) -> dict[str, Any]:
    return {"keyid": "k", "keytype": keytype, "scheme": scheme, "keyval": {"public": public}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not a dict", "JSON object"),
        ({"keytype": "rsa", "scheme": "rsassa-pss-sha256"}, "keyval.public"),
        (_key_dict("rsa", "rsassa-pss-sha256", 42), "keyval.public"),
        (_key_dict("rsa", "rsa-pkcs1v15-sha1", _pem("rsa")), "unsupported scheme"),
        (_key_dict("dsa", "rsassa-pss-sha256", _pem("rsa")), "does not fit scheme"),
        (_key_dict("ecdsa", "ed25519", "00" * 32), "does not fit scheme"),
        (_key_dict("rsa", "rsassa-pss-sha256", "garbage"), "not a PEM"),
        (_key_dict("rsa", "rsassa-pss-sha256", _pem("ecdsa")), "RSA key"),
        (_key_dict("ecdsa", "ecdsa-sha2-nistp256", _pem("rsa")), "EC key"),
        (_key_dict("ecdsa", "ecdsa-sha2-nistp256", _p384_pem()), "does not fit scheme"),
        (_key_dict("ed25519", "ed25519", "ab" * 31), "64 lowercase hex"),
        (_key_dict("ed25519", "ed25519", "zz" * 32), "64 lowercase hex"),
        ({**_key_dict("rsa", "rsassa-pss-sha256", _pem("rsa")), "keyid": 7}, "keyid"),
        ({**_key_dict("rsa", "rsassa-pss-sha256", _pem("rsa")), "keyid": ""}, "keyid"),
        (
            {**_key_dict("rsa", "rsassa-pss-sha256", _pem("rsa")), "keyid_hash_algorithms": "x"},
            "keyid_hash_algorithms",
        ),
    ],
)
def test_malformed_key_dicts_raise_key_format_error(data: Any, message: str) -> None:
    with pytest.raises(KeyFormatError, match=message):
        PublicKey.from_dict(data)


def test_unsupported_crypto_keys_and_pems() -> None:
    with pytest.raises(KeyFormatError, match="unsupported elliptic curve"):
        PublicKey.from_crypto(ec.generate_private_key(ec.SECP256K1()).public_key())
    with pytest.raises(KeyFormatError, match="unsupported public key type"):
        PublicKey.from_crypto(x25519.X25519PrivateKey.generate().public_key())
    with pytest.raises(KeyFormatError):
        PublicKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(KeyFormatError):
        PublicKey.from_crypto(
            ed25519.Ed25519PrivateKey.generate().public_key(), scheme="ecdsa-sha2-nistp256"
        )
    with pytest.raises(KeyFormatError):
        SoftwareSigner.generate("rsassa-pss-sha512")


def test_keys_are_frozen_values() -> None:
    key = PublicKey.from_pem((PEMS / "ecdsa_public.pem").read_bytes())
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.keyid = "other"  # type: ignore[misc]
    assert key == PublicKey.from_dict(key.to_dict())
    assert hash(key) == hash(PublicKey.from_dict(key.to_dict()))


_VERIFY_KEYS = {kind: core_signer(kind).public_key for kind in FIXTURE_KINDS}


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(FIXTURE_KINDS), signature=st.binary(max_size=600), data=st.binary())
def test_verify_never_raises_on_garbage(kind: str, signature: bytes, data: bytes) -> None:
    assert _VERIFY_KEYS[kind].verify(signature, data) is False


def _sslib_signer(scheme: str) -> Any:
    from securesystemslib.signer import CryptoSigner

    if scheme.startswith("rsa"):
        return CryptoSigner.generate_rsa(scheme=scheme, size=2048)
    if scheme.startswith("ecdsa"):
        return CryptoSigner.generate_ecdsa(scheme=scheme)
    if scheme.startswith("ml-dsa"):
        return CryptoSigner.generate_mldsa(scheme=scheme)
    return CryptoSigner.generate_ed25519()


SSLIB_SCHEMES = [
    "ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "rsassa-pss-sha224", "rsassa-pss-sha256", "rsassa-pss-sha384", "rsassa-pss-sha512",
    "rsa-pkcs1v15-sha224", "rsa-pkcs1v15-sha256", "rsa-pkcs1v15-sha384", "rsa-pkcs1v15-sha512",
    "ml-dsa-44/1", "ml-dsa-65/1", "ml-dsa-87/1",
]  # fmt: skip


@pytest.mark.parametrize("scheme", SSLIB_SCHEMES)
def test_every_scheme_securesystemslib_signs_verifies(scheme: str) -> None:
    """securesystemslib 1.x is the oracle: its signature verifies, another's does not,
    and the key dict round-trips (the keyid is securesystemslib's)."""
    signer = _sslib_signer(scheme)
    key = PublicKey.from_dict(signer.public_key.to_dict())
    assert (key.keyid, key.scheme) == (signer.public_key.keyid, scheme)
    signature = bytes.fromhex(signer.sign(b"payload").signature)
    assert key.verify(signature, b"payload")
    assert not key.verify(signature, b"payload!")
    assert scheme in SCHEMES


@pytest.mark.parametrize("scheme", ["ecdsa-sha2-nistp256", "ecdsa-sha2-nistp521"])
def test_legacy_ecdsa_keytype_spelling(scheme: str) -> None:
    signer = _sslib_signer(scheme)
    data = {**signer.public_key.to_dict(), "keytype": scheme}
    key = PublicKey.from_dict(data, keyid="ab" * 32)
    assert key.keytype == "ecdsa"
    assert key.verify(bytes.fromhex(signer.sign(b"x").signature), b"x")


def test_one_key_has_one_material_whatever_its_keyid_or_scheme() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    modern = PublicKey.from_crypto(private.public_key())
    legacy = PublicKey.from_dict({**modern.to_dict(), "keyid": "cd" * 32})
    other = PublicKey.from_crypto(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert modern.material == legacy.material != other.material
    assert len(modern.material) == 64
