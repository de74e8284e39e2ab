"""The lock that makes a lifecycle change happen once, even with several replicas.

Every change (create, rotate, retire, destroy, scheduled work) runs as: take the guard,
read the alias's state fresh from the token, decide, change the token, write the record,
release. Two replicas that decide at the same moment are serialized, and the second one
reads what the first one wrote: a due rotation is done by one of them, once.

The guard is an exclusive `flock` on a lock file plus a thread lock (flock does not
order threads sharing one open file). The kernel drops a flock when its process dies, so
a crashed replica never leaves the lock held.

Where the lock file lives decides what it guards:
- SoftHSM (the embedded default and the tests): beside the token directory
  (`<directories.tokendir>/../.<tokendir name>.custody-lifecycle.lock`, found through
  SOFTHSM2_CONF; inside the token directory if its parent is not writable), so every
  process using that token, whatever its state directory, takes the same lock.
- A network HSM shared by replicas on several hosts: set `lifecycle.lock_file` to a file
  on storage all of them lock consistently, or enable the scheduler on one replica only
  (`lifecycle.scheduler = false` on the others) and send admin calls to that one. Without
  either, two replicas may rotate the same due alias at the same moment; the
  deterministic label of the new version then makes one of them fail with "already
  exists" on most HSMs, but PKCS#11 has no atomic create-if-absent, so that is not a
  guarantee. See docs/KEYS.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from custody_server.keystore import KeystoreUnavailableError

LOCK_SUFFIX = ".custody-lifecycle.lock"
_TOKENDIR = re.compile(r"^\s*directories\.tokendir\s*=\s*(.+?)\s*$", re.MULTILINE)


class LifecycleBusyError(KeystoreUnavailableError):
    """Another process held the lifecycle lock for too long (UNAVAILABLE: retry later)."""


class LifecycleGuard(Protocol):
    def hold(self) -> AbstractContextManager[None]:
        """Hold the lock for one lifecycle change."""
        ...

    @property
    def description(self) -> str:
        """What the lock covers, for the operator."""
        ...


class ProcessGuard:
    """Serializes changes within this process only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return "this process only (no lock file)"

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            yield


class FileLockGuard:
    """An exclusive flock on `path` (created 0600 if missing), taken within `timeout` s."""

    def __init__(self, path: Path, *, timeout: float = 30.0, poll: float = 0.01) -> None:
        self.path = path
        self._timeout = timeout
        self._poll = poll
        self._thread_lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"flock on {self.path}"

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._thread_lock.acquire(timeout=self._timeout):
            raise LifecycleBusyError("a key lifecycle change is already running: retry later")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                self._flock(fd)
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            self._thread_lock.release()

    def _flock(self, fd: int) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LifecycleBusyError(
                        "another replica holds the key lifecycle lock: retry later"
                    ) from None
                time.sleep(self._poll)


def softhsm_token_dir(conf_path: Path) -> Path | None:
    """`directories.tokendir` of a SoftHSM2 config file, or None if it names none."""
    try:
        match = _TOKENDIR.search(conf_path.read_text(encoding="utf-8"))
    except OSError:
        return None
    return Path(match[1]) if match else None


def default_guard(lock_file: Path | None = None) -> LifecycleGuard:
    """`lock_file` if given; else a lock in the SoftHSM token directory; else this process."""
    if lock_file is not None:
        return FileLockGuard(lock_file)
    conf = os.environ.get("SOFTHSM2_CONF")
    token_dir = softhsm_token_dir(Path(conf)) if conf else None
    if token_dir is not None and token_dir.is_dir():
        return FileLockGuard(softhsm_lock_file(token_dir))
    return ProcessGuard()


def softhsm_lock_file(token_dir: Path) -> Path:
    """The lock file for a SoftHSM token directory: beside it (SoftHSM and tools that
    look inside the directory never see it), or inside it if its parent is read-only."""
    token_dir = token_dir.resolve()
    if os.access(token_dir.parent, os.W_OK):
        return token_dir.parent / f".{token_dir.name}{LOCK_SUFFIX}"
    return token_dir / LOCK_SUFFIX
