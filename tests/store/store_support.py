"""Helpers for the attestation store's tests: signed links made with software keys, a
store on a temporary SQLite file, and a source that fails on demand."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from custody_core.envelope import sign_metablock
from custody_core.link import build_link
from custody_core.software_signer import SoftwareSigner
from custody_server.audit_events import MemoryAuditSink
from custody_server.errors import StoreUnavailableError
from custody_server.store import AttestationStore, StoreConfig, open_store
from custody_server.store.sql import Cursor, Source


class Clock:
    """A clock the test moves."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 5, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def signed_link(signer: SoftwareSigner, step: str, products: dict[str, str],
                **fields: Any) -> bytes:
    """A Metablock link for `step` with these products (path -> sha256 hex)."""
    link = build_link(name=step, command=fields.get("command", ["make"]),
                      materials=fields.get("materials", {}),
                      products={p: {"sha256": d} for p, d in products.items()},
                      byproducts={}, environment={})
    return sign_metablock(link, [signer])


def sqlite_store(state_dir: Path, *, clock: Clock | None = None,
                 audit: MemoryAuditSink | None = None) -> AttestationStore:
    return open_store(StoreConfig(), state_dir=state_dir, audit=audit or MemoryAuditSink(),
                      clock=clock or Clock())


class FailingSource:
    """Wraps a Source; while `failing` is set every transaction raises
    StoreUnavailableError, as a database that went away would."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.dialect = inner.dialect
        self.placeholder = inner.placeholder
        self.failing = threading.Event()

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[Cursor]:
        if self.failing.is_set():
            raise StoreUnavailableError("attestation store unavailable: injected fault")
        with self.inner.transaction(write=write) as cursor:
            yield cursor

    def migrate_lock(self, cursor: Cursor) -> None:
        self.inner.migrate_lock(cursor)

    def close(self) -> None:
        self.inner.close()
