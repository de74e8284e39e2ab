"""The writing half of the trail: chain state, files, checkpoints, rotation.

Everything here runs in the thread that holds the trail's lead (one at a time; and in
the constructor of the trail, before any caller), so nothing here takes a lock. A
method that cannot make its change durable raises, and leaves the chain state as it was.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from custody_core.audit_trail import CHECKPOINT_ACTION, checkpoint_signed_bytes
from custody_core.signer import Signer
from custody_server.audit.entry import ecs_entry, format_timestamp, new_event_id
from custody_server.audit.files import (
    ACTIVE_NAME,
    ActiveFile,
    AuditFileError,
    FileIdentity,
    fsync_directory,
    last_entry_of,
    newest_rotated,
    rotated_name,
)
from custody_server.audit.render import ChainState, EntryRenderer
from custody_server.audit.settings import AuditSettings
from custody_server.audit_events import AuditEvent

log = structlog.get_logger("custody.audit")

CheckpointSigner = Callable[[], Signer]
SIGNATURE_RETRY_SECONDS = 5.0


class AuditObserver(Protocol):
    """What the trail reports for metrics."""

    def audit_written(self, *, seconds: float, entries: int) -> None: ...

    def audit_failed(self, *, kind: str) -> None: ...


class CheckpointSigningError(RuntimeError):
    """A checkpoint that a new file must start with could not be signed."""


class TrailWriter:
    def __init__(self, *, settings: AuditSettings, checkpoint_signer: CheckpointSigner,
                 clock: Callable[[], datetime], observer: AuditObserver | None,
                 mirror: Callable[[bytes], None] | None) -> None:
        self._settings = settings
        self._active_path = settings.directory / ACTIVE_NAME
        self._signer = checkpoint_signer
        self._clock = clock
        self._observer = observer
        self._mirror = mirror
        self._renderer = EntryRenderer()
        self._state = ChainState.genesis()
        self._file: ActiveFile | None = None
        self._known: tuple[FileIdentity, int] | None = None  # the file and size last durable
        self._first_sequence = 1  # of the active file
        self._unsealed = 0  # entries after the last checkpoint
        self._last_checkpoint = time.monotonic()

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

    def start(self) -> dict[str, Any]:
        """Continue the chain from the last entry on disk; details for the audit-open entry."""
        details: dict[str, Any] = {"file": str(self._active_path)}
        if not self._active_path.exists():
            self._state = self._state_from_rotated()
            self._create_file()
        else:
            file = ActiveFile.open(self._active_path)
            tail = file.read_tail()
            if tail.torn:
                # A line cut short by a crash (kill -9, power loss) during a write: its
                # write never returned, so no signature it records was ever returned.
                file.truncate(tail.size)
                details["torn_tail"] = {"bytes": len(tail.torn),
                                        "sha256": hashlib.sha256(tail.torn).hexdigest()}
                log.warning("audit.torn_tail_dropped", bytes=len(tail.torn))
            self._adopt(file, last=tail.last_entry, first=tail.first_entry)
        details["continued_from"] = self._state.sequence
        return details

    def _adopt(self, file: ActiveFile, *, last: dict[str, Any] | None,
               first: dict[str, Any] | None) -> None:
        self._file = file
        self._known = (file.identity, file.size)
        if last is not None and first is not None:
            self._state = ChainState.of_entry(last)
            self._first_sequence = first["event"]["sequence"]
            return
        if self._state.sequence == 0:  # an empty file at start-up
            self._state = self._state_from_rotated()
        self._first_sequence = self._state.sequence + 1
        if self._state.sequence:
            self.commit([], checkpoint="file-start", required=True)

    def _state_from_rotated(self) -> ChainState:
        newest = newest_rotated(self._settings.directory)
        last = last_entry_of(newest) if newest else None
        return ChainState.of_entry(last) if last else ChainState.genesis()

    def _create_file(self) -> None:
        """A new active file; it starts with a checkpoint unless the chain starts here."""
        self._file = ActiveFile.open(self._active_path)
        self._adopt(self._file, last=None, first=None)

    def recover(self) -> dict[str, Any]:
        """Reopen after a failed write: the file cut back to what was durable, or a new one."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._active_path.exists():
            self._create_file()
            return {"file": "recreated: it was missing"}
        file = ActiveFile.open(self._active_path)
        try:
            if self._known and file.identity == self._known[0] and file.size > self._known[1]:
                file.truncate(self._known[1])  # what the failed write left behind
            tail = file.read_tail()
        except AuditFileError:
            tail = None  # not a file of this trail
        except BaseException:
            file.close()
            raise
        if tail and (tail.last_entry is None
                     or ChainState.of_entry(tail.last_entry) == self._state):
            try:
                if tail.torn:
                    file.truncate(tail.size)
                self._adopt(file, last=tail.last_entry, first=tail.first_entry)
            except BaseException:
                file.close()
                raise
            return {"file": "reopened"}
        # Not the file we wrote: keep it for inspection and start a new one.
        file.close()
        stamp = format_timestamp(self._clock()).replace(":", "")
        aside = self._active_path.with_name(f"{ACTIVE_NAME}.displaced-{stamp}")
        os.rename(self._active_path, aside)
        self._create_file()
        return {"file": f"recreated: an unknown file was moved to {aside.name}"}

    # Writing

    def commit(self, entries: Sequence[dict[str, Any]], *, checkpoint: str | None,
               required: bool = False) -> bool:
        """Append `entries` (and a checkpoint after them) durably; True if a checkpoint was."""
        if self._file is None:
            raise OSError("the audit file is not open")
        lines, state = self._renderer.render(entries, after=self._state)
        sealed = False
        if checkpoint is not None:
            entry = self._checkpoint_entry(checkpoint, state, required=required)
            if entry is not None:
                more, state = self._renderer.render([entry], after=state)
                lines += more
                sealed = True
        if not lines:
            return False
        data = b"".join(lines)
        started = time.perf_counter()
        self._file.append(data)
        if self._observer is not None:
            self._observer.audit_written(seconds=time.perf_counter() - started,
                                         entries=len(lines))
        self._state = state
        self._known = (self._file.identity, self._file.size)
        if sealed:
            self._unsealed, self._last_checkpoint = 0, time.monotonic()
        else:
            self._unsealed += len(lines)
        if self._mirror is not None:
            self._mirror(data)
        return sealed

    def _checkpoint_entry(self, reason: str, state: ChainState, *, required: bool
                          ) -> dict[str, Any] | None:
        moment = format_timestamp(self._clock())
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

