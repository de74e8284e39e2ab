"""The audit files on disk: the active file, durable appends, torn tails, rotated files.

The active file is `audit.log`; a rotated file is `audit.<first>-<last>.log` with the
first and last sequence numbers it holds (zero-padded, so names sort in chain order).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custody_core.audit_trail import EntryError, parse_entry

ACTIVE_NAME = "audit.log"
LOCK_NAME = ".audit.lock"  # hidden: `custody audit verify DIR/*` skips it
_ROTATED = re.compile(r"^audit\.(?P<first>\d{12})-(?P<last>\d{12})\.log$")
_TAIL_WINDOW = 1 << 20  # an entry is far smaller than this


class AuditFileError(OSError):
    """The audit file cannot be used: not ours, corrupt, or not where we left it."""


@dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileIdentity:
        return cls(device=status.st_dev, inode=status.st_ino)


@dataclass(frozen=True)
class Tail:
    """What an existing file holds at its ends; `torn` is an unfinished last line."""

    first_entry: dict[str, Any] | None
    last_entry: dict[str, Any] | None
    torn: bytes
    size: int  # the size without the torn bytes


class ActiveFile:
    """The open active file. Only the writer thread touches it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        status = os.fstat(fd)
        self.identity = FileIdentity.of(status)
        self.size = status.st_size  # bytes known to be durable (after a rollback too)

    @classmethod
    def open(cls, path: Path, *, new: bool = False) -> ActiveFile:
        """Open `path` for appending, creating it if missing (`new`: it must not exist),
        and making a creation durable. Only a regular file, never through a symlink:
        whoever can write the directory must not redirect the trail (to /dev/null, or
        over another file).

        O_DSYNC: a write returns once its data, and the file size that reaches it, are
        on disk, as write + fdatasync would, in one system call instead of two.
        """
        existed = os.path.lexists(path)
        flags = (os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_DSYNC
                 | os.O_NOFOLLOW | (os.O_EXCL if new else 0))
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as error:
            raise AuditFileError(f"{path} cannot be opened as the trail's file "
                                 f"({error.strerror}): is it a symlink or not a file?"
                                 ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise AuditFileError(f"{path} is not a regular file")
            if not existed:
                fsync_directory(path.parent)
            return cls(path, fd)
        except BaseException:
            os.close(fd)
            raise

    def read_tail(self) -> Tail:
        """The first and last complete entries, and a torn last line if there is one."""
        size = os.fstat(self._fd).st_size
        window = min(size, _TAIL_WINDOW)
        end = os.pread(self._fd, window, size - window)
        cut = end.rfind(b"\n") + 1  # just after the last line break; 0: none
        torn = end[cut:]
        if cut == 0:
            if size > window:
                raise AuditFileError(f"{self.path}: no line break in its last {window} bytes")
            return Tail(first_entry=None, last_entry=None, torn=torn, size=0)
        start = end.rfind(b"\n", 0, cut - 1) + 1
        if start == 0 and size > window:
            raise AuditFileError(f"{self.path}: its last line is longer than {window} bytes")
        first_line = os.pread(self._fd, window, 0).split(b"\n", 1)[0]
        return Tail(first_entry=_entry(self.path, first_line),
                    last_entry=_entry(self.path, end[start:cut - 1]),
                    torn=torn, size=size - len(torn))

    def read_all(self, *, limit: int) -> bytes:
        """The whole file; AuditFileError when it is larger than `limit` (the trail never
        writes a file much past its rotation size: a larger one is not its own)."""
        size = os.fstat(self._fd).st_size
        if size > limit:
            raise AuditFileError(f"{self.path} is {size} bytes, more than the trail ever "
                                 f"writes to one file ({limit}): it is not the trail's file")
        chunks, offset = [], 0
        while offset < size:
            chunk = os.pread(self._fd, min(size - offset, 1 << 24), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)
        self.size = size

    def append(self, data: bytes) -> None:
        """Write `data` at the end durably (O_DSYNC); on failure remove what was written,
        then raise."""
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if not self.still_at_path():
                raise AuditFileError(f"{self.path} was removed or replaced")
        except OSError:
            with contextlib.suppress(OSError):  # the next open truncates if this fails
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def still_at_path(self) -> bool:
        try:  # lstat: a symlink to this file in its place is not this file
            return FileIdentity.of(os.lstat(self.path)) == self.identity
        except OSError:
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _entry(path: Path, line: bytes) -> dict[str, Any]:
    try:
        return parse_entry(line)
    except EntryError as error:
        raise AuditFileError(f"{path}: an entry is not valid ({error}); move the file "
                             "aside and check it with `custody audit verify`") from None


def rotated_name(first: int, last: int) -> str:
    return f"audit.{first:012d}-{last:012d}.log"


def is_regular_file(path: Path) -> bool:
    """A regular file at `path` itself (a symlink to one is not)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def read_trail_file(path: Path, *, limit: int) -> bytes:
    """A rotated file's bytes: a regular file (not through a symlink) of at most `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise AuditFileError(f"{path} cannot be read as a file of the trail "
                             f"({error.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AuditFileError(f"{path} is not a regular file")
        return ActiveFile(path, fd).read_all(limit=limit)
    finally:
        os.close(fd)


def trail_files(directory: Path) -> list[Path]:
    """The files of the trail in `directory`: rotated ones in order, then the active one,
    and any file the server once moved aside (kept for inspection)."""
    if not directory.is_dir():
        return []
    names = sorted(p.name for p in directory.iterdir()
                   if stat.S_ISREG(p.lstat().st_mode))  # a symlink is not a file of the trail
    rotated = [n for n in names if _ROTATED.match(n)]
    displaced = [n for n in names if n.startswith(f"{ACTIVE_NAME}.displaced-")]
    active = [ACTIVE_NAME] if ACTIVE_NAME in names else []
    return [directory / n for n in (*rotated, *active, *displaced)]


def newest_rotated(directory: Path) -> Path | None:
    """The rotated file with the highest sequence numbers, if any."""
    best: tuple[int, Path] | None = None
    for path in directory.iterdir():
        match = _ROTATED.match(path.name)
        if match and (best is None or int(match["last"]) > best[0]):
            best = (int(match["last"]), path)
    return best[1] if best else None


class TrailLock:
    """An exclusive lock on the trail's directory: one writer per trail.

    flock on `audit.lock`, held while the server runs and released by the kernel when
    the process ends (kill -9 too). The file holds the holder's pid, for the message.
    """

    def __init__(self, directory: Path) -> None:
        path = directory / LOCK_NAME
        try:  # never through a symlink: the pid write must not land on another file
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                         | os.O_NONBLOCK, 0o600)
        except OSError as error:
            raise AuditFileError(f"{path} cannot be opened as the trail's lock "
                                 f"({error.strerror}): is it a symlink?") from None
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
                raise AuditFileError(f"{path} is not a plain file of its own (a FIFO, "
                                     "device or hard link?): remove it")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise AuditFileError(f"another custody-server (pid {holder}) writes the audit "
                                 f"trail in {directory}: one server per trail (give each "
                                 "replica its own [audit] directory)") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
