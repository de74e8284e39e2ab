"""The digest cache between materials and products: reused only for unchanged files."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from custody_client.digest_cache import DigestCache
from custody_client.recording import RecordingOptions, record_artifacts


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path, count: int = 200) -> None:
    for index in range(count):
        (root / f"f{index:03}.txt").write_bytes(f"content {index}\n".encode())


def settled_cache() -> DigestCache:
    """A cache that treats files made a moment ago as old (as if the step began later)."""
    return DigestCache(now_ns=time.time_ns() + 10_000_000_000)


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    tree(tmp_path)
    cache = settled_cache()
    materials = record_artifacts([str(tmp_path)], RecordingOptions(), cache=cache)
    assert cache.hits == 0
    products = record_artifacts([str(tmp_path)], RecordingOptions(), cache=cache)
    assert products == materials
    assert cache.hits == 200


def test_a_changed_file_is_read_again_even_with_mtime_and_size_restored(tmp_path: Path) -> None:
    tree(tmp_path)
    cache = settled_cache()
    record_artifacts([str(tmp_path)], RecordingOptions(), cache=cache)
    target = tmp_path / "f007.txt"
    before = target.stat()
    target.write_bytes(b"CONTENT 007\n")  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back; ctime moves
    products = record_artifacts([str(tmp_path)], RecordingOptions(), cache=cache)
    assert products[str(tmp_path / "f007.txt")] == {"sha256": sha(b"CONTENT 007\n")}
    assert cache.hits == 199


def test_a_file_replaced_by_rename_is_read_again(tmp_path: Path) -> None:
    tree(tmp_path, count=3)
    cache = settled_cache()
    record_artifacts([str(tmp_path)], RecordingOptions(), cache=cache)
    replacement = tmp_path / "new"
    replacement.write_bytes(b"content 001\n")  # same size and bytes, another inode
    replacement.replace(tmp_path / "f001.txt")
    (tmp_path / "f002.txt").write_bytes(b"changed\n")
    products = record_artifacts([str(tmp_path)], RecordingOptions(), cache=cache)
    assert products[str(tmp_path / "f002.txt")] == {"sha256": sha(b"changed\n")}
    assert cache.hits == 1  # only f000 is as it was


def test_files_changed_in_the_last_moments_are_never_trusted(tmp_path: Path) -> None:
    tree(tmp_path, count=10)
    cache = DigestCache()  # the files' ctime is "now": a change in the same tick could hide
    record_artifacts([str(tmp_path)], RecordingOptions(), cache=cache)
    record_artifacts([str(tmp_path)], RecordingOptions(), cache=cache)
    assert cache.hits == 0


def test_without_a_cache_nothing_is_remembered(tmp_path: Path) -> None:
    tree(tmp_path, count=10)
    first = record_artifacts([str(tmp_path)], RecordingOptions())
    assert record_artifacts([str(tmp_path)], RecordingOptions()) == first


def test_only_regular_files_are_remembered_or_reused(tmp_path: Path) -> None:
    cache = settled_cache()
    directory = tmp_path / "d"
    directory.mkdir()
    cache.remember(str(directory), os.stat(directory), bytes(32))
    assert cache.lookup(str(directory)) is None
    target = tmp_path / "f"
    target.write_bytes(b"x")
    cache.remember(str(target), os.stat(target), bytes(32))
    assert cache.lookup(str(target)) == "00" * 32
    target.unlink()
    target.mkdir()  # the path is a directory now
    assert cache.lookup(str(target)) is None
    assert cache.hits == 1
