"""The audit trail: a fail-closed `AuditSink` with group commit.

`record()` returns only after its entry is on disk (written and fsync'd); otherwise it
raises and the caller withholds the signature. Callers queue their entries; one writer
thread takes everything queued, appends it and fsyncs once (group commit), then wakes
every caller of that batch. The same thread writes the periodic checkpoints.

When a write fails (disk full, file removed, replaced or unwritable) the batch's
callers get the error, the trail turns unhealthy (the health listener hears False)
and refuses records at once until a retry succeeds: every `retry_interval_seconds`
the writer reopens the file (cut back to what was durable, or a new file that starts
with a checkpoint) and writes an "audit-recovered" entry. Then the listener hears True.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from custody_client.audit_verify import CHECKPOINT_ACTION
from custody_server.audit.entry import ecs_entry, format_timestamp
from custody_server.audit.settings import AuditSettings
from custody_server.audit.writer import AuditObserver, CheckpointSigner, TrailWriter
from custody_server.audit_events import AuditEvent
from custody_server.errors import AuditUnavailableError

log = structlog.get_logger("custody.audit")

MAX_BATCH = 4096
HealthListener = Callable[[bool], None]


class AuditWriteError(AuditUnavailableError):
    """The entry is not on disk: the caller must not return what it records."""


class _Pending:
    """One queued entry (None: a request for a checkpoint) and its caller's wait.

    A plain lock, held from the start and released by the writer, is the cheapest
    one-shot signal between two threads.
    """

    __slots__ = ("_signal", "entry", "error")

    def __init__(self, entry: dict[str, Any] | None) -> None:
        self.entry = entry
        self.error: BaseException | None = None
        self._signal = threading.Lock()
        self._signal.acquire()

    def finish(self, error: BaseException | None) -> None:
        self.error = error
        self._signal.release()

    def wait(self, timeout: float) -> bool:
        return self._signal.acquire(timeout=timeout)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditTrail:
    """Implements custody_server.audit_events.AuditSink."""

    def __init__(self, *, settings: AuditSettings, checkpoint_signer: CheckpointSigner,
                 clock: Callable[[], datetime] = _utc_now,
                 observer: AuditObserver | None = None) -> None:
        self._settings = settings
        self._clock = clock
        self._observer = observer
        settings.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._writer = TrailWriter(settings=settings, checkpoint_signer=checkpoint_signer,
                                   clock=clock, observer=observer,
                                   mirror=_write_stdout if settings.mirror_stdout else None)
        try:
            opened = self._writer.start()
        except Exception as error:
            raise AuditUnavailableError(
                f"cannot open the audit trail in {settings.directory}: {error}") from error
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._failure: BaseException | None = None
        self._failed_at = 0.0
        self._next_retry = 0.0
        self._refused = 0
        self._closing = False
        self._listener: HealthListener | None = None
        self._thread = threading.Thread(target=self._run, name="custody-audit-writer",
                                        daemon=True)
        self._thread.start()
        try:
            self.record(AuditEvent(action="audit-open", category="file", outcome="success",
                                   details=opened))
        except AuditWriteError:
            self.close()
            raise

    @property
    def path(self) -> Path:
        """The active file."""
        return self._writer.active_path

    @property
    def healthy(self) -> bool:
        with self._cond:
            return self._failure is None

    def set_health_listener(self, listener: HealthListener | None) -> None:
        """Hear True/False when writing works again / fails; hears the current state now."""
        with self._cond:
            self._listener = listener
            healthy = self._failure is None
        if listener is not None:
            listener(healthy)

    def record(self, event: AuditEvent) -> None:
        if event.action == CHECKPOINT_ACTION:
            raise ValueError(f"{CHECKPOINT_ACTION!r} entries are the trail's own")
        entry = ecs_entry(event, event_id=os.urandom(16).hex(),
                          request=structlog.contextvars.get_contextvars())
        self._wait(self._enqueue(_Pending(entry)))

    def checkpoint(self) -> None:
        """Write a signed checkpoint now (it waits like a record)."""
        self._wait(self._enqueue(_Pending(None)))

    def close(self) -> None:
        """Write what is queued and a closing checkpoint, then stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=self._settings.write_timeout_seconds)

    # Callers' side

    def _enqueue(self, pending: _Pending) -> _Pending:
        with self._cond:
            if self._closing:
                raise AuditWriteError("the audit trail is closed")
            if self._failure is not None and time.monotonic() < self._next_retry:
                self._refused += 1
                raise AuditWriteError("the audit trail cannot be written") from self._failure
            if pending.entry is not None:  # stamped here, so time follows sequence order
                pending.entry["@timestamp"] = format_timestamp(self._clock())
            self._queue.append(pending)
            self._cond.notify()
        return pending

    def _wait(self, pending: _Pending) -> None:
        if not pending.wait(self._settings.write_timeout_seconds):
            raise AuditWriteError("the audit write timed out")
        if pending.error is not None:
            raise AuditWriteError("the audit entry could not be written") from pending.error

    # The writer thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    timeout = self._seconds_to_wake()
                    if timeout is not None and timeout <= 0:
                        break
                    self._cond.wait(timeout)
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                closing = self._closing and not self._queue
            try:
                self._process(batch)
            except Exception as error:  # a bug: fail the batch, keep the thread alive
                log.exception("audit.writer_crash")
                self._fail(error)
                _finish(batch, error)
            if closing:
                self._writer.close(seal=self.healthy)
                return

    def _seconds_to_wake(self) -> float | None:
        now = time.monotonic()
        if self._failure is not None:
            return self._next_retry - now
        return self._writer.seconds_until_checkpoint(now)

    def _process(self, batch: list[_Pending]) -> None:
        if self._failure is not None:
            if time.monotonic() >= self._next_retry:
                self._recover()
            if self._failure is not None:
                self._refuse(batch, self._failure)
                return
        entries = [p.entry for p in batch if p.entry is not None]
        checkpoint = ("requested" if len(entries) < len(batch)
                      else "interval" if self._writer.checkpoint_due(time.monotonic())
                      else None)
        if not entries and checkpoint is None:
            return
        try:
            self._writer.commit(entries, checkpoint=checkpoint)
        except Exception as error:
            self._fail(error)
            self._refuse(batch, error)
            return
        _finish(batch, None)
        try:
            self._writer.rotate_if_full()
        except Exception as error:
            self._fail(error)

    def _refuse(self, batch: list[_Pending], error: BaseException) -> None:
        with self._cond:
            self._refused += len(batch)
        _finish(batch, error)

    def _fail(self, error: BaseException) -> None:
        log.error("audit.write_failed", error=f"{type(error).__name__}: {error}"[:300])
        if self._observer is not None:
            self._observer.audit_failed(kind="write")
        with self._cond:
            first = self._failure is None
            self._failure = error
            self._next_retry = time.monotonic() + self._settings.retry_interval_seconds
            if first:
                self._failed_at = time.monotonic()
            listener = self._listener
        if first and listener is not None:
            listener(False)

    def _recover(self) -> None:
        with self._cond:
            self._next_retry = time.monotonic() + self._settings.retry_interval_seconds
            failure, refused = self._failure, self._refused
        try:
            details = self._writer.recover()
            details.update(refused=refused,
                           failed_seconds=round(time.monotonic() - self._failed_at))
            entry = ecs_entry(AuditEvent(action="audit-recovered", category="file",
                                         outcome="success",
                                         reason=f"{type(failure).__name__}: {failure}"[:300],
                                         details=details),
                              event_id=os.urandom(16).hex(), request={})
            entry["@timestamp"] = format_timestamp(self._clock())
            self._writer.commit([entry], checkpoint=None)
        except Exception as error:
            with self._cond:
                self._failure = error
            return
        log.info("audit.recovered", refused=refused)
        with self._cond:
            self._failure = None
            self._refused = 0
            listener = self._listener
        if listener is not None:
            listener(True)


def _finish(batch: list[_Pending], error: BaseException | None) -> None:
    for pending in batch:
        pending.finish(error)


def _write_stdout(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        pass  # the copy is best effort; the file is the record
