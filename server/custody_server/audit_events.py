"""The interface every audit sink implements, and the events the services emit.

Signing is fail-closed: `AuditSink.record` must return before a signature
leaves the service; if it raises, the signature is thrown away and the RPC
fails with UNAVAILABLE. `record_or_refuse` is that rule, for every service that
signs, verifies or changes keys. The audit trail itself (hash chain, checkpoints,
durable files) implements this interface in custody_server.audit.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from custody_core.errors import CustodyError
from custody_server.errors import AuditUnavailableError


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

    @classmethod
    def failure(cls, *, action: str, category: str, error: CustodyError,
                details: Mapping[str, Any]) -> AuditEvent:
        """A refused or failed call: the error's message is the reason."""
        return cls(action=action, category=category, outcome="failure",
                   reason=str(error)[:500], details=details)


class AuditSink(Protocol):
    def record(self, event: AuditEvent) -> None:
        """Write the event durably, or raise. Called before any signature is returned."""


def record_or_refuse(audit: AuditSink, event: AuditEvent, *, refusal: str) -> None:
    """Record `event`, or raise AuditUnavailableError(refusal) (UNAVAILABLE).

    Fail-closed: a service calls this before it returns what the event records (a
    signature, a verdict, a key change), so that nothing leaves it unrecorded. Any
    exception from the sink counts, not only the audit trail's own errors; `refusal` says
    what the caller does not get, for the status message.
    """
    try:
        audit.record(event)
    except Exception as error:
        raise AuditUnavailableError(refusal) from error


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
