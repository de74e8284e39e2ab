"""Keys generated in a real SoftHSM token: signatures, attributes, errors, listing, objects."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import cast

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from securesystemslib.signer import Signature, SSlibKey

from custody_core.keys import PublicKey
from custody_server.keystore import (
    KeyAlgorithm,
    KeyExistsError,
    KeyNotFoundError,
    KeystoreError,
    KeystoreUnavailableError,
    Pkcs11KeyStore,
)
from custody_server.softhsm import SoftHsmToken

PAYLOAD = b'{"_type":"link","name":"build"}'


def verify_with_cryptography(
    algorithm: KeyAlgorithm, public_key: object, signature: bytes, data: bytes
) -> None:
    """Raise InvalidSignature unless `signature` is what in-toto's scheme means."""
    if algorithm is KeyAlgorithm.ED25519:
        assert isinstance(public_key, ed25519.Ed25519PublicKey)
        public_key.verify(signature, data)
    elif algorithm is KeyAlgorithm.RSA_3072:
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert public_key.key_size == 3072
        public_key.verify(
            signature,
            data,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        digest = hashes.SHA256() if algorithm is KeyAlgorithm.ECDSA_P256 else hashes.SHA384()
        public_key.verify(signature, data, ec.ECDSA(digest))


def crypto_key_of(public_key: PublicKey) -> object:
    """Decode the in-toto `keyval.public` independently: PEM SPKI, or hex for ed25519."""
    if public_key.keytype == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key.public))
    return serialization.load_pem_public_key(public_key.public.encode())


def reference_key_of(public_key: PublicKey) -> SSlibKey:
    """The same key as securesystemslib (in-toto's own verifier) reads it."""
    return SSlibKey(
        keyid=public_key.keyid,
        keytype=public_key.keytype,
        scheme=public_key.scheme,
        keyval={"public": public_key.public},
    )


@pytest.fixture(scope="module")
def keys_by_algorithm(keystore: Pkcs11KeyStore) -> Iterator[dict[KeyAlgorithm, str]]:
    labels = {algorithm: f"test-{algorithm.value}-{uuid.uuid4().hex}" for algorithm in KeyAlgorithm}
    for algorithm, label in labels.items():
        keystore.generate_key(label=label, algorithm=algorithm)
    yield labels
    for label in labels.values():
        keystore.destroy_key(label)


@pytest.fixture(params=list(KeyAlgorithm), ids=lambda a: a.value)
def algorithm(request: pytest.FixtureRequest) -> KeyAlgorithm:
    """Each algorithm in turn: a test that takes it (or `label`) runs once per algorithm."""
    return cast(KeyAlgorithm, request.param)


@pytest.fixture
def label(keys_by_algorithm: dict[KeyAlgorithm, str], algorithm: KeyAlgorithm) -> str:
    """The label of `algorithm`'s key in the token."""
    return keys_by_algorithm[algorithm]



def test_signature_verifies_with_core_key_cryptography_and_reference(
    keystore: Pkcs11KeyStore, label: str, algorithm: KeyAlgorithm
) -> None:
    public_key = keystore.public_key(label)
    assert (public_key.keytype, public_key.scheme) == (algorithm.keytype, algorithm.scheme)

    signature = keystore.sign(label, PAYLOAD)

    assert public_key.verify(signature, PAYLOAD)
    assert not public_key.verify(signature, PAYLOAD + b" ")
    reference_key_of(public_key).verify_signature(
        Signature(public_key.keyid, signature.hex()), PAYLOAD
    )
    crypto_key = crypto_key_of(public_key)
    verify_with_cryptography(algorithm, crypto_key, signature, PAYLOAD)
    with pytest.raises(InvalidSignature):
        verify_with_cryptography(algorithm, crypto_key, signature, PAYLOAD[1:])


def test_signature_encoding_is_what_in_toto_expects(
    keystore: Pkcs11KeyStore, label: str, algorithm: KeyAlgorithm
) -> None:
    signature = keystore.sign(label, PAYLOAD)
    if algorithm is KeyAlgorithm.ED25519:
        assert len(signature) == 64
    elif algorithm is KeyAlgorithm.RSA_3072:
        assert len(signature) == 384
    else:
        assert signature[0] == 0x30  # DER SEQUENCE(r, s), not raw r||s


def test_signer_protocol(keystore: Pkcs11KeyStore, label: str) -> None:
    signer = keystore.signer(label)
    assert signer.public_key == keystore.public_key(label)
    assert signer.public_key.verify(signer.sign(b"data"), b"data")


def test_private_key_is_sensitive_and_never_extractable(keystore: Pkcs11KeyStore, label: str
                                                        ) -> None:
    attributes = keystore.private_key_attributes(label)
    assert attributes["sensitive"] is True
    assert attributes["always_sensitive"] is True
    assert attributes["extractable"] is False
    assert attributes["never_extractable"] is True
    assert attributes["token"] is True
    assert attributes["private"] is True
    assert attributes["sign"] is True
    assert attributes["decrypt"] is False


def test_list_keys_reports_label_algorithm_and_public_key(
    keystore: Pkcs11KeyStore, keys_by_algorithm: dict[KeyAlgorithm, str]
) -> None:
    listed = {stored.label: stored for stored in keystore.list_keys()}
    for algorithm, label in keys_by_algorithm.items():
        assert listed[label].algorithm is algorithm
        assert listed[label].public_key == keystore.public_key(label)


def test_public_key_is_stable_across_a_fresh_lookup(
    keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, unique_label: str
) -> None:
    created = keystore.generate_key(label=unique_label, algorithm=KeyAlgorithm.ECDSA_P256)
    # A second store shares the session and cache; a cache miss must read the same key back.
    keystore._live().key_cache.clear()
    assert keystore.public_key(unique_label) == created
    assert keystore.algorithm(unique_label) is KeyAlgorithm.ECDSA_P256
    keystore.destroy_key(unique_label)


