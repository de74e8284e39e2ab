"""PostgreSQL for replicas that share one store (psycopg 3, `[store] url`).

A small pool: idle connections are reused, up to POOL_SIZE are open; a connection that
fails (the server went away, a network error) is closed and dropped with every idle one
(they most likely went with it), so the next transaction opens a new one, and a store
that comes back is used again without a restart. Each connection has a connect timeout
and a statement timeout: a database that hangs fails the call (UNAVAILABLE) instead of
holding a signing thread. A value the database refuses as data (psycopg's DataError: a NUL
in text, a number out of range; an index row too long) is the request's fault: a
RequestError (INVALID_ARGUMENT) that leaves the connection and the health as they are.

The URL may hold a password, which is never logged: `description` names host and database
only. Prefer libpq's PGPASSFILE (or ~/.pgpass) to a password in the config file.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import structlog

from custody_server.errors import ConfigError, StoreUnavailableError
from custody_server.store.records import unstorable
from custody_server.store.sql import Cursor

log = structlog.get_logger("custody.store")

POOL_SIZE = 8
CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_MS = 10_000
_MIGRATE_LOCK = 0x6375_7374  # pg_advisory_xact_lock key: "cust"


class PostgresSource:
    dialect = "postgresql"
    placeholder = "%s"

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:  # pragma: no cover - the server extra installs it
            raise ConfigError("[store] url names PostgreSQL, but psycopg is not installed "
                              "(pip install 'psycopg[binary]')") from None
        self._psycopg = psycopg
        try:
            parts = conninfo_to_dict(url)
        except psycopg.ProgrammingError as error:
            raise ConfigError(f"[store] url is not a PostgreSQL URL: {error}") from None
        where = parts.get("host") or "localhost"
        self.description = f"postgresql://{where}:{parts.get('port') or 5432}/" \
                           f"{parts.get('dbname') or ''}"
        self._url = url
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False

    def _connect(self) -> Any:
        return self._psycopg.connect(
            self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            application_name="custody-server")

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[Cursor]:
        psycopg = self._psycopg
        with self._slots:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            healthy = False
            try:
                if connection is None:
                    connection = self._connect()
                with connection.transaction(), connection.cursor() as cursor:
                    yield cursor
                healthy = True
            except (psycopg.DataError, psycopg.errors.ProgramLimitExceeded,
                    UnicodeEncodeError) as error:
                # The request's value, not the database: rolled back, the connection is
                # fine, and health stays as it is (records.unstorable).
                healthy = connection is not None and not connection.closed
                log.warning("store.value_refused", error=type(error).__name__,
                            reason=_one_line(error))
                raise unstorable(error) from error
            except (psycopg.OperationalError, psycopg.InterfaceError,
                    psycopg.errors.QueryCanceled) as error:
                self._drop_idle()  # they most likely went with this one: not used again
                raise StoreUnavailableError(
                    f"attestation store unavailable: {_one_line(error)}") from error
            except psycopg.Error as error:
                healthy = connection is not None and not connection.closed
                raise StoreUnavailableError(
                    f"attestation store error: {_one_line(error)}") from error
            except BaseException:  # the caller's (rolled back): the connection is fine
                healthy = connection is not None and not connection.closed
                raise
            finally:
                self._release(connection, healthy=healthy)

    def _release(self, connection: Any, *, healthy: bool) -> None:
        if connection is None:
            return
        if healthy and not connection.closed and not self._closed:
            with self._lock:
                self._idle.append(connection)
            return
        with contextlib.suppress(Exception):
            connection.close()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                connection.close()

    def migrate_lock(self, cursor: Cursor) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._drop_idle()


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__
