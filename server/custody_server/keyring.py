"""Service keys by alias and version, on top of the PKCS#11 key store.

A key version lives in the token under the label `custody:<alias>:v<version>`.
This module is the only place that knows that naming.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from custody_core.keys import PublicKey
from custody_core.signer import Signer
from custody_server.errors import RequestError
from custody_server.keystore import KeyAlgorithm, KeyNotFoundError, Pkcs11KeyStore

_ALIAS = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_LABEL = re.compile(r"^custody:(?P<alias>[a-z0-9][a-z0-9._-]{0,62}):v(?P<version>[1-9][0-9]*)$")


def validate_alias(alias: str) -> str:
    if not _ALIAS.match(alias):
        raise RequestError(
            f"invalid key alias {alias[:80]!r}: use 1-63 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return alias


def key_label(alias: str, version: int) -> str:
    return f"custody:{alias}:v{version}"


@dataclass(frozen=True)
class KeyVersion:
    alias: str
    version: int
    algorithm: KeyAlgorithm
    public_key: PublicKey

    @property
    def label(self) -> str:
        return key_label(self.alias, self.version)


@dataclass(frozen=True)
class ServiceKey:
    """One alias and its versions, oldest first; the newest one signs."""

    alias: str
    versions: tuple[KeyVersion, ...]

    @property
    def active(self) -> KeyVersion:
        return self.versions[-1]

    @property
    def algorithm(self) -> KeyAlgorithm:
        return self.active.algorithm


class KeyRing:
    """Resolves aliases to key versions and signers; caches the token's key list."""

    def __init__(self, store: Pkcs11KeyStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._keys: dict[str, ServiceKey] | None = None

    def _load(self) -> dict[str, ServiceKey]:
        with self._lock:
            if self._keys is None:
                self._keys = self._read_token()
            return self._keys

    def _read_token(self) -> dict[str, ServiceKey]:
        versions: dict[str, list[KeyVersion]] = {}
        for stored in self._store.list_keys():
            match = _LABEL.match(stored.label)
            if not match:
                continue  # not ours: other applications may share the token
            alias = match["alias"]
            versions.setdefault(alias, []).append(KeyVersion(
                alias=alias,
                version=int(match["version"]),
                algorithm=stored.algorithm,
                public_key=stored.public_key,
            ))
        return {
            alias: ServiceKey(alias=alias, versions=tuple(sorted(v, key=lambda k: k.version)))
            for alias, v in versions.items()
        }

    def refresh(self) -> None:
        with self._lock:
            self._keys = None

    def all(self) -> Sequence[ServiceKey]:
        return sorted(self._load().values(), key=lambda k: k.alias)

    def get(self, alias: str) -> ServiceKey:
        key = self._load().get(validate_alias(alias))
        if key is None:
            raise KeyNotFoundError(f"no key with alias {alias!r}")
        return key

    def exists(self, alias: str) -> bool:
        return validate_alias(alias) in self._load()

    def create(self, alias: str, algorithm: KeyAlgorithm) -> ServiceKey:
        validate_alias(alias)
        label = key_label(alias, 1)
        self._store.generate_key(label=label, algorithm=algorithm)
        self.refresh()
        return self.get(alias)

    def signer(self, alias: str) -> tuple[KeyVersion, Signer]:
        """The version that signs for `alias` now, and a signer for it."""
        version = self.get(alias).active
        return version, self._store.signer(version.label)
