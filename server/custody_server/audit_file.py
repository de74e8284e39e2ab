"""A minimal durable audit sink: one JSON object per line, fsync'd before returning.

Stands in until the hash-chained audit trail replaces it; same interface.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from custody_server.audit_events import AuditEvent


class JsonLinesAuditSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(self, event: AuditEvent) -> None:
        line = json.dumps({
            "@timestamp": datetime.now(UTC).isoformat(),
            "event.action": event.action,
            "event.category": event.category,
            "event.outcome": event.outcome,
            "event.reason": event.reason,
            "service.name": "custody",
            "custody": dict(event.details),
        }, sort_keys=True, default=str) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
