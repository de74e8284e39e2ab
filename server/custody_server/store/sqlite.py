"""The embedded default's database: SQLite (the standard library's), in WAL mode.

One connection per process, one transaction at a time under a lock (SQLite has one
writer anyway; a read is a few index lookups). Several processes may share the file
(workers on one host): a writer waits for another's lock up to `busy_timeout`.
`synchronous = FULL` by default: a transaction is on disk when its commit returns, as
the audit trail's entries are; `[store] sqlite_synchronous = "normal"` commits to the WAL
without an fsync each (docs/STORE.md#durability, with the cost of each).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import structlog

from custody_server.errors import StoreUnavailableError
from custody_server.store.records import unstorable
from custody_server.store.sql import Cursor

log = structlog.get_logger("custody.store")

BUSY_TIMEOUT_SECONDS = 10.0


class SqliteSource:
    dialect = "sqlite"
    placeholder = "?"

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous {synchronous!r}")
        self.path = path
        self.description = f"sqlite:{path}"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS,
                                               isolation_level=None, check_same_thread=False)
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute(f"PRAGMA synchronous = {synchronous}")
            self._connection.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as error:
            raise StoreUnavailableError(f"cannot open the attestation store {path}: "
                                        f"{error}") from None
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            if self._closed:  # a call still running as the server stops
                raise StoreUnavailableError("attestation store unavailable: it is closed "
                                            "(the server is stopping)")
            connection = self._connection
            try:
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                cursor = connection.cursor()
                try:
                    yield cursor
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            except (sqlite3.DataError, OverflowError, UnicodeEncodeError) as error:
                # A value SQLite cannot bind or keep (an integer beyond 64 bits, a lone
                # surrogate): the request's fault, rolled back above (records.unstorable).
                with contextlib.suppress(sqlite3.Error):
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                log.warning("store.value_refused", error=type(error).__name__,
                            reason=str(error)[:200])
                raise unstorable(error) from error
            except sqlite3.Error as error:
                with contextlib.suppress(sqlite3.Error):
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                raise StoreUnavailableError(
                    f"attestation store unavailable: {str(error)[:200]}") from error

    def migrate_lock(self, cursor: Cursor) -> None:
        pass  # BEGIN IMMEDIATE holds the database's write lock already

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._connection.close()
