"""Find, generate, read and destroy key pairs on a session. Callers hold the module lock."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, cast

import pkcs11
from pkcs11 import Attribute, MechanismFlag, ObjectClass

from custody_core.api_enums import KeyAlgorithm
from custody_core.keys import PublicKey
from custody_server.keystore._profiles import (
    PROFILES,
    PUBLIC_ATTRIBUTES_BY_KEY_TYPE,
    Pkcs11Profile,
    algorithm_of,
    crypto_public_key,
)
from custody_server.keystore.errors import KeyExistsError, KeystoreError

_KEY_ID_BYTES = 16

# Private keys never leave the token and can do nothing but sign.
_PRIVATE_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}
_PUBLIC_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
    Attribute.DERIVE: False,
}


class SigningKeyObject(Protocol):
    """The part of python-pkcs11's private key object the store uses."""

    def sign(self, data: bytes, **kwargs: Any) -> bytes: ...

    def __getitem__(self, key: Attribute) -> Any: ...

    def destroy(self) -> None: ...


@dataclass(frozen=True)
class CachedKey:
    """A key pair found on the token: its private key handle and its public key."""

    label: str
    profile: Pkcs11Profile
    private_key: SigningKeyObject
    public_key: PublicKey

    @property
    def algorithm(self) -> KeyAlgorithm:
        return self.profile.algorithm


def find_objects(session: pkcs11.Session, template: dict[Attribute, Any]) -> list[Any]:
    # Consume the search fully: a half-read search keeps C_FindObjects active on the
    # session until garbage collection, and the next search then fails.
    return list(session.get_objects(template))


def probe_token(session: pkcs11.Session) -> None:
    """Raise a PKCS#11 error if the token itself is gone (C_GetTokenInfo fails then)."""
    session.token.slot.get_token()


def load_key(session: pkcs11.Session, label: str) -> CachedKey | None:
    """The key pair labelled `label`, or None if the token has no private key by that label."""
    private_keys = find_objects(
        session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
    )
    if not private_keys:
        return None
    if len(private_keys) > 1:
        raise KeystoreError(f"{len(private_keys)} private keys carry the label {label!r}")
    private_key = private_keys[0]
    public_keys = find_objects(
        session, {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}
    )
    if len(public_keys) != 1:
        raise KeystoreError(
            f"key {label!r} has {len(public_keys)} public key objects on the token, not 1"
        )
    public_object = public_keys[0]
    key_type = public_object[Attribute.KEY_TYPE]
    wanted = PUBLIC_ATTRIBUTES_BY_KEY_TYPE.get(key_type)
    if wanted is None:
        raise KeystoreError(f"key {label!r} has an unsupported key type ({key_type})")
    attributes = public_object.get_attributes(list(wanted))
    algorithm = algorithm_of(key_type, attributes)
    if algorithm is None:
        raise KeystoreError(f"key {label!r} uses an unsupported curve or key size")
    return CachedKey(
        label=label,
        profile=PROFILES[algorithm],
        private_key=cast(SigningKeyObject, private_key),
        public_key=PublicKey.from_crypto(
            crypto_public_key(algorithm, attributes), scheme=algorithm.scheme
        ),
    )


def private_key_labels(session: pkcs11.Session) -> list[str]:
    private_keys = find_objects(session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY})
    return sorted({str(key[Attribute.LABEL]) for key in private_keys})


def generate_key_pair(session: pkcs11.Session, *, label: str, profile: Pkcs11Profile) -> None:
    """Generate a key pair inside the token; refuse a label that any key object carries."""
    for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        if find_objects(session, {Attribute.CLASS: object_class, Attribute.LABEL: label}):
            raise KeyExistsError(f"a key labelled {label!r} already exists")
    key_id = os.urandom(_KEY_ID_BYTES)
    session.generate_keypair(
        profile.key_type,
        profile.key_length,
        id=key_id,
        label=label,
        store=True,
        mechanism=profile.generate_mechanism,
        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        public_template={**_PUBLIC_TEMPLATE, **profile.public_template},
        private_template=dict(_PRIVATE_TEMPLATE),
    )


def destroy_key_pair(session: pkcs11.Session, label: str) -> int:
    """Destroy every private and public key object labelled `label`; how many there were."""
    destroyed = 0
    for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        for key_object in find_objects(
            session, {Attribute.CLASS: object_class, Attribute.LABEL: label}
        ):
            key_object.destroy()
            destroyed += 1
    return destroyed
