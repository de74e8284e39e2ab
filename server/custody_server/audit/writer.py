"""The writing half of the trail: chain state, files, checkpoints, rotation.

Everything here runs in the thread that holds the trail's lead (one at a time; and in
the constructor of the trail, before any caller), so nothing here takes a lock. A
method that cannot make its change durable raises, and leaves the chain state as it was.
"""

from __future__ import annotations

import base64
import os
import stat
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from custody_core.audit_trail import CHECKPOINT_ACTION, GENESIS_CHAIN, checkpoint_signed_bytes
from custody_core.signer import Signer
from custody_server.audit.anchor import AnchorRecord, TrailAnchor
from custody_server.audit.entry import ecs_entry, format_timestamp, new_event_id
from custody_server.audit.files import (
    ACTIVE_NAME,
    ActiveFile,
    AuditFileError,
    FileIdentity,
    fsync_directory,
    is_regular_file,
    newest_rotated,
    read_trail_file,
    rotated_name,
    trail_files,
)
from custody_server.audit.render import ChainState, EntryRenderer
from custody_server.audit.settings import AuditSettings
from custody_server.audit.tail_check import AuditTrailRefused, CheckedTail, check_file
from custody_server.audit_events import AuditEvent

log = structlog.get_logger("custody.audit")

CheckpointSigner = Callable[[], Signer]
# A file is rotated once a write takes it past max_file_bytes; one write (a group commit of
# at most MAX_BATCH entries) adds far less than this. A larger file is not the trail's.
FILE_SLACK_BYTES = 64 * 1024 * 1024
SIGNATURE_RETRY_SECONDS = 5.0


class AuditObserver(Protocol):
    """What the trail reports for metrics."""

    def audit_written(self, *, seconds: float, entries: int) -> None: ...

    def audit_failed(self, *, kind: str) -> None: ...

    def audit_checkpointed(self, *, at: datetime) -> None:
        """A signed checkpoint is durable; `at` is its time (custody_audit_last_checkpoint_
        timestamp_seconds: the on-call sees a trail that stopped sealing)."""


class CheckpointSigningError(RuntimeError):
    """A checkpoint that a new file must start with could not be signed."""


