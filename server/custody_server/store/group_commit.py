"""SQLite: links stored by concurrent calls share one transaction (a group commit).

A SignLink stores its link in the signing path, and in SQLite (one writer at a time,
`synchronous = FULL`) each transaction is an fsync: one per link holds the signing rate
to the disk's commit rate. Here one writer at a time commits; links that arrive while it
does wait, and the next writer takes all of them in one transaction. No timer: under no
load a link is committed at once, under load each commit carries what queued during the
previous one. PostgreSQL commits concurrent transactions in parallel and groups their
WAL flushes itself: grouping them here made it slower, so it is not used there
(measured: docs/PERFORMANCE.md#attestation-store).

A failed transaction fails every call in it (each is withheld, StoreUnavailableError):
the inserts are idempotent, so a retry of any of them is safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from custody_server.store.records import NewRecord


@dataclass
class _Pending:
    records: Sequence[NewRecord]
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """`insert(records)` returns once the records are committed, with others' or alone."""

    def __init__(self, write: Callable[[list[NewRecord]], object]) -> None:
        self._write = write
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._writer = threading.Lock()  # one transaction at a time
        self.transactions = 0  # for the benchmark: how many commits the calls took

    def insert(self, records: Sequence[NewRecord]) -> None:
        pending = _Pending(records)
        with self._queue_lock:
            self._queue.append(pending)
        with self._writer:
            if not pending.done:  # nobody took it: write what has queued, ours included
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if pending.error is not None:
            raise pending.error

    def _commit(self, batch: list[_Pending]) -> None:
        error: BaseException | None = None
        try:
            self._write([record for item in batch for record in item.records])
            self.transactions += 1
        except BaseException as failure:  # every call in the transaction gets it
            error = failure
        for item in batch:
            item.error = error
            item.done = True
