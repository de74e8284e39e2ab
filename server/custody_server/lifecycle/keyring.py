"""Service keys by alias and version, on top of the PKCS#11 key store.

A key version lives in the token under the label `custody:<alias>:v<version>`, and the
alias's lifecycle record (which version signs, which verify until when) beside it as a
data object (see lifecycle.token_state). This module is the only place that knows that
naming.

Every replica reads the same token, so every replica sees the same versions and windows.
A replica's view is cached for `cache_ttl` seconds (default 5): a change made through
another replica is seen here within that delay. If re-reading the token fails, the old
view is served for at most one more TTL, then the call fails (UNAVAILABLE).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType

import structlog

from custody_core.keys import PublicKey
from custody_core.signer import Signer
from custody_server.errors import RequestError
from custody_server.keystore import (
    KeyAlgorithm,
    KeyExistsError,
    KeyNotFoundError,
    KeystoreUnavailableError,
    Pkcs11KeyStore,
    StoredKey,
)
from custody_server.lifecycle import settings
from custody_server.lifecycle.guard import LifecycleGuard, default_guard
from custody_server.lifecycle.model import KeyVersion, ServiceKey, key_label
from custody_server.lifecycle.rotation import AliasLifecycle, VersionLifecycle, with_next
from custody_server.lifecycle.token_state import TokenLifecycleStore

__all__ = ["KeyRing", "KeyVersion", "ServiceKey", "TokenKeys", "key_label", "validate_alias"]

log = structlog.get_logger("custody.keyring")

_ALIAS = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_LABEL = re.compile(r"^custody:(?P<alias>[a-z0-9][a-z0-9._-]{0,62}):v(?P<version>[1-9][0-9]*)$")
DEFAULT_CACHE_TTL_SECONDS = settings.DEFAULT_CACHE_TTL_SECONDS


def validate_alias(alias: str) -> str:
    if not _ALIAS.match(alias):
        raise RequestError(
            f"invalid key alias {alias[:80]!r}: use 1-63 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return alias


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TokenKeys:
    """One alias as the token holds it right now: its record and its key pairs by version."""

    alias: str
    key: ServiceKey | None  # None: no key of this alias (or only a crashed create's)
    stored: Mapping[int, StoredKey]
    has_record: bool


@dataclass(frozen=True)
class _View:
    keys: Mapping[str, ServiceKey]
    by_keyid: Mapping[str, KeyVersion]
    loaded_at: float


class KeyRing:
    """Resolves aliases to key versions and signers; caches the token's view for cache_ttl s."""

    def __init__(
        self,
        store: Pkcs11KeyStore,
        *,
        clock: Callable[[], datetime] = _utc_now,
        cache_ttl: float = DEFAULT_CACHE_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        guard: LifecycleGuard | None = None,
    ) -> None:
        if cache_ttl < 0:
            raise ValueError("cache_ttl must not be negative")
        self._store = store
        self._records = TokenLifecycleStore(store)
        self._clock = clock
        self._monotonic = monotonic
        self.cache_ttl = cache_ttl
        self.guard = guard if guard is not None else default_guard()
        self._lock = threading.Lock()
        self._view: _View | None = None

    def now(self) -> datetime:
        return self._clock()

    # The cached view

    def _current(self) -> _View:
        with self._lock:
            view, now = self._view, self._monotonic()
            if view is not None and now - view.loaded_at < self.cache_ttl:
                return view
            try:
                self._view = self._load(now)
            except KeystoreUnavailableError:
                if view is None or now - view.loaded_at >= 2 * self.cache_ttl:
                    raise
                log.warning("keyring.refresh_failed", serving_view_age=now - view.loaded_at)
                return view
            return self._view

    def _load(self, loaded_at: float) -> _View:
        keys = {}
        for alias, stored in _group_by_alias(self._store.list_keys()).items():
            key = self._read_alias(alias, stored).key
            if key is not None:
                keys[alias] = key
        by_keyid = {v.keyid: v for key in keys.values() for v in key.versions}
        return _View(MappingProxyType(keys), MappingProxyType(by_keyid), loaded_at)

    def refresh(self) -> None:
        """Forget the cached view: the next call reads the token."""
        with self._lock:
            self._view = None

    def all(self) -> Sequence[ServiceKey]:
        return sorted(self._current().keys.values(), key=lambda k: k.alias)

    def get(self, alias: str) -> ServiceKey:
        key = self._current().keys.get(validate_alias(alias))
        if key is None:
            raise KeyNotFoundError(f"no key with alias {alias!r}")
        return key

    def exists(self, alias: str) -> bool:
        return validate_alias(alias) in self._current().keys

    def find_keyid(self, keyid: str) -> KeyVersion | None:
        """The service key version with this keyid, in any state, or None."""
        return self._current().by_keyid.get(keyid)

    def versions_by_keyid(self) -> Mapping[str, KeyVersion]:
        return self._current().by_keyid

    def signer(self, alias: str) -> tuple[KeyVersion, Signer]:
        """The version that signs for `alias` now, and a signer for it."""
        version = self.get(alias).active
        return version, self._store.signer(version.label)

    # Reading fresh and changing the token: lifecycle changes, under the guard

    def read_fresh(self, alias: str) -> TokenKeys:
        """The alias as the token holds it now, bypassing the cache."""
        stored = _group_by_alias(self._store.list_keys()).get(validate_alias(alias), {})
        return self._read_alias(alias, stored)

    def _read_alias(self, alias: str, stored: Mapping[int, StoredKey]) -> TokenKeys:
        record = self._records.read(alias)
        if record is not None:
            return TokenKeys(alias, ServiceKey(alias, record), stored, has_record=True)
        if not stored:
            return TokenKeys(alias, None, stored, has_record=False)
        # A key made before lifecycle tracking: its newest version signs; its age is unknown.
        newest = stored[max(stored)]
        legacy = _version(alias, max(stored), newest.algorithm, newest.public_key,
                          VersionLifecycle(version=max(stored), created=None))
        return TokenKeys(alias, ServiceKey(alias, (legacy,)), stored, has_record=False)

    def write(self, key: ServiceKey) -> None:
        """Store the alias's lifecycle record (caller holds the guard) and drop the cache."""
        self._records.write(key)
        self.refresh()

    def generate(self, alias: str, version: int, algorithm: KeyAlgorithm) -> PublicKey:
        return self._store.generate_key(label=key_label(alias, version), algorithm=algorithm)

    def apply(self, current: TokenKeys, lifecycle: AliasLifecycle, *,
              algorithm: KeyAlgorithm) -> ServiceKey:
        """Make the token hold `lifecycle` (the caller holds the guard and read `current`
        fresh): a key pair for each version it adds, then the record.

        A version's key pair is generated with `algorithm`, or adopted when a change that
        died before writing its record left one under that label (crash safety: labels are
        deterministic and never reused)."""
        key = current.key
        known = {v.version: v for v in key.versions} if key is not None else {}
        versions = []
        for entry in lifecycle.versions:
            existing = known.get(entry.version)
            if existing is not None:
                versions.append(KeyVersion(alias=current.alias, version=entry.version,
                                           algorithm=existing.algorithm,
                                           public_key=existing.public_key, lifecycle=entry))
                continue
            leftover = current.stored.get(entry.version)
            if leftover is not None:
                public_key, made_with = leftover.public_key, leftover.algorithm
            else:
                public_key = self.generate(current.alias, entry.version, algorithm)
                made_with = algorithm
            versions.append(_version(current.alias, entry.version, made_with, public_key,
                                     entry))
        updated = ServiceKey(current.alias, tuple(versions))
        self.write(updated)
        return updated

    def ensure_next(self, alias: str) -> tuple[ServiceKey, KeyVersion | None]:
        """The alias with a next version, and the version this call made (None: it had one).

        Under the guard on a fresh read, so replicas that do this at the same moment make
        one next version between them, and agree on it."""
        key = self.get(alias)
        if key.next is not None:
            return key, None
        with self.guard.hold():
            current = self.read_fresh(alias)
            if current.key is None:
                raise KeyNotFoundError(f"no key with alias {alias!r}")
            if current.key.next is not None:  # another replica made it meanwhile
                self.refresh()  # and this view is older than that
                return current.key, None
            updated = self.apply(current, with_next(current.key.lifecycle, now=self.now()),
                                 algorithm=current.key.active.algorithm)
        made = updated.next
        assert made is not None
        return updated, made

    def destroy(self, version: KeyVersion) -> bool:
        """Remove the version's key pair from the token; False if it was already gone."""
        try:
            self._store.destroy_key(version.label)
        except KeyNotFoundError:
            return False
        return True

    def ensure(self, alias: str, algorithm: KeyAlgorithm) -> tuple[ServiceKey, bool]:
        """The alias's key, v1 generated if it is missing; True when this call made it.

        Replicas that cold-start at the same moment race to make the same alias. The one
        that loses gets KeyExistsError from `create` (the guard ordered it after the winner,
        or, without a shared lock, the token refused the taken label): another replica
        made the key, which is then read fresh (under the guard: not while another
        replica writes the token) and taken as it is.
        """
        if self.exists(alias):
            return self.get(alias), False
        try:
            return self.create(alias, algorithm), True
        except KeyExistsError:
            log.info("keyring.created_elsewhere", alias=alias)
        with self.guard.hold():
            made_elsewhere = self.read_fresh(alias).key
        self.refresh()
        if made_elsewhere is None:  # its label is taken, yet no key pair is listed
            raise KeystoreUnavailableError(f"key {alias!r} is being made by another "
                                           "replica and is not readable yet: retry")
        return made_elsewhere, False

    def create(self, alias: str, algorithm: KeyAlgorithm) -> ServiceKey:
        """Generate v1 of a new alias, active from now, and v2, its next version.
        KeyExistsError if the alias exists.

        The record is written after each: a create that dies after v1 leaves an alias
        without a next version, which the next `ensure_next` makes."""
        validate_alias(alias)
        with self.guard.hold():
            current = self.read_fresh(alias)
            if current.key is not None:
                raise KeyExistsError(f"a key with alias {alias!r} already exists")
            public_key = self.generate(alias, 1, algorithm)
            now = self.now()
            created = _version(alias, 1, algorithm, public_key,
                               VersionLifecycle(version=1, created=now, activated=now))
            key = ServiceKey(alias, (created,))
            self.write(key)
            key = self.apply(TokenKeys(alias, key, current.stored, has_record=True),
                             with_next(key.lifecycle, now=now), algorithm=algorithm)
        return key


def _version(alias: str, number: int, algorithm: KeyAlgorithm, public_key: PublicKey,
             lifecycle: VersionLifecycle) -> KeyVersion:
    return KeyVersion(alias=alias, version=number, algorithm=algorithm,
                      public_key=public_key, lifecycle=lifecycle)


def _group_by_alias(stored: Sequence[StoredKey]) -> dict[str, dict[int, StoredKey]]:
    grouped: dict[str, dict[int, StoredKey]] = {}
    for key in stored:
        match = _LABEL.match(key.label)
        if match:  # other applications' keys may share the token
            grouped.setdefault(match["alias"], {})[int(match["version"])] = key
    return grouped
