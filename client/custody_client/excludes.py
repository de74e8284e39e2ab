"""Exclude patterns as in-toto 3.1 applies them, through the library it applies them with.

in-toto's FileResolver compiles `--exclude` patterns with
`pathspec.GitIgnoreSpec.from_lines("gitwildmatch", patterns)` and asks `match_file` of every
path it meets. In pathspec 1.x "gitwildmatch" is a deprecated name for
`GitIgnoreSpecPattern`, the pattern class that `GitIgnoreSpec` uses by default: the same
rules without the deprecation warning. So a pattern means here what it means to
`in-toto-run`: patterns are checked last to first, a match on the path itself beats a match
through a parent directory (`foo/` matching `foo/bar`), `!pattern` re-includes, and a
pattern with an unterminated range (`[abc`) is dropped, as git drops it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pathspec import GitIgnoreSpec
from pathspec.util import normalize_file

from custody_client.errors import RecordingError

# in_toto.settings.ARTIFACT_EXCLUDE_PATTERNS
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = ("*.link*", ".git", "*.pyc", "*~")

# A named group of pathspec's regexes (its directory marker): a name may appear only once
# in one regex, so the fast path below makes them plain groups.
_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


class ExcludeFilter:
    """Decides whether a path (relative to the recording base) is excluded."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(patterns)
        try:
            self._spec = GitIgnoreSpec.from_lines(self.patterns)
        except ValueError as error:  # pathspec's GitIgnorePatternError
            raise RecordingError(f"invalid exclude pattern: {error}") from None
        # Fast path, kept for a measured reason (docs/PERFORMANCE.md#exclude-patterns):
        # `custody run` asks this of every file and directory twice, and pathspec's loop
        # over the patterns, one match object each, slowed the walk markedly. Without a "!"
        # pattern, order and priority cannot change pathspec's verdict: a path is excluded
        # when any pattern matches it. One regex made of pathspec's own regexes answers
        # that; each pattern's translation stays pathspec's, and tests/client/
        # test_excludes.py holds both paths to in-toto's verdict.
        active = [p for p in self._spec.patterns if p.include is not None and p.regex]
        self._any: re.Pattern[str] | None = None
        if active and all(p.include for p in active):
            self._any = re.compile("|".join(
                f"(?:{_NAMED_GROUP.sub('(?:', p.regex.pattern)})" for p in active
                if p.regex is not None))

    def excludes(self, path: str) -> bool:
        """True if the patterns exclude `path`; a leading "/" or "./" is ignored, as in-toto
        (through pathspec) ignores it."""
        if self._any is not None:
            return self._any.search(normalize_file(path)) is not None
        return self._spec.match_file(path)
