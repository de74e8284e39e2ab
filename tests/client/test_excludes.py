"""Exclude patterns: the same verdicts as in-toto 3.1 itself, the reference in the venv.

The oracle is in-toto, not pathspec: each path is put to in-toto's own FileResolver, and
whole trees are recorded with its `record_artifacts_as_dict`, so the tests hold Custody to
whatever in-toto does with the patterns, whichever pathspec call it makes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from in_toto.resolver import FileResolver
from in_toto.runlib import record_artifacts_as_dict

from custody_client.errors import RecordingError
from custody_client.excludes import DEFAULT_EXCLUDE_PATTERNS, ExcludeFilter
from custody_client.recording import RecordingOptions, record_artifacts


def reference_excludes(patterns: Sequence[str], path: str) -> bool:
    with warnings.catch_warnings():  # in-toto uses pathspec's deprecated "gitwildmatch"
        warnings.simplefilter("ignore", DeprecationWarning)
        resolver = FileResolver(exclude_patterns=list(patterns))
    return bool(resolver._exclude(path))


PATHS = [
    "a.link", "x/b.link-unfinished", "step.1234abcd.link", ".git", ".git/config", "sub/.git",
    "sub/.git/HEAD", "m.pyc", "deep/er/m.pyc", "notes~", "src/notes~", "foo.py", "src/foo.py",
    "build", "build/out.o", "src/build/out.o", "top.txt", "src/top.txt", "keep.pyc",
    "src/keep.pyc", "a/b", "a/x/y/b", "ab.txt", "bb.txt", "xb.txt", "#file", "!bang",
    "dir.link/inner.txt", "../outside.txt", "/abs/path/file.txt", "./dot/file.txt",
    "space ", "trail\\ ", "deep/x/deep/y.txt", "deep/y.txt", "y.txt", "docs/api/index.md",
    "docs/guide.md", "[x].txt", "x.txt", "-b.txt",
]

# Tricky patterns: negation, "**", a trailing "/", anchoring, character classes, escapes.
PATTERN_SETS = [
    list(DEFAULT_EXCLUDE_PATTERNS),
    [],
    ["build/"],
    ["/build/"],
    ["/top.txt"],
    ["src/top.txt"],
    ["**/deep/*.txt"],
    ["deep/**"],
    ["a/**/b"],
    ["**/b"],
    ["**/build/**"],
    ["[ab]*.txt"],
    ["[!x]b.txt"],
    ["[^x]b.txt"],
    ["[a-c]b.txt"],
    ["[-a]b.txt"],
    ["\\[x\\].txt"],
    ["[[]x].txt"],
    ["\\#file", "\\!bang"],
    ["[abc"],  # invalid range: git drops the pattern
    ["*.pyc", "!keep.pyc"],
    ["!keep.pyc", "*.pyc"],
    ["*.pyc", "!/keep.pyc"],
    ["src/", "!src/foo.py"],
    ["!src/foo.py", "src/"],
    ["*", "!*/", "!*.txt"],
    ["docs/*", "!docs/api/"],
    ["*.txt", "!deep/**", "deep/x/"],
    ["*/"],
    ["**/"],
    ["**"],
    ["*"],
    ["", "# comment", "/"],
    ["space\\ "],
    ["abs/"],
    ["dot/"],
]


def pattern_id(patterns: list[str]) -> str:
    return " ".join(patterns) or "none"


@pytest.mark.parametrize("patterns", PATTERN_SETS, ids=pattern_id)
def test_same_verdict_as_in_toto(patterns: list[str]) -> None:
    ours = ExcludeFilter(patterns)
    for path in PATHS:
        assert ours.excludes(path) == reference_excludes(patterns, path), (patterns, path)


TREE_FILES = [
    "foo.py", "top.txt", "keep.pyc", "m.pyc", "notes~", "ab.txt", "bb.txt", "xb.txt",
    "[x].txt", "x.txt", "#file", "!bang", "space ", "y.txt", "step.1a2b3c4d.link",
    "build/out.o", "src/foo.py", "src/top.txt", "src/keep.pyc", "src/build/out.o",
    "src/build/deeper/x.o", "a/b", "a/x/y/b", "deep/y.txt", "deep/x/deep/y.txt",
    "docs/guide.md", "docs/api/index.md", "docs/api/v1/ref.md", ".git/config",
]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tree"
    for name in TREE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize("patterns", PATTERN_SETS, ids=pattern_id)
def test_recorded_tree_is_in_totos(tree: Path, patterns: list[str]) -> None:
    """The walk too: excluded directories are not entered, re-included files come back."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = record_artifacts_as_dict(["."], exclude_patterns=patterns,
                                            follow_symlink_dirs=True)
    got = record_artifacts(["."], RecordingOptions(exclude_patterns=tuple(patterns)))
    assert got == expected