class TrailWriter:
    def __init__(self, *, settings: AuditSettings, checkpoint_signer: CheckpointSigner,
                 anchor: TrailAnchor, clock: Callable[[], datetime],
                 observer: AuditObserver | None, mirror: Callable[[bytes], None] | None
                 ) -> None:
        self._settings = settings
        self._anchor = anchor
        self._record: AnchorRecord | None = None
        self._active_path = settings.directory / ACTIVE_NAME
        self._signer = checkpoint_signer
        self._clock = clock
        self._observer = observer
        self._mirror = mirror
        self._renderer: EntryRenderer | None = None  # made once the trail is known
        self._state = ChainState.genesis()
        self._file: ActiveFile | None = None
        self._known: tuple[FileIdentity, int] | None = None  # the file and size last durable
        self._first_sequence = 1  # of the active file
        self._first_chain = GENESIS_CHAIN  # the chain before its first entry
        self._unsealed = 0  # entries after the last checkpoint
        self._last_checkpoint = time.monotonic()
        self._checkpoint_time = clock()  # of the checkpoint last rendered (for the observer)

    @property
    def state(self) -> ChainState:
        return self._state

    @property
    def active_path(self) -> Path:
        return self._active_path

    @property
    def sealed(self) -> bool:
        """No entry was written since the last checkpoint."""
        return not self._unsealed

    # Opening

    def start(self, *, new_segment: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check the trail on disk against the token's anchor, then continue it; details
        for the audit-open entry. A trail that does not check out raises AuditTrailRefused.

        `new_segment` (the operator's explicit command): do not continue; move the files
        aside and start a new trail whose first entry names the break.
        """
        details: dict[str, Any] = {"file": str(self._active_path), "node": self._anchor.node}
        record = self._anchor.read()
        files = trail_files(self._settings.directory)
        if new_segment is not None:
            if os.path.lexists(self._active_path) and self._active_path not in files:
                files.append(self._active_path)  # not a regular file: moved aside too
            details["new_segment"] = self._new_segment(record, files, new_segment)
            return details
        if record is None:
            if files:
                raise AuditTrailRefused(
                    f"{self._settings.directory} holds an audit trail ({files[0].name}), but "
                    f"the token holds no anchor for node {self._anchor.node!r}: a trail "
                    "written by an earlier version, by another node (set [audit] "
                    "node_name to the node named in its entries), or planted")
            self._begin(details)
            return details
        if os.path.lexists(self._active_path) and not is_regular_file(self._active_path):
            raise AuditTrailRefused(f"{self._active_path} is not a regular file (a "
                                    "directory, a symlink or a device was put there)")
        self._record = record
        self._anchor.use(record)
        self._renderer = self._make_renderer(record)
        if not files:
            if record.sequence:
                raise AuditTrailRefused(
                    f"no audit trail in {self._settings.directory}, but the token records "
                    f"trail {record.trail_id} of node {record.node!r} up to entry "
                    f"{record.sequence}: it was removed (or this node name belongs to "
                    "another replica)")
            self._begin(details)  # the last start crashed before its first checkpoint
            return details
        details["trail_id"] = record.trail_id
        self._continue(details)
        return details

    def _continue(self, details: dict[str, Any]) -> None:
        """Verify the newest file with entries and continue its chain."""
        assert self._record is not None
        file = ActiveFile.open(self._active_path)
        try:
            checked = self._check(self._active_path, file)
            if checked is None:  # an empty active file: a rotation crashed midway
                newest = newest_rotated(self._settings.directory)
                checked = self._check(newest, None) if newest is not None else None
                if checked is None:
                    raise AuditTrailRefused(f"{self._active_path} holds no entry and no "
                                            "rotated file precedes it")
                self._state = ChainState(sequence=checked.sequence, chain=checked.chain)
                self._adopt(file, first_sequence=checked.sequence + 1,
                            first_chain=checked.chain)
                self.commit([], checkpoint="file-start", required=True)
            else:
                if checked.dropped is not None:
                    # A write cut short by a crash (kill -9, power loss): its callers never
                    # got an answer, so no signature it records was ever returned.
                    file.truncate(checked.keep_bytes)
                    details["torn_tail"] = checked.dropped
                    log.warning("audit.torn_tail_dropped", **checked.dropped)
                self._state = ChainState(sequence=checked.sequence, chain=checked.chain)
                self._adopt(file, first_sequence=checked.first_sequence,
                            first_chain=checked.start_chain)
        except BaseException:
            file.close()
            raise
        details["continued_from"] = self._state.sequence

    def _check(self, path: Path, file: ActiveFile | None) -> CheckedTail | None:
        assert self._record is not None
        limit = self._settings.max_file_bytes + FILE_SLACK_BYTES
        content = (file.read_all(limit=limit) if file is not None
                   else read_trail_file(path, limit=limit))
        return check_file(path, content, record=self._record,
                          check_seal=self._anchor.check_seal)

    def _begin(self, details: dict[str, Any], *, previous: dict[str, Any] | None = None
               ) -> None:
        """A new trail: its id and seal key in the token, then its first file."""
        created = format_timestamp(self._clock())
        # The file first: the token's record of the previous trail is replaced only once
        # the new trail can be written (a failure leaves the old record, and the refusal).
        file = ActiveFile.open(self._active_path, new=True)
        try:
            self._record = self._anchor.begin(trail_id=os.urandom(16).hex(), created=created)
        except BaseException:
            file.close()
            raise
        self._renderer = self._make_renderer(self._record)
        self._state = ChainState.genesis()
        self._adopt(file, first_sequence=1, first_chain=GENESIS_CHAIN)
        details.update(trail_id=self._record.trail_id, genesis=True, continued_from=0)
        if previous is not None:
            details["previous"] = previous

    def _new_segment(self, record: AnchorRecord | None, files: list[Path],
                     reason: dict[str, Any]) -> dict[str, Any]:
        """Move the trail's files aside (kept for inspection) and begin a new trail."""
        problem = "none found"
        if record is not None and files:
            try:
                self._record = record
                self._anchor.use(record)
                file = (ActiveFile.open(self._active_path)
                        if is_regular_file(self._active_path) else None)
                try:
                    self._check(self._active_path, file)
                finally:
                    if file is not None:
                        file.close()
            except (AuditTrailRefused, OSError) as error:
                problem = getattr(error, "problem", str(error))
        elif files:
            problem = "the token held no anchor for this node"
        elif record is not None and record.sequence:
            problem = "the trail's files were missing"
        stamp = format_timestamp(self._clock()).replace(":", "")
        aside = self._settings.directory / f"segment-before-{stamp}"
        if files:
            aside.mkdir(mode=0o700)
            for path in files:
                os.rename(path, aside / path.name)
            fsync_directory(self._settings.directory)
        previous: dict[str, Any] = {
            **reason, "problem": problem[:900],
            "trail_id": record.trail_id if record else None,
            "recorded_sequence": record.sequence if record else None,
            "recorded_chain": record.chain if record else None,
            "files_moved_to": aside.name if files else None,
        }
        details: dict[str, Any] = {}
        self._begin(details, previous=previous)
        return previous

    def _make_renderer(self, record: AnchorRecord) -> EntryRenderer:
        return EntryRenderer(trail_id=record.trail_id, node=record.node,
                             sealer=self._anchor.seal)

    def _adopt(self, file: ActiveFile, *, first_sequence: int, first_chain: str) -> None:
        self._file = file
        self._known = (file.identity, file.size)
        self._first_sequence = first_sequence
        self._first_chain = first_chain  # the chain before the file's first entry

    @property
    def new_trail(self) -> bool:
        """The trail began with this start: its genesis is not sealed by a checkpoint yet."""
        return self._record is not None and self._record.sequence == 0

    def _create_file(self) -> None:
        """A new active file during the run; it starts with a checkpoint (its anchor)."""
        self._adopt(ActiveFile.open(self._active_path, new=True),
                    first_sequence=self._state.sequence + 1, first_chain=self._state.chain)
        if self._state.sequence:
            self.commit([], checkpoint="file-start", required=True)

    def recover(self) -> dict[str, Any]:
        """Reopen after a failed write: the same file (the same inode) cut back to what was
        durable, or a new one. Whatever else is at the path (another file, a symlink, a
        directory) is moved aside: the trail never continues in a file it did not write."""
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            status = os.lstat(self._active_path)
        except FileNotFoundError:
            self._create_file()
            return {"file": "recreated: it was missing"}
        if stat.S_ISDIR(status.st_mode):  # not ours to move: stay failed until it is gone
            raise AuditFileError(f"{self._active_path} is a directory")
        if self._known is not None and FileIdentity.of(status) == self._known[0]:
            file = ActiveFile.open(self._active_path)
            try:
                if file.identity != self._known[0]:  # swapped between lstat and open
                    raise AuditFileError(f"{self._active_path} was replaced")
                if file.size > self._known[1]:
                    file.truncate(self._known[1])  # what the failed write left behind
                self._adopt(file, first_sequence=self._first_sequence,
                            first_chain=self._first_chain)
            except BaseException:
                file.close()
                raise
            return {"file": "reopened"}
        # Not the file we wrote: keep it for inspection and start a new one.
        stamp = format_timestamp(self._clock()).replace(":", "")
        aside = self._active_path.with_name(f"{ACTIVE_NAME}.displaced-{stamp}")
        os.rename(self._active_path, aside)
        self._create_file()
        return {"file": f"recreated: an unknown file was moved to {aside.name}"}

    # Writing

    def commit(self, entries: Sequence[dict[str, Any]], *, checkpoint: str | None,
               required: bool = False) -> bool:
        """Append `entries` (and a checkpoint after them) durably; True if a checkpoint was."""
        if self._file is None or self._renderer is None:
            raise OSError("the audit file is not open")
        renderer = self._renderer
        lines, state = renderer.render(entries, after=self._state, seal=checkpoint is None)
        sealed = False
        if checkpoint is not None:
            entry = self._checkpoint_entry(checkpoint, state, required=required)
            if entry is not None:
                more, state = renderer.render([entry], after=state, seal=True)
                lines += more
                sealed = True
            elif entries:  # no checkpoint after all: the entries end the write
                lines, state = renderer.render(entries, after=self._state, seal=True)
        if not lines:
            return False
        data = b"".join(lines)
        started = time.perf_counter()
        self._file.append(data)
        seconds = time.perf_counter() - started
        # Durable now: the chain state moves before anything else can fail.
        self._state = state
        self._known = (self._file.identity, self._file.size)
        if sealed:
            self._unsealed, self._last_checkpoint = 0, time.monotonic()
            self.record_head()
        else:
            self._unsealed += len(lines)
        self._report(seconds=seconds, entries=len(lines), sealed=sealed)
        if self._mirror is not None:
            self._mirror(data)
        return sealed

    def _report(self, *, seconds: float, entries: int, sealed: bool) -> None:
        """Tell the observer (metrics); its failure never fails a write that is durable."""
        if self._observer is None:
            return
        try:
            self._observer.audit_written(seconds=seconds, entries=entries)
            if sealed:
                self._observer.audit_checkpointed(at=self._checkpoint_time)
        except Exception as error:
            log.warning("audit.observer_failed", error=f"{type(error).__name__}: {error}"[:200])

    def record_head(self) -> None:
        """Move the token's record to the entry just written (after it is durable, so the
        record never runs ahead of the file): after the genesis and each checkpoint. A
        failure leaves the older record: the trail still verifies; a cut after that record
        goes unseen until the next one."""
        if self._record is None:
            return
        try:
            self._record = self._anchor.record_head(
                self._record, sequence=self._state.sequence, chain=self._state.chain,
                file_sequence=self._first_sequence, file_chain=self._first_chain)
        except Exception as error:
            log.warning("audit.anchor_not_recorded", error=str(error)[:200])
            if self._observer is not None:
                self._observer.audit_failed(kind="anchor")

    def _checkpoint_entry(self, reason: str, state: ChainState, *, required: bool
                          ) -> dict[str, Any] | None:
        now = self._clock()
        moment = format_timestamp(now)
        try:
            signer = self._signer()
            sig = signer.sign(checkpoint_signed_bytes(sequence=state.sequence,
                                                      chain=state.chain, time=moment))
        except Exception as error:
            if self._observer is not None:
                self._observer.audit_failed(kind="checkpoint")
            if required:
                raise CheckpointSigningError(f"cannot sign a checkpoint: {error}") from error
            log.warning("audit.checkpoint_unsigned", error=str(error)[:200])
            self._last_checkpoint = (time.monotonic() - self._settings.checkpoint_interval_seconds
                                     + SIGNATURE_RETRY_SECONDS)
            return None
        event = AuditEvent(action=CHECKPOINT_ACTION, category="file", outcome="success",
                           reason=reason)
        entry = ecs_entry(event, event_id=new_event_id(), request={})
        entry["@timestamp"] = moment
        self._checkpoint_time = now
        entry["custody"]["checkpoint"] = {
            "sequence": state.sequence, "chain": state.chain, "time": moment,
            "keyid": signer.public_key.keyid, "sig": base64.b64encode(sig).decode("ascii"),
        }
        return entry

    def checkpoint_due(self, now: float) -> bool:
        wait = self.seconds_until_checkpoint(now)
        return wait is not None and wait <= 0

    def seconds_until_checkpoint(self, now: float) -> float | None:
        if not self._unsealed:
            return None
        return self._last_checkpoint + self._settings.checkpoint_interval_seconds - now

    def rotate_if_full(self) -> None:
        """Seal the active file, rename it `audit.<first>-<last>.log`, start a new one."""
        if self._file is None or self._file.size < self._settings.max_file_bytes:
            return
        if not self.commit([], checkpoint="rotate"):
            return  # the checkpoint could not be signed: rotate later
        rotated = self._active_path.with_name(rotated_name(self._first_sequence,
                                                           self._state.sequence))
        os.rename(self._active_path, rotated)
        fsync_directory(self._settings.directory)
        self._file.close()
        self._file = None
        self._create_file()
        log.info("audit.rotated", file=rotated.name)

    def close(self, *, seal: bool) -> None:
        if self._file is None:
            return
        if seal:
            try:
                self.commit([], checkpoint="close")
            except Exception as error:
                log.warning("audit.close_unsealed", error=str(error)[:200])
        self._file.close()
        self._file = None

