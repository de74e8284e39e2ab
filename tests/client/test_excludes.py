"""Exclude patterns: the same verdict as pathspec's GitIgnoreSpec, which in-toto 3.1 uses."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pathspec import GitIgnoreSpec

from custody_client.errors import RecordingError
from custody_client.excludes import DEFAULT_EXCLUDE_PATTERNS, ExcludeFilter, compile_pattern


def reference_excludes(patterns: list[str], path: str) -> bool:
    with warnings.catch_warnings():  # "gitwildmatch" is deprecated, but it is what in-toto uses
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(GitIgnoreSpec.from_lines("gitwildmatch", patterns).match_file(path))


PATHS = [
    "a.link", "x/b.link-unfinished", "step.1234abcd.link", ".git", ".git/config", "sub/.git",
    "sub/.git/HEAD", "m.pyc", "deep/er/m.pyc", "notes~", "src/notes~", "foo.py", "src/foo.py",
    "build", "build/out.o", "src/build/out.o", "top.txt", "src/top.txt", "keep.pyc",
    "src/keep.pyc", "a/b", "a/x/y/b", "ab.txt", "bb.txt", "xb.txt", "#file", "!bang",
    "dir.link/inner.txt", "../outside.txt", "/abs/path/file.txt", "./dot/file.txt",
    "space ", "trail\\ ", "deep/x/deep/y.txt", "deep/y.txt", "y.txt",
]

PATTERN_SETS = [
    list(DEFAULT_EXCLUDE_PATTERNS),
    ["build/"],
    ["/top.txt"],
    ["**/deep/*.txt"],
    ["deep/**"],
    ["a/**/b"],
    ["[ab]*.txt"],
    ["[!x]b.txt"],
    ["[^x]b.txt"],
    ["\\#file", "\\!bang"],
    ["[abc"],  # invalid range: git drops the pattern
    ["*.pyc", "!keep.pyc"],
    ["!keep.pyc", "*.pyc"],
    ["src/", "!src/foo.py"],
    ["!src/foo.py", "src/"],
    ["*/"],
    ["**/"],
    ["**"],
    ["*"],
    ["", "# comment", "/"],
    ["space\\ "],
    ["abs/"],
    ["dot/"],
    ["*.txt", "!deep/**", "deep/x/"],
]


@pytest.mark.parametrize("patterns", PATTERN_SETS, ids=lambda p: " ".join(p) or "empty")
def test_same_verdict_as_pathspec(patterns: list[str]) -> None:
    ours = ExcludeFilter(patterns)
    for path in PATHS:
        assert ours.excludes(path) == reference_excludes(patterns, path), (patterns, path)


def test_default_patterns_exclude_links_git_pyc_and_backups() -> None:
    excluded = ExcludeFilter(DEFAULT_EXCLUDE_PATTERNS)
    for path in ("build.1a2b3c4d.link", ".step.link-unfinished", ".git", "x/.git", "a.pyc",
                 "b~"):
        assert excluded.excludes(path), path
    for path in ("foo.py", "linker.c", "git", "x.py"):
        assert not excluded.excludes(path), path


def test_a_dangling_escape_is_a_recording_error() -> None:
    with pytest.raises(RecordingError, match="invalid exclude pattern"):
        compile_pattern("oops\\")


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
def test_random_patterns_agree_with_pathspec(patterns: list[str], paths: list[str]) -> None:
    try:
        reference = [reference_excludes(patterns, path) for path in paths]
    except ValueError:  # pathspec refuses the pattern: so must we
        with pytest.raises(RecordingError):
            ExcludeFilter(patterns)
        return
    ours = ExcludeFilter(patterns)
    assert [ours.excludes(path) for path in paths] == reference