def test_tricky_patterns_spelled_out(tree: Path) -> None:
    """A few verdicts spelled out, so that a change in both in-toto and Custody shows."""
    def recorded(*patterns: str) -> set[str]:
        return set(record_artifacts(["."], RecordingOptions(exclude_patterns=patterns)))

    assert {"build/out.o", "src/build/out.o", "src/build/deeper/x.o"}.isdisjoint(
        recorded("build/"))
    assert "src/build/out.o" in recorded("/build/")
    assert "src/top.txt" in recorded("/top.txt") and "top.txt" not in recorded("/top.txt")
    assert {"a/b", "a/x/y/b"}.isdisjoint(recorded("a/**/b"))
    assert recorded("[!x]b.txt") & {"ab.txt", "bb.txt", "xb.txt"} == {"xb.txt"}
    assert {"keep.pyc", "src/keep.pyc"} <= recorded("*.pyc", "!keep.pyc")
    assert "keep.pyc" not in recorded("!keep.pyc", "*.pyc")  # the last match wins
    assert recorded("src/", "!src/foo.py") & {"src/foo.py", "src/top.txt"} == {"src/foo.py"}
    # Unlike git: in-toto puts the directory to the patterns as "docs/api", without a
    # trailing "/", so "docs/*" excludes it, "!docs/api/" does not match it, and the walk
    # never enters it.
    assert not any(name.startswith("docs/") for name in recorded("docs/*", "!docs/api/"))


def test_default_patterns_exclude_links_git_pyc_and_backups() -> None:
    excluded = ExcludeFilter(DEFAULT_EXCLUDE_PATTERNS)
    for path in ("build.1a2b3c4d.link", ".step.link-unfinished", ".git", "x/.git", "a.pyc",
                 "b~"):
        assert excluded.excludes(path), path
    for path in ("foo.py", "linker.c", "git", "x.py"):
        assert not excluded.excludes(path), path


@pytest.mark.parametrize("pattern", ["oops\\", "!", "\\"])
def test_an_invalid_pattern_is_a_recording_error(pattern: str) -> None:
    with pytest.raises(RecordingError, match="invalid exclude pattern"):
        RecordingOptions(exclude_patterns=(pattern,))


segment = st.sampled_from(["a", "b", "ab", ".git", "x.pyc", "y.link", "z~", "c.txt", "d"])
path_strategy = st.lists(segment, min_size=1, max_size=4).map("/".join)
pattern_piece = st.sampled_from(
    ["a", "b", "*", "**", "?", "*.txt", "[ab]", "[!a]*", ".git", "*.link*", "x.*", "d", ""]
)
pattern_strategy = st.tuples(
    st.sampled_from(["", "!", "/"]),
    st.lists(pattern_piece, min_size=1, max_size=3).map("/".join),
    st.sampled_from(["", "/"]),
).map("".join)


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(pattern_strategy, min_size=1, max_size=4),
       paths=st.lists(path_strategy, min_size=1, max_size=8))
def test_random_patterns_agree_with_in_toto(patterns: list[str], paths: list[str]) -> None:
    try:
        reference = [reference_excludes(patterns, path) for path in paths]
    except ValueError:  # in-toto refuses the pattern: so must we
        with pytest.raises(RecordingError):
            ExcludeFilter(patterns)
        return
    ours = ExcludeFilter(patterns)
    assert [ours.excludes(path) for path in paths] == reference
