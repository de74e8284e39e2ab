"""Whether the server is SERVING, decided from every reason it may not be.

Health is NOT_SERVING while any reason holds: the audit trail cannot write, the token is
unavailable, an operator took the server out, the server is shutting down. Each source
holds and releases only its own reason, so one that recovers never announces SERVING
while another still holds (the audit trail recovering during shutdown used to). Shutdown
is final.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("custody.health")

AUDIT_UNWRITABLE = "audit"  # the audit trail cannot write
# the HSM token is unavailable (custody_server.token_health); a reason, not a secret
TOKEN_UNAVAILABLE = "token"  # noqa: S105
OPERATOR = "operator"  # RunningServer.set_serving(False)
SHUTDOWN = "shutdown"  # the server is stopping: final

Publish = Callable[[bool], None]


class ServingHealth:
    """The reasons that hold; `publish(serving)` hears every change of the verdict."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._lock = threading.Lock()  # also orders the publications
        self._reasons: set[str] = set()
        self._published: bool | None = None

    @property
    def serving(self) -> bool:
        with self._lock:
            return not self._reasons

    @property
    def reasons(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._reasons)

    def set(self, reason: str, *, holds: bool) -> None:
        """Hold `reason` (NOT_SERVING because of it) or release it. Once the server is
        shutting down, nothing is released."""
        with self._lock:
            if holds:
                self._reasons.add(reason)
            elif SHUTDOWN not in self._reasons:
                self._reasons.discard(reason)
            self._announce(force=False)

    def listener(self, reason: str) -> Callable[[bool], None]:
        """For a source that reports healthy (True) or not (False), such as
        AuditTrail.set_health_listener: False holds `reason`, True releases it."""
        return lambda healthy: self.set(reason, holds=not healthy)

    def shut_down(self) -> None:
        """NOT_SERVING for good."""
        self.set(SHUTDOWN, holds=True)

    def announce(self) -> None:
        """Publish the current verdict even if it did not change (at start)."""
        with self._lock:
            self._announce(force=True)

    def _announce(self, *, force: bool) -> None:
        serving = not self._reasons
        if serving == self._published and not force:
            return
        self._published = serving
        log.info("server.health", serving=serving, reasons=sorted(self._reasons))
        self._publish(serving)
