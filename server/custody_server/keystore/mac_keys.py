"""HMAC-SHA256 secret keys generated and kept inside the token (the audit trail's seals).

A key is a CKK_GENERIC_SECRET of 256 bits, sensitive and not extractable: the token
computes and checks MACs with it, nothing reads it. Handles are cached per session: a
reconnect opens a new session, whose handles are looked up again.
"""

from __future__ import annotations

from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from custody_server.keystore._handles import find_objects, probe_token
from custody_server.keystore.errors import KeyExistsError, KeyNotFoundError
from custody_server.keystore.store import Pkcs11KeyStore

_KEY_BITS = 256


class TokenMacKey:
    """One secret key on the token, by label. Safe to share between threads."""

    def __init__(self, store: Pkcs11KeyStore, label: str) -> None:
        self._store = store
        self.label = label
        self._cached: tuple[pkcs11.Session, Any] | None = None

    @classmethod
    def generate(cls, store: Pkcs11KeyStore, label: str) -> TokenMacKey:
        """Make the key inside the token; KeyExistsError if the label is taken."""

        def generate(session: pkcs11.Session) -> None:
            if _find(session, label):
                raise KeyExistsError(f"a secret key labelled {label!r} exists")
            session.generate_key(KeyType.GENERIC_SECRET, _KEY_BITS, label=label, store=True,
                                 template={Attribute.SENSITIVE: True,
                                           Attribute.EXTRACTABLE: False,
                                           Attribute.PRIVATE: True,
                                           Attribute.SIGN: True, Attribute.VERIFY: True,
                                           Attribute.ENCRYPT: False, Attribute.DECRYPT: False,
                                           Attribute.WRAP: False, Attribute.UNWRAP: False,
                                           Attribute.DERIVE: False})

        store._run(generate)
        return cls(store, label)

    def exists(self) -> bool:
        return bool(self._store._run(lambda session: _find(session, self.label)))

    def mac(self, data: bytes) -> bytes:
        return bytes(self._store._run(
            lambda session: self._key(session).sign(data, mechanism=Mechanism.SHA256_HMAC)))

    def verify(self, data: bytes, mac: bytes) -> bool:
        def verify(session: pkcs11.Session) -> bool:
            try:
                return bool(self._key(session).verify(data, mac,
                                                      mechanism=Mechanism.SHA256_HMAC))
            except (pkcs11.SignatureInvalid, pkcs11.SignatureLenRange):
                return False

        return self._store._run(verify)

    def destroy(self) -> None:
        def destroy(session: pkcs11.Session) -> None:
            for key in _find(session, self.label):
                key.destroy()
            self._cached = None

        self._store._run(destroy)

    def _key(self, session: pkcs11.Session) -> Any:
        """The key's handle in `session` (runs under the module lock)."""
        if self._cached is not None and self._cached[0] is session:
            return self._cached[1]
        found = _find(session, self.label)
        if not found:
            probe_token(session)  # a vanished token has no keys either: say unavailable
            raise KeyNotFoundError(f"no secret key labelled {self.label!r}")
        self._cached = (session, found[0])
        return found[0]


def _find(session: pkcs11.Session, label: str) -> list[Any]:
    return find_objects(session, {Attribute.CLASS: ObjectClass.SECRET_KEY,
                                  Attribute.LABEL: label})
