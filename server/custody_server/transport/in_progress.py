"""How many calls that write an audit entry the server is handling right now
(every Custody and KeyAdmin RPC but the reads in policy.rpcs.READS_WITHOUT_AUDIT).

The audit trail reads it (AuditTrail.expect_entries_from): a group-commit leader waits
for the entries of calls still under way instead of sleeping a fixed delay.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CallCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __call__(self) -> int:
        return self._count

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count the call for as long as the block runs."""
        with self._lock:
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
