"""Hashing many files with several threads: same digests, same order, errors, no leftovers."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from custody_client.digest_cache import DigestCache
from custody_client.errors import RecordingError
from custody_client.hashing import BATCH_FILES, sha256_files


def make_files(root: Path, count: int) -> list[str]:
    paths = []
    for index in range(count):
        path = root / f"f{index:04}"
        path.write_bytes(f"file {index}\n".encode() * (index % 7 * 500 + 1))
        paths.append(str(path))
    return paths


def expected(paths: list[str]) -> list[str]:
    return [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in paths]


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_any_number_of_threads_gives_the_digests_in_order(tmp_path: Path, workers: int) -> None:
    paths = make_files(tmp_path, 10 * BATCH_FILES + 7)
    before = set(threading.enumerate())
    done: list[int] = []
    assert list(sha256_files(paths, workers=workers, progress=done.append)) == expected(paths)
    assert done == sorted(done) and done[-1] == len(paths)
    assert not set(threading.enumerate()) - before  # no thread started here is left


def test_threads_fill_the_digest_cache_as_one_thread_does(tmp_path: Path) -> None:
    paths = make_files(tmp_path, 5 * BATCH_FILES)
    cache = DigestCache(now_ns=2**62)  # every file is old enough to be trusted
    first = list(sha256_files(paths, workers=3, cache=cache))
    assert list(sha256_files(paths, workers=3, cache=cache)) == first == expected(paths)
    assert cache.hits == len(paths)  # one thread per batch: no increment is lost here


@pytest.mark.parametrize("position", [0, 3 * BATCH_FILES + 5, 8 * BATCH_FILES - 1])
def test_an_unreadable_file_is_raised_in_order_and_the_threads_end(tmp_path: Path,
                                                                   position: int) -> None:
    paths = make_files(tmp_path, 8 * BATCH_FILES)
    Path(paths[position]).unlink()
    before = set(threading.enumerate())
    digests = sha256_files(paths, workers=3)
    got: list[str] = []
    with pytest.raises(RecordingError, match=f"cannot read .*f{position:04}: No such file"):
        for digest in digests:
            got.append(digest)
    # everything before its batch (a batch's digests come whole or not at all), nothing after
    assert got == expected(paths[:position - position % BATCH_FILES])
    assert not set(threading.enumerate()) - before  # no thread started here is left


def test_a_reader_that_stops_early_leaves_no_thread_behind(tmp_path: Path) -> None:
    paths = make_files(tmp_path, 20 * BATCH_FILES)
    before = set(threading.enumerate())
    digests = sha256_files(paths, workers=4)
    assert next(digests) == expected(paths[:1])[0]
    digests.close()  # type: ignore[attr-defined]
    assert not set(threading.enumerate()) - before  # no thread started here is left
