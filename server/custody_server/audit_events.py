"""The interface every audit sink implements, and the events the services emit.

Signing is fail-closed: `AuditSink.record` must return before a signature
leaves the service; if it raises, the signature is thrown away and the RPC
fails with UNAVAILABLE. The audit trail itself (hash chain, checkpoints,
durable files) implements this interface in custody_server.audit.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class AuditEvent:
    """One security-relevant act, in ECS terms plus Custody's own fields.

    `details` holds Custody's namespace (key alias, version, keyid, step or
    layout name, SHA-256 of the bytes signed). Never a PIN, a key or a payload.
    """

    action: str  # e.g. "sign-link", "sign-layout", "verify", "key-create"
    category: str  # ECS event.category, e.g. "configuration", "authentication"
    outcome: str  # "success" | "failure"
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


class AuditSink(Protocol):
    def record(self, event: AuditEvent) -> None:
        """Write the event durably, or raise. Called before any signature is returned."""


class MemoryAuditSink:
    """Keeps events in memory: for tests and for runs with auditing off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[AuditEvent]:
        with self._lock:
            return list(self._events)
