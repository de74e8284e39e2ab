"""The PKCS#11 key store: keys generated and kept inside a token; only public keys come out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pkcs11
from pkcs11 import Attribute

from custody_core.api_enums import KeyAlgorithm
from custody_core.keys import PublicKey
from custody_core.signer import Signer
from custody_server.keystore import _data_objects
from custody_server.keystore._connection import (
    AvailabilityListener,
    ReconnectBackoff,
    TokenConnection,
    acquire_connection,
    release_connection,
)
from custody_server.keystore._handles import (
    CachedKey,
    destroy_key_pair,
    generate_key_pair,
    load_key,
    private_key_labels,
    probe_token,
)
from custody_server.keystore._profiles import PROFILES
from custody_server.keystore.errors import (
    KeyNotFoundError,
    KeystoreError,
    KeystoreUnavailableError,
)

T = TypeVar("T")
_MAX_LABEL_LENGTH = 128


@dataclass(frozen=True)
class StoredKey:
    """A key pair on the token, as `list_keys` reports it."""

    label: str
    algorithm: KeyAlgorithm
    public_key: PublicKey

    def __post_init__(self) -> None:
        _check_label(self.label)


@dataclass(frozen=True)
class Pkcs11Signer:
    """A `custody_core.signer.Signer` for one key of a `Pkcs11KeyStore`."""

    store: Pkcs11KeyStore
    label: str
    public_key: PublicKey

    def sign(self, data: bytes) -> bytes:
        # Pinned to the public key handed out: never sign with a key that replaced it.
        return self.store._sign(self.label, data, expected_public_key=self.public_key)


class Pkcs11KeyStore:
    """Keys on a PKCS#11 token, used by label. Safe to share between threads.

    Every call into the module is serialized (see `_connection`); all stores of a process
    on one token share one logged-in session. A session, token or device failure raises
    KeystoreUnavailableError; a later call reconnects (after a backoff).
    """

    def __init__(self, connection: TokenConnection) -> None:
        self._connection: TokenConnection | None = connection

    @classmethod
    def open(
        cls,
        *,
        module_path: str,
        token_label: str,
        pin: str,
        backoff: ReconnectBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Pkcs11KeyStore:
        """Log in to the token labelled `token_label` (the first store of a process does).

        `backoff` and `clock` take effect for the first store opened on a token in a process.
        """
        connection = acquire_connection(
            module_path=module_path,
            token_label=token_label,
            pin=pin,
            backoff=backoff if backoff is not None else ReconnectBackoff(),
            clock=clock,
        )
        return cls(connection)

    @property
    def token_label(self) -> str:
        return self._live().token_label

    @property
    def available(self) -> bool:
        """False from a token, session or device failure until a session is open again."""
        return self._live().available

    def add_availability_listener(self, listener: AvailabilityListener) -> Callable[[], None]:
        """`listener(available)` whenever the token becomes unavailable or comes back (for
        every store on the token in this process); returns what removes it. It runs with
        the module lock held: it must be quick, must not raise and must not use the token."""
        return self._live().add_listener(listener)

    def probe(self) -> None:
        """Ask the token whether it is there (C_GetTokenInfo); when it is not, this is the
        attempt to reopen the session (no sooner than the backoff allows).
        KeystoreUnavailableError if it is unavailable."""
        self._run(probe_token)

    def close(self) -> None:
        """Release this store; the last store of the process on the token logs out."""
        connection, self._connection = self._connection, None
        if connection is not None:
            release_connection(connection)

    def __enter__(self) -> Pkcs11KeyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Keys

    def generate_key(self, *, label: str, algorithm: KeyAlgorithm) -> PublicKey:
        """Generate a non-extractable key pair inside the token; KeyExistsError if taken."""
        _check_label(label)
        profile = PROFILES[algorithm]

        def generate(session: pkcs11.Session) -> PublicKey:
            generate_key_pair(session, label=label, profile=profile)
            self._live().key_cache.pop(label, None)  # a peer may have removed a cached key
            return self._cached_key(session, label).public_key

        return self._run(generate)

    def public_key(self, label: str) -> PublicKey:
        return self._key(label).public_key

    def algorithm(self, label: str) -> KeyAlgorithm:
        return self._key(label).algorithm

    def signer(self, label: str) -> Signer:
        """A Signer for `label` (KeyNotFoundError now, not at the first signature)."""
        return Pkcs11Signer(store=self, label=label, public_key=self.public_key(label))

    def sign(self, label: str, data: bytes) -> bytes:
        """Sign `data` as in-toto encodes it: DER for ECDSA, raw for Ed25519, PSS for RSA."""
        return self._sign(label, data, expected_public_key=None)

    def _sign(self, label: str, data: bytes, *, expected_public_key: PublicKey | None) -> bytes:
        connection = self._live()
        peeked = connection.key_cache.get(label)  # lock-free: only to hash outside the lock
        profile = peeked.profile if peeked is not None else self._key(label).profile
        message = profile.prepare_message(data)

        def sign_with_token(session: pkcs11.Session) -> tuple[CachedKey, bytes]:
            key = self._cached_key(session, label)
            if expected_public_key is not None and key.public_key != expected_public_key:
                raise KeyNotFoundError(f"key {label!r} was replaced since its signer was made")
            # The key may have been replaced since the peek: then hash again, for its profile.
            to_sign = message if key.profile is profile else key.profile.prepare_message(data)
            return key, key.private_key.sign(to_sign, **key.profile.sign_arguments())

        key, raw = self._run(sign_with_token)
        return key.profile.encode_signature(raw)

    def list_keys(self) -> list[StoredKey]:
        """Every key pair on the token this store can use, by label; others are skipped."""

        def list_on_token(session: pkcs11.Session) -> list[StoredKey]:
            probe_token(session)
            stored: list[StoredKey] = []
            for label in private_key_labels(session):
                if not label or len(label) > _MAX_LABEL_LENGTH:
                    continue
                try:
                    key = self._cached_key(session, label)
                except KeystoreError:
                    continue  # another application's key, or a type we do not support
                stored.append(
                    StoredKey(label=label, algorithm=key.algorithm, public_key=key.public_key)
                )
            return stored

        return self._run(list_on_token)

    def destroy_key(self, label: str) -> None:
        """Remove the private and public key objects labelled `label`."""
        connection = self._live()

        def destroy(session: pkcs11.Session) -> None:
            connection.key_cache.pop(label, None)
            if destroy_key_pair(session, label) == 0:
                probe_token(session)
                raise KeyNotFoundError(f"no key labelled {label!r}")

        self._run(destroy)

    def private_key_attributes(self, label: str) -> dict[str, bool]:
        """Security attributes of the private key, read back from the token (for audits)."""
        names = {
            "sensitive": Attribute.SENSITIVE,
            "extractable": Attribute.EXTRACTABLE,
            "always_sensitive": Attribute.ALWAYS_SENSITIVE,
            "never_extractable": Attribute.NEVER_EXTRACTABLE,
            "token": Attribute.TOKEN,
            "private": Attribute.PRIVATE,
            "sign": Attribute.SIGN,
            "decrypt": Attribute.DECRYPT,
        }

        def read(session: pkcs11.Session) -> dict[str, bool]:
            private_key = self._cached_key(session, label).private_key
            return {name: bool(private_key[attribute]) for name, attribute in names.items()}

        return self._run(read)

    # Data objects

    def read_object(self, label: str) -> bytes | None:
        _check_label(label)

        def read(session: pkcs11.Session) -> bytes | None:
            value = _data_objects.read_data_object(session, label)
            if value is None:
                probe_token(session)
            return value

        return self._run(read)

    def write_object(self, label: str, value: bytes) -> None:
        _check_label(label)
        self._run(lambda session: _data_objects.write_data_object(session, label, value))

    def delete_object(self, label: str) -> None:
        _check_label(label)

        def delete(session: pkcs11.Session) -> None:
            if not _data_objects.delete_data_object(session, label):
                probe_token(session)
                raise KeyNotFoundError(f"no data object labelled {label!r}")

        self._run(delete)

    # Internals

    def _live(self) -> TokenConnection:
        if self._connection is None:
            raise KeystoreUnavailableError("the key store is closed")
        return self._connection

    def _run(self, operation: Callable[[pkcs11.Session], T]) -> T:
        return self._live().run(operation)

    def _key(self, label: str) -> CachedKey:
        cached = self._live().key_cache.get(label)
        if cached is not None:
            return cached
        return self._run(lambda session: self._cached_key(session, label))

    def _cached_key(self, session: pkcs11.Session, label: str) -> CachedKey:
        """The cached key for `label`, loading it on a miss. Runs under the module lock."""
        _check_label(label)
        cache = self._live().key_cache
        cached = cache.get(label)
        if cached is None:
            cached = load_key(session, label)
            if cached is None:
                probe_token(session)  # a vanished token also has no keys: say unavailable
                raise KeyNotFoundError(f"no key labelled {label!r}")
            cache[label] = cached
        return cached


def _check_label(label: str) -> None:
    if not label or len(label) > _MAX_LABEL_LENGTH:
        raise KeystoreError(f"a label must have 1 to {_MAX_LABEL_LENGTH} characters")

