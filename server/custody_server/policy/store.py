"""The policy in force, swapped atomically on reload.

Calls read `current` once and decide with that Policy, so a reload never drops or
half-applies a call: calls that started before it finish under the old policy,
later ones see the new one. A file that does not parse is rejected with its
precise error and the old policy stays in force. Every policy put in force carries
the server's reserved signing keys (the audit key), whatever its file says.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from custody_server.policy.errors import PolicyError
from custody_server.policy.model import Policy
from custody_server.policy.parser import load_policy
from custody_server.policy.rpcs import RPCS_BY_NAME, RpcInfo


@dataclass(frozen=True)
class ReloadOutcome:
    loaded: bool  # False: the file was rejected and the old policy stays
    fingerprint: str  # SHA-256 of the policy in force afterwards
    previous_fingerprint: str
    error: str = ""  # why the file was rejected


class PolicyStore:
    def __init__(self, policy: Policy, *, path: Path | None = None,
                 catalog: Mapping[str, RpcInfo] = RPCS_BY_NAME,
                 reserved_signing_keys: Mapping[str, str] | None = None) -> None:
        """`reserved_signing_keys`: alias -> what it is for; no SignLink or SignLayout
        may use these aliases under any policy this store puts in force."""
        self._reserved = dict(reserved_signing_keys or {})
        self._policy = self._with_reservations(policy)
        self._path = path
        self._catalog = catalog
        self._reload_lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path, *, catalog: Mapping[str, RpcInfo] = RPCS_BY_NAME,
                  reserved_signing_keys: Mapping[str, str] | None = None) -> PolicyStore:
        """Load at start: a bad file is a PolicyError and the server does not start."""
        return cls(load_policy(path, catalog=catalog), path=path, catalog=catalog,
                   reserved_signing_keys=reserved_signing_keys)

    def _with_reservations(self, policy: Policy) -> Policy:
        if not self._reserved:
            return policy
        return dataclasses.replace(policy, reserved_signing_keys={
            **policy.reserved_signing_keys, **self._reserved})

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def current(self) -> Policy:
        return self._policy  # one attribute read: atomic

    def replace(self, policy: Policy) -> None:
        """Put `policy` in force (tests and embedding; the server reloads from its file)."""
        with self._reload_lock:
            self._policy = self._with_reservations(policy)

    def reload(self) -> ReloadOutcome:
        """Read the file again; keep the old policy if it is unreadable or wrong."""
        with self._reload_lock:
            previous = self._policy
            if self._path is None:
                return ReloadOutcome(loaded=False, fingerprint=previous.fingerprint,
                                     previous_fingerprint=previous.fingerprint,
                                     error="no policy file to reload from")
            try:
                policy = load_policy(self._path, catalog=self._catalog)
            except PolicyError as error:
                return ReloadOutcome(loaded=False, fingerprint=previous.fingerprint,
                                     previous_fingerprint=previous.fingerprint,
                                     error=str(error))
            self._policy = self._with_reservations(policy)
            return ReloadOutcome(loaded=True, fingerprint=policy.fingerprint,
                                 previous_fingerprint=previous.fingerprint)
