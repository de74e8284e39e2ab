"""Reusing a digest for a file that has not changed since it was hashed (git's stat rule).

`custody run -m . -p .` hashes the tree before the command and again after it; most files
are untouched in between. A digest is reused for the products only if the file's
identity and metadata (device, inode, size, mtime and ctime in nanoseconds) are exactly
what they were when its bytes were read. Any write, truncation, rename over it or
`touch` changes ctime, which only the kernel sets (not utime(2)).

The "racy" case is handled as git handles it: a file whose mtime or ctime is not older
than the recording's start minus a safety margin is never reused, because a change
within the same timestamp tick would not show. The cache lives in one process only
(materials to products of one run, or one inspection), never on disk.
"""

from __future__ import annotations

import os
import stat
import time

RACY_MARGIN_NS = 2_000_000_000  # larger than any filesystem's timestamp granularity we meet

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of a regular file
_Signature = tuple[int, int, int, int, int]


class DigestCache:
    """Digests by path, valid while the file's stat signature is unchanged."""

    def __init__(self, *, now_ns: int | None = None) -> None:
        started = time.time_ns() if now_ns is None else now_ns
        self._trusted_before_ns = started - RACY_MARGIN_NS
        self._entries: dict[str, tuple[_Signature, bytes]] = {}
        self.hits = 0

    def remember(self, path: str, status: os.stat_result, digest: bytes) -> None:
        """Keep `digest` of `path`, given the fstat taken before its bytes were read."""
        mtime_ns, ctime_ns = status.st_mtime_ns, status.st_ctime_ns
        if mtime_ns >= self._trusted_before_ns or ctime_ns >= self._trusted_before_ns:
            return  # racy: a change in the same tick would leave the signature as it is
        if stat.S_ISREG(status.st_mode):  # built inline: this runs once per file
            self._entries[path] = ((status.st_dev, status.st_ino, status.st_size, mtime_ns,
                                    ctime_ns), digest)  # one dict store: atomic under the GIL

    def lookup(self, path: str) -> str | None:
        """The hex digest of `path` if it is known and the file is as it was."""
        entry = self._entries.get(path)
        if entry is None:
            return None
        try:
            status = os.stat(path)
        except OSError:
            return None
        # built inline: this runs once per file of the products
        if not stat.S_ISREG(status.st_mode) or entry[0] != (
                status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns,
                status.st_ctime_ns):
            return None
        self.hits += 1  # for the log line only: a lost increment between threads is harmless
        return entry[1].hex()