def test_generate_refuses_an_existing_label(keystore: Pkcs11KeyStore, unique_label: str) -> None:
    first = keystore.generate_key(label=unique_label, algorithm=KeyAlgorithm.ED25519)
    with pytest.raises(KeyExistsError, match=unique_label):
        keystore.generate_key(label=unique_label, algorithm=KeyAlgorithm.ECDSA_P256)
    assert keystore.public_key(unique_label) == first  # the first key is untouched
    keystore.destroy_key(unique_label)


def test_unknown_label_is_not_found_everywhere(keystore: Pkcs11KeyStore, unique_label: str) -> None:
    for call in (
        keystore.public_key,
        keystore.signer,
        keystore.destroy_key,
        keystore.private_key_attributes,
        lambda label: keystore.sign(label, b"x"),
    ):
        with pytest.raises(KeyNotFoundError, match=unique_label):
            call(unique_label)


def test_destroyed_key_is_gone_for_signing_and_listing(
    keystore: Pkcs11KeyStore, unique_label: str
) -> None:
    keystore.generate_key(label=unique_label, algorithm=KeyAlgorithm.ECDSA_P256)
    keystore.sign(unique_label, b"cached now")
    keystore.destroy_key(unique_label)
    with pytest.raises(KeyNotFoundError):
        keystore.sign(unique_label, b"x")
    assert unique_label not in {stored.label for stored in keystore.list_keys()}
    # The label is free again, for a new key.
    recreated = keystore.generate_key(label=unique_label, algorithm=KeyAlgorithm.ED25519)
    assert recreated.verify(keystore.sign(unique_label, b"y"), b"y")
    keystore.destroy_key(unique_label)


@pytest.mark.parametrize("label", ["", "x" * 129])
def test_invalid_labels_are_refused(keystore: Pkcs11KeyStore, label: str) -> None:
    with pytest.raises(KeystoreError):
        keystore.generate_key(label=label, algorithm=KeyAlgorithm.ECDSA_P256)


def test_data_objects_round_trip_and_overwrite(
    keystore: Pkcs11KeyStore, unique_label: str
) -> None:
    assert keystore.read_object(unique_label) is None
    keystore.write_object(unique_label, b'{"active": 1}')
    assert keystore.read_object(unique_label) == b'{"active": 1}'
    keystore.write_object(unique_label, b'{"active": 2}')
    assert keystore.read_object(unique_label) == b'{"active": 2}'
    keystore.write_object(unique_label, b"")
    assert keystore.read_object(unique_label) == b""
    large = bytes(range(256)) * 64
    keystore.write_object(unique_label, large)
    assert keystore.read_object(unique_label) == large
    keystore.delete_object(unique_label)
    assert keystore.read_object(unique_label) is None
    with pytest.raises(KeyNotFoundError):
        keystore.delete_object(unique_label)


def test_data_objects_and_keys_do_not_collide(keystore: Pkcs11KeyStore, unique_label: str) -> None:
    keystore.write_object(unique_label, b"state")
    keystore.generate_key(label=unique_label, algorithm=KeyAlgorithm.ECDSA_P256)
    assert keystore.read_object(unique_label) == b"state"
    keystore.destroy_key(unique_label)
    assert keystore.read_object(unique_label) == b"state"
    keystore.delete_object(unique_label)


def test_stores_of_one_process_share_the_login(
    keystore: Pkcs11KeyStore,
    softhsm_token: SoftHsmToken,
    keys_by_algorithm: dict[KeyAlgorithm, str],
) -> None:
    label = keys_by_algorithm[KeyAlgorithm.ECDSA_P256]
    second = Pkcs11KeyStore.open(
        module_path=softhsm_token.module_path,
        token_label=softhsm_token.token_label,
        pin=softhsm_token.read_pin(),
    )
    assert second.public_key(label) == keystore.public_key(label)
    second.close()
    # Closing the second store must not log the first one out.
    assert keystore.public_key(label).verify(keystore.sign(label, b"still"), b"still")
    with pytest.raises(KeystoreUnavailableError, match="closed"):
        second.sign(label, b"x")


def test_wrong_pin_or_token_is_refused_without_revealing_the_pin(
    keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken
) -> None:
    wrong_pin = "not-the-pin-1234"
    with pytest.raises(KeystoreUnavailableError) as raised:
        Pkcs11KeyStore.open(
            module_path=softhsm_token.module_path,
            token_label=softhsm_token.token_label,
            pin=wrong_pin,
        )
    assert wrong_pin not in str(raised.value)
    assert softhsm_token.read_pin() not in str(raised.value)
    with pytest.raises(KeystoreUnavailableError, match="no token labelled"):
        Pkcs11KeyStore.open(
            module_path=softhsm_token.module_path,
            token_label="no-such-token",
            pin=wrong_pin,
        )


def test_a_signer_never_signs_with_a_key_that_replaced_its_own(
    keystore: Pkcs11KeyStore, unique_label: str
) -> None:
    keystore.generate_key(label=unique_label, algorithm=KeyAlgorithm.ECDSA_P256)
    signer = keystore.signer(unique_label)
    keystore.destroy_key(unique_label)
    replacement = keystore.generate_key(label=unique_label, algorithm=KeyAlgorithm.ECDSA_P256)
    with pytest.raises(KeyNotFoundError, match="replaced"):
        signer.sign(b"data")
    assert replacement.verify(keystore.signer(unique_label).sign(b"data"), b"data")
    keystore.destroy_key(unique_label)
