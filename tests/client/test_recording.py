"""Artifact recording: the same artifacts and digests as in-toto's record_artifacts_as_dict."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from in_toto.exceptions import PrefixError
from in_toto.runlib import record_artifacts_as_dict

from custody_client.errors import RecordingError
from custody_client.hashing import sha256_files
from custody_client.recording import (
    RecordingOptions,
    iter_artifacts,
    plan_files,
    record_artifacts,
)


def make_tree(root: Path) -> None:
    files = {
        "foo.py": b"print('foo')\n",
        "README": b"readme\n",
        "src/app.py": b"app\n",
        "src/lib/util.py": b"util\n",
        "src/lib/util.pyc": b"\x00compiled",
        "src/notes~": b"backup",
        "src/.git/HEAD": b"ref: main\n",
        ".git/config": b"[core]\n",
        "build.1a2b3c4d.link": b"{}",
        ".step.link-unfinished": b"{}",
        "docs/guide.md": b"# guide\n",
        "docs/deep/er/est.txt": b"deep\n",
        "empty/.keep": b"",
        "big.bin": os.urandom(3 * (1 << 20) + 17),  # several 1 MiB reads
        "weird name with spaces.txt": b"spaces\n",
        "back\\slash.txt": b"backslash\n",
    }
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    for index in range(300):  # enough files for the parallel path
        (root / "many").mkdir(exist_ok=True)
        (root / "many" / f"f{index:03}.txt").write_bytes(f"file {index}\n".encode() * index)
    (root / "link-to-foo.py").symlink_to("foo.py")
    (root / "broken-link").symlink_to("does-not-exist")
    (root / "src" / "docs-link").symlink_to("../docs", target_is_directory=True)
    os.mkfifo(root / "a-fifo")


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root)
    monkeypatch.chdir(root)
    return root


def reference(paths: Sequence[str], **kwargs: object) -> dict[str, object]:
    return dict(record_artifacts_as_dict(list(paths), **kwargs))


def ours(paths: Sequence[str], **kwargs: object) -> dict[str, dict[str, str]]:
    return record_artifacts(paths, RecordingOptions(**kwargs))  # type: ignore[arg-type]


CASES = [
    (["."], {}),
    (["foo.py", "src", "docs/"], {}),
    (["./src/../foo.py", "src//lib"], {}),
    (["src"], {"lstrip_paths": ["src/"]}),
    (["."], {"lstrip_paths": ["many/", "docs/deep/"]}),
    (["."], {"exclude_patterns": ["many/", "*.md", "!docs/guide.md"]}),
    (["."], {"exclude_patterns": ["*.txt", "!many/f00*"]}),
    (["."], {"exclude_patterns": [""]}),  # a blank pattern: nothing excluded
    (["missing", "foo.py"], {}),
    (["link-to-foo.py", "broken-link", "a-fifo"], {}),
    (["dir:src", "dir:empty", "foo.py"], {}),
    (["file:foo.py", "file:src"], {}),
    (["dir:src", "dir:docs"], {"lstrip_paths": ["d"]}),
]


@pytest.mark.parametrize("paths,options", CASES, ids=lambda v: repr(v))
def test_same_artifacts_as_reference(tree: Path, paths: list[str],
                                     options: dict[str, object]) -> None:
    expected = reference(paths, follow_symlink_dirs=True, **options)
    got = ours(paths, **{k: tuple(v) if isinstance(v, list) else v
                         for k, v in options.items()})
    assert got == expected
    assert len(got) > 0 or paths == ["missing"]


def test_symlinked_directories_are_followed_or_not_as_asked(tree: Path) -> None:
    followed = ours(["src"])
    assert "src/docs-link/guide.md" in followed
    assert followed == reference(["src"], follow_symlink_dirs=True)
    not_followed = ours(["src"], follow_symlink_dirs=False)
    assert not any(name.startswith("src/docs-link") for name in not_followed)
    assert not_followed == reference(["src"], follow_symlink_dirs=False)


def test_base_path_records_relative_to_it(tree: Path, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    got = ours(["src", "foo.py"], base_path=str(tree))
    assert got == reference(["src", "foo.py"], base_path=str(tree), follow_symlink_dirs=True)
    assert "src/app.py" in got
    assert Path.cwd() == tmp_path  # unlike the reference, no chdir, not even for a moment


def test_digests_are_sha256_of_the_content(tree: Path) -> None:
    got = ours(["big.bin", "link-to-foo.py"])
    assert got["big.bin"] == {"sha256": hashlib.sha256((tree / "big.bin").read_bytes()).hexdigest()}
    assert got["link-to-foo.py"]["sha256"] == hashlib.sha256(b"print('foo')\n").hexdigest()


def test_default_excludes_drop_links_git_pyc_and_backups(tree: Path) -> None:
    names = set(ours(["."]))
    assert "foo.py" in names and "many/f299.txt" in names
    for excluded in ("build.1a2b3c4d.link", ".step.link-unfinished", ".git/config",
                     "src/.git/HEAD", "src/lib/util.pyc", "src/notes~"):
        assert excluded not in names


def test_backslashes_become_slashes_like_the_reference(tree: Path) -> None:
    assert "back/slash.txt" in ours(["."])


def test_lstrip_clash_is_an_error_like_the_reference_prefix_error(tree: Path) -> None:
    assert ours(["src/lib", "docs/deep/er"], lstrip_paths=("src/lib/", "docs/deep/er/")) \
        == reference(["src/lib", "docs/deep/er"], lstrip_paths=["src/lib/", "docs/deep/er/"])
    (tree / "src" / "lib" / "est.txt").write_text("clash")
    with pytest.raises(PrefixError):
        reference(["src/lib", "docs/deep/er"], lstrip_paths=["src/lib/", "docs/deep/er/"])
    with pytest.raises(RecordingError, match=r"share the name 'est\.txt'"):
        ours(["src/lib", "docs/deep/er"], lstrip_paths=("src/lib/", "docs/deep/er/"))


def test_overlapping_lstrip_prefixes_are_refused(tree: Path) -> None:
    with pytest.raises(PrefixError):
        reference(["."], lstrip_paths=["src/", "src/lib/"])
    with pytest.raises(RecordingError, match="overlap"):
        RecordingOptions(lstrip_paths=("src/", "src/lib/"))


def test_dir_scheme_needs_a_directory(tree: Path) -> None:
    with pytest.raises(RecordingError, match="not a directory"):
        ours(["dir:foo.py"])


def test_a_file_that_cannot_be_read_is_an_error(tree: Path) -> None:
    files = plan_files(["foo.py", "README"], RecordingOptions())
    (tree / "foo.py").unlink()  # gone between the walk and the hashing
    with pytest.raises(RecordingError, match=r"cannot read foo\.py: No such file"):
        list(sha256_files(list(files.values())))


def test_symlink_loop_is_walked_once(tree: Path) -> None:
    (tree / "src" / "loop").symlink_to("..", target_is_directory=True)
    names = set(ours(["src"]))
    assert "src/app.py" in names
    assert "src/loop/foo.py" in names  # the parent is a new directory: walked once
    assert not any(name.startswith("src/loop/src/") for name in names)


def test_iter_artifacts_streams_each_name_once_with_progress(tree: Path) -> None:
    seen: list[tuple[int, int]] = []
    pairs = list(iter_artifacts(["many", "many/f001.txt", "foo.py"], RecordingOptions(workers=3),
                                progress=lambda done, total: seen.append((done, total))))
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)) == 301
    assert seen[-1] == (301, 301)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_ostree_ref_records_the_commit_object(tree: Path) -> None:
    (tree / "refs" / "heads").mkdir(parents=True)
    (tree / "refs" / "heads" / "main").write_text("abcdef0123\n")
    (tree / "objects" / "ab").mkdir(parents=True)
    (tree / "objects" / "ab" / "cdef0123.commit").write_bytes(b"commit object")
    assert ours(["ostree:main"]) == reference(["ostree:main"])
