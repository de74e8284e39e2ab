"""The attestation store: every link and layout the service signs, and links signed
elsewhere (AddLink), found by run, step, product digest and time. SQLite in the embedded
default (state_dir/store.sqlite3), PostgreSQL when replicas share it. docs/STORE.md."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from custody_server.audit_events import AuditSink
from custody_server.store.records import LinkQuery, NewRecord, StoredRecord
from custody_server.store.service import STORE_UNAVAILABLE, AttestationStore, StoreWatch
from custody_server.store.settings import StoreConfig
from custody_server.store.sql import MAX_PAGE_CONTENT_BYTES, SqlStore

__all__ = ["STORE_UNAVAILABLE", "AttestationStore", "LinkQuery", "NewRecord", "StoreConfig",
           "StoreWatch", "StoredRecord", "open_store"]


def open_store(config: StoreConfig, *, state_dir: Path, audit: AuditSink,
               clock: Callable[[], datetime],
               max_reply_bytes: int | None = None) -> AttestationStore:
    """Open the configured database and bring its schema up to date (ConfigError if it is
    newer than this server; StoreUnavailableError if it cannot be reached).
    `max_reply_bytes`: the server's largest reply (limits.max_message_bytes); a ListLinks
    page's files take at most half of it, leaving the rest to the records around them."""
    budget = MAX_PAGE_CONTENT_BYTES if max_reply_bytes is None \
        else max(1, min(MAX_PAGE_CONTENT_BYTES, max_reply_bytes // 2))
    if config.postgres_url is not None:
        from custody_server.store.postgres import PostgresSource

        sql = SqlStore(PostgresSource(config.postgres_url), page_content_bytes=budget)
    else:
        from custody_server.store.sqlite import SqliteSource

        sql = SqlStore(SqliteSource(config.sqlite_file(state_dir),
                                    synchronous=config.sqlite_synchronous.upper()),
                       page_content_bytes=budget)
    try:
        sql.migrate(now=clock())
    except BaseException:
        sql.source.close()
        raise
    return AttestationStore(sql, audit=audit, clock=clock,
                            max_link_bytes=config.max_link_bytes)
