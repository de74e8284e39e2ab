"""The audit trail: a fail-closed `AuditSink` with group commit.

`record()` returns only after its entry is on disk (a synchronous write, see
audit.files); otherwise it raises and the caller withholds the signature.

Group commit without a writer thread (leader/follower): a caller queues its entry;
if no one is writing, it becomes the leader: it takes everything queued, appends it
in one synchronous write, wakes the callers of that batch (the followers), and hands
the lead to the oldest caller queued meanwhile. Alone (one request in flight) a
caller writes its own entry and waits for no other thread; under load the entries
that arrive during one write share the next, and a leader first waits (at most
`commit_delay_seconds`) for the entries of the server's other calls in progress, so
that more of them do. (A dedicated writer thread cost two thread hand-offs per record,
each up to the interpreter's switch interval under load.)

A small timer thread writes the periodic checkpoints when no traffic does, and
retries a failed trail. When a write fails (disk full, file removed, replaced or
unwritable) the batch's callers get the error, the trail turns unhealthy (the health
listener hears False) and refuses records at once until a retry succeeds: every
`retry_interval_seconds` the next caller or the timer reopens the file (cut back to
what was durable, or a new file that starts with a checkpoint) and writes an
"audit-recovered" entry. Then the listener hears True.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from custody_core.audit_trail import CHECKPOINT_ACTION
from custody_server.audit.anchor import TrailAnchor
from custody_server.audit.entry import ecs_entry, format_timestamp, new_event_id
from custody_server.audit.files import TrailLock
from custody_server.audit.settings import AuditSettings
from custody_server.audit.tail_check import AuditTrailRefused
from custody_server.audit.writer import AuditObserver, CheckpointSigner, TrailWriter
from custody_server.audit_events import AuditEvent
from custody_server.errors import AuditUnavailableError

log = structlog.get_logger("custody.audit")

MAX_BATCH = 4096
CROWD = 3  # calls in progress that make a leader wait for their entries
HealthListener = Callable[[bool], None]
CallsInProgress = Callable[[], int]  # how many calls that write entries are under way


class AuditWriteError(AuditUnavailableError):
    """The entry is not on disk: the caller must not return what it records."""


class _Pending:
    """One queued entry (None: a request for a checkpoint) and its caller's wait.

    A plain lock, held from the start, is the cheapest one-shot signal between two
    threads. It is released once: by the leader that wrote the entry (`finish`), or to
    make its caller the next leader (`promote`, while the entry is still queued).
    """

    __slots__ = ("_signal", "done", "entry", "error", "lead")

    def __init__(self, entry: dict[str, Any] | None) -> None:
        self.entry = entry
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        self._signal = threading.Lock()
        self._signal.acquire()

    def finish(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.error = error
        self.done = True
        if not self.lead:  # a leader's own entry: nobody waits on the signal
            self._signal.release()

    def promote(self) -> None:
        self.lead = True
        self._signal.release()

    def wait(self, timeout: float) -> bool:
        return self._signal.acquire(timeout=timeout)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditTrail:
    """Implements custody_server.audit_events.AuditSink."""

    def __init__(self, *, settings: AuditSettings, checkpoint_signer: CheckpointSigner,
                 anchor: TrailAnchor, clock: Callable[[], datetime] = _utc_now,
                 observer: AuditObserver | None = None,
                 new_segment: dict[str, Any] | None = None) -> None:
        """Open the trail in settings.directory, checked against `anchor` (AuditTrailRefused
        if it does not check out). `new_segment`: the operator's command to start a new
        segment instead (its details, e.g. the reason, go into the first entry)."""
        self._settings = settings
        self._clock = clock
        self._observer = observer
        settings.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._writer = TrailWriter(settings=settings, checkpoint_signer=checkpoint_signer,
                                   anchor=anchor, clock=clock, observer=observer,
                                   mirror=_write_stdout if settings.mirror_stdout else None)
        try:
            self._trail_lock: TrailLock | None = TrailLock(settings.directory)
        except OSError as error:
            raise AuditUnavailableError(str(error)) from error
        try:
            opened = self._writer.start(new_segment=new_segment)
        except AuditTrailRefused:
            self._release_lock()
            raise
        except Exception as error:
            self._release_lock()
            raise AuditUnavailableError(
                f"cannot open the audit trail in {settings.directory}: {error}") from error
        self.opened_details = opened  # what the audit-open entry says (start-up checks)
        # Everything below is guarded by _lock. The writer is used only by the leader.
        self._lock = threading.Lock()
        self._timer_wake = threading.Condition(self._lock)  # the timer thread waits here
        self._lead_free = threading.Condition(self._lock)  # close() waits here
        self._queue: list[_Pending] = []
        self._leading = False  # a thread holds the lead; queued entries are then its
        self._failure: BaseException | None = None
        self._failed_at = 0.0
        self._next_retry = 0.0
        self._refused = 0
        self._closing = False
        self._listener: HealthListener | None = None
        self._calls_in_progress: CallsInProgress | None = None
        self._gather_until = 0  # a leader waits until this many entries are queued
        self._gathered = threading.Condition(self._lock)  # ... and is woken here
        self._timer = threading.Thread(target=self._run_timer, name="custody-audit-timer",
                                       daemon=True)
        self._timer.start()
        try:
            self.record(AuditEvent(action="audit-open", category="file", outcome="success",
                                   details=opened))
            if self._writer.new_trail:  # the token records the genesis at once
                self._writer.record_head()
        except AuditWriteError:
            self.close()
            raise

    @property
    def path(self) -> Path:
        """The active file."""
        return self._writer.active_path

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._failure is None

    def set_health_listener(self, listener: HealthListener | None) -> None:
        """Hear True/False when writing works again / fails; hears the current state now."""
        with self._lock:
            self._listener = listener
            healthy = self._failure is None
        if listener is not None:
            listener(healthy)

    def expect_entries_from(self, calls_in_progress: CallsInProgress | None) -> None:
        """Tell the trail how many calls are under way (the server's RPCs in progress):
        a leader then waits for the entries of those calls, not for a fixed delay."""
        with self._lock:
            self._calls_in_progress = calls_in_progress

    def record(self, event: AuditEvent) -> None:
        if event.action == CHECKPOINT_ACTION:
            raise ValueError(f"{CHECKPOINT_ACTION!r} entries are the trail's own")
        entry = ecs_entry(event, event_id=new_event_id(),
                          request=structlog.contextvars.get_contextvars())
        self._commit(_Pending(entry))

    def checkpoint(self) -> None:
        """Write a signed checkpoint now (it waits like a record)."""
        self._commit(_Pending(None))

    def close(self) -> None:
        """Let what is queued be written, write a closing checkpoint, stop the timer."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._timer_wake.notify()
            deadline = time.monotonic() + self._settings.write_timeout_seconds
            while self._leading and (left := deadline - time.monotonic()) > 0:
                self._lead_free.wait(left)
            if self._leading:  # a write hangs: leave the file to it
                log.error("audit.close_timed_out")
                return
            self._leading = True  # for good: nothing is written after this
            healthy = self._failure is None
        self._writer.close(seal=healthy)
        self._timer.join(timeout=self._settings.write_timeout_seconds)
        self._release_lock()

    def _release_lock(self) -> None:
        if self._trail_lock is not None:
            self._trail_lock.release()
            self._trail_lock = None

    # Callers: queue, then lead or follow

    def _commit(self, pending: _Pending) -> None:
        with self._lock:
            if self._closing:
                raise AuditWriteError("the audit trail is closed")
            if self._failure is not None and time.monotonic() < self._next_retry:
                self._refused += 1
                raise AuditWriteError("the audit trail cannot be written") from self._failure
            if pending.entry is not None:  # stamped here, so time follows sequence order
                pending.entry["@timestamp"] = format_timestamp(self._clock())
            self._queue.append(pending)
            if self._gather_until and len(self._queue) >= self._gather_until:
                self._gathered.notify()  # the batch the leader waits for is complete
            lead = not self._leading
            if lead:
                self._leading = pending.lead = True
        if lead or not self._follow(pending):
            self._lead()
        if not pending.done:  # cannot happen: a leader's batch holds its own entry
            raise AuditWriteError("the audit entry was not written")
        if pending.error is not None:
            raise AuditWriteError("the audit entry could not be written") from pending.error

    def _follow(self, pending: _Pending) -> bool:
        """Wait until a leader wrote `pending` (True) or handed us the lead (False)."""
        if pending.wait(self._settings.write_timeout_seconds):
            return not pending.lead
        with self._lock:
            if pending.done:  # written as the wait ran out
                return True
            if pending.lead:  # promoted as the wait ran out: the queue needs us
                pending.wait(0)
                return False
            if pending in self._queue:  # not taken yet: it will never be written
                self._queue.remove(pending)
        raise AuditWriteError("the audit write timed out")

    def _lead(self) -> None:
        """Write one batch (the oldest queued entries, ours first), then pass the lead on."""
        self._gather()
        with self._lock:
            batch = self._queue[:MAX_BATCH]
            del self._queue[:MAX_BATCH]
        try:
            self._process(batch)
        except Exception as error:  # a bug: fail the batch, keep the trail going
            log.exception("audit.writer_crash")
            self._fail(error)
            _finish(batch, error)
        finally:
            self._pass_lead()

    def _gather(self) -> None:
        """Under concurrent load, wait up to `commit_delay_seconds` for the entries of the
        calls still under way, so that more of them share one write: fewer writes and
        thread hand-offs per entry save more CPU than the wait costs (as PostgreSQL's
        commit_delay with commit_siblings).

        The leader waits only when told the calls in progress (`expect_entries_from`),
        CROWD or more of them are, and some have not queued their entry yet; the entry
        that completes the batch wakes it. A caller alone never waits, and with one
        other call under way a wait does not pay (measured: 3-4% less throughput at 2
        in flight), hence CROWD = 3. A call that records late or not at all (a slow
        Verify) costs at most the delay per write.
        """
        delay = self._settings.commit_delay_seconds
        with self._lock:
            if not delay or self._calls_in_progress is None or self._failure is not None:
                return
            expected = min(self._calls_in_progress(), MAX_BATCH)
            if expected < CROWD or len(self._queue) >= expected:
                return
            self._gather_until = expected
            try:
                self._gathered.wait(delay)
            finally:
                self._gather_until = 0

    def _pass_lead(self) -> None:
        with self._lock:
            if self._queue:
                self._queue[0].promote()
                return
            self._leading = False
            if self._closing:
                self._lead_free.notify()

    # The leader's work

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
        was_sealed = self._writer.sealed
        try:
            self._writer.commit(entries, checkpoint=checkpoint)
        except Exception as error:
            self._fail(error)
            self._refuse(batch, error)
            return
        _finish(batch, None)
        if was_sealed and not self._writer.sealed:
            with self._lock:  # the next checkpoint has a time now: tell the timer
                self._timer_wake.notify()
        try:
            self._writer.rotate_if_full()
        except Exception as error:
            self._fail(error)

    def _refuse(self, batch: list[_Pending], error: BaseException) -> None:
        with self._lock:
            self._refused += len(batch)
        _finish(batch, error)

    def _fail(self, error: BaseException) -> None:
        log.error("audit.write_failed", error=f"{type(error).__name__}: {error}"[:300])
        if self._observer is not None:
            self._observer.audit_failed(kind="write")
        with self._lock:
            first = self._failure is None
            self._failure = error
            self._next_retry = time.monotonic() + self._settings.retry_interval_seconds
            if first:
                self._failed_at = time.monotonic()
            listener = self._listener
            self._timer_wake.notify()  # retry without traffic
        if first and listener is not None:
            listener(False)

    def _recover(self) -> None:
        with self._lock:
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
                              event_id=new_event_id(), request={})
            entry["@timestamp"] = format_timestamp(self._clock())
            self._writer.commit([entry], checkpoint=None)
        except Exception as error:
            with self._lock:
                self._failure = error
            return
        log.info("audit.recovered", refused=refused)
        with self._lock:
            self._failure = None
            self._refused = 0
            listener = self._listener
        if listener is not None:
            listener(True)

    # The timer thread: checkpoints and retries when no caller comes

    def _run_timer(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._closing:
                        return
                    timeout = self._seconds_to_wake()
                    if timeout is not None and timeout <= 0 and not self._leading:
                        self._leading = True
                        break
                    # Busy leaders do the due work themselves; look again a little later.
                    self._timer_wake.wait(timeout if timeout is None or timeout > 0
                                          else self._settings.retry_interval_seconds)
            self._lead()

    def _seconds_to_wake(self) -> float | None:
        """Under _lock. Reads the writer's checkpoint clock outside the lead: a stale value
        only moves the wake-up; the leader checks again."""
        now = time.monotonic()
        if self._failure is not None:
            return self._next_retry - now
        return self._writer.seconds_until_checkpoint(now)


def _finish(batch: list[_Pending], error: BaseException | None) -> None:
    for pending in batch:
        pending.finish(error)


def _write_stdout(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        pass  # the copy is best effort; the file is the record
