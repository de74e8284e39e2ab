"""SHA-256 of many files, in parallel, with large reads.

hashlib releases the GIL while it hashes a large buffer and the kernel reads without it,
so a few threads keep the disk and the cores busy. Files are handed out in small batches
(one future per file costs more than hashing a small file) and results come back in
order, with a bounded number of batches in flight, so a caller can stream them.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from custody_client.digest_cache import DigestCache
from custody_client.errors import RecordingError

READ_SIZE = 1 << 20  # 1 MiB reads: far fewer syscalls than in-toto's 4 KiB
BATCH_FILES = 64
_PARALLEL_THRESHOLD = 2 * BATCH_FILES  # below this, threads cost more than they save

Progress = Callable[[int], None]


def default_workers() -> int:
    """Threads pay off with cores to spare: with two or fewer, the per-file work that holds
    the GIL makes them slower than one thread (measured: see
    docs/PERFORMANCE.md#hashing-threads)."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(8, cores)


def sha256_file(path: str, cache: DigestCache | None = None) -> str:
    """Hex SHA-256 of a file's bytes; RecordingError if it cannot be read.

    With a cache, an unchanged file's known digest is returned without reading it, and a
    file that is read is remembered (with the fstat taken before reading).
    """
    if cache is not None and (known := cache.lookup(path)) is not None:
        return known
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise RecordingError(f"cannot read {path}: {error.strerror}") from None
    try:
        status = os.fstat(fd) if cache is not None else None
        digest = hashlib.sha256()
        while chunk := os.read(fd, READ_SIZE):
            digest.update(chunk)
    except OSError as error:
        raise RecordingError(f"cannot read {path}: {error.strerror}") from None
    finally:
        os.close(fd)
    if cache is not None and status is not None:
        cache.remember(path, status, digest.digest())
    return digest.hexdigest()


def _hash_batch(paths: Sequence[str], cache: DigestCache | None) -> list[str]:
    return [sha256_file(path, cache) for path in paths]


def sha256_files(
    paths: Sequence[str],
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    cache: DigestCache | None = None,
) -> Iterator[str]:
    """Yield the hex SHA-256 of each path, in the order given.

    `progress` is called in the caller's thread with the number of files done so far.
    """
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(paths) < _PARALLEL_THRESHOLD:
        for done, path in enumerate(paths, start=1):
            yield sha256_file(path, cache)
            if progress is not None and done % BATCH_FILES == 0:
                progress(done)
        if progress is not None:
            progress(len(paths))
        return
    batches = (paths[i : i + BATCH_FILES] for i in range(0, len(paths), BATCH_FILES))
    max_in_flight = 4 * workers
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="custody-hash") as pool:
        pending: deque[Future[list[str]]] = deque()
        try:
            for batch in batches:
                pending.append(pool.submit(_hash_batch, batch, cache))
                if len(pending) >= max_in_flight:
                    digests = pending.popleft().result()
                    done += len(digests)
                    yield from digests
                    if progress is not None:
                        progress(done)
            while pending:
                digests = pending.popleft().result()
                done += len(digests)
                yield from digests
                if progress is not None:
                    progress(done)
        finally:
            for future in pending:
                future.cancel()
