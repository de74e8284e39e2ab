"""Exclude patterns exactly as in-toto 3.1 applies them (pathspec's gitignore rules).

in-toto compiles `--exclude` patterns with `pathspec.GitIgnoreSpec.from_lines("gitwildmatch",
...)`. The agent side must not depend on pathspec, so this module reproduces that
translation (pathspec 1.x, `GitIgnoreSpecPattern`) and its matching rule: patterns are
checked last to first, a match on the path itself beats a match through a parent directory
(`foo/` matching `foo/bar`), and `!pattern` re-includes. The common case, patterns without
`!`, is compiled into one regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from custody_client.errors import RecordingError

# in_toto.settings.ARTIFACT_EXCLUDE_PATTERNS
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = ("*.link*", ".git", "*.pyc", "*~")

_DIR_MARK = "ps_d"
_DIR_MARK_GROUP = f"(?P<{_DIR_MARK}>/)"
_DIR_MARK_OR_END = f"(?:{_DIR_MARK_GROUP}|$)"


class _RangeError(ValueError):
    """An unterminated `[` range: git (and pathspec) drop the whole pattern."""


@dataclass(frozen=True)
class CompiledPattern:
    """One exclude pattern: `excludes` is False for a `!` (re-including) pattern."""

    text: str
    regex: re.Pattern[str]
    excludes: bool


def _translate_glob(segment: str) -> str:
    """A path segment glob as a regex; `*` and `?` never cross `/` (FNM_PATHNAME)."""
    regex = ""
    escape = False
    i, end = 0, len(segment)
    while i < end:
        char = segment[i]
        i += 1
        if escape:
            escape = False
            regex += re.escape(char)
        elif char == "\\":
            escape = True
        elif char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char == "[":
            j = i
            if j < end and segment[j] in "!^":
                j += 1
            if j < end and segment[j] == "]":
                j += 1
            while j < end and segment[j] != "]":
                j += 1
            if j >= end:
                raise _RangeError(segment)
            j += 1
            expression = "["
            if segment[i] in "!^":
                expression += "^"
                i += 1
            expression += segment[i:j].replace("\\", "\\\\")
            regex += expression
            i = j
        else:
            regex += re.escape(char)
    if escape:
        raise ValueError(f"escape character with nothing to escape in {segment!r}")
    return regex


def _normalize_segments(is_dir_pattern: bool, segments: list[str]) -> list[str] | str:
    """The pattern's segments made relative to the root, or a whole-regex override."""
    if not segments[0]:
        del segments[0]  # "/foo": anchored at the root
    elif (len(segments) == 1 or (len(segments) == 2 and not segments[1])) \
            and segments[0] != "**":
        segments.insert(0, "**")  # "foo" or "foo/": at any depth
    if not segments:
        raise ValueError("pattern normalized to nothing")
    if not segments[-1]:
        segments[-1] = "**"  # "foo/": everything below foo
    for i in range(len(segments) - 1, 0, -1):
        if segments[i - 1] == "**" and segments[i] == "**":
            del segments[i]
    if segments == ["**"]:
        return _DIR_MARK_GROUP if is_dir_pattern else "."
    if segments == ["**", "*"]:
        return "."
    if segments == ["**", "*", "**"]:
        return _DIR_MARK_GROUP if is_dir_pattern else "/"
    return segments


def _translate_segments(is_dir_pattern: bool, segments: list[str]) -> str:
    parts: list[str] = []
    need_slash = False
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == "**":
            if i == 0:
                parts.append("^(?:.+/)?")
            elif i < last:
                parts.append("(?:/.+)?")
                need_slash = True
            else:
                parts.append(_DIR_MARK_GROUP if is_dir_pattern else "/")
            continue
        if i == 0:
            parts.append("^")
        if need_slash:
            parts.append("/")
        parts.append("[^/]+" if segment == "*" else _translate_glob(segment))
        if i == last:
            parts.append(_DIR_MARK_OR_END)
        need_slash = True
    return "".join(parts)


def compile_pattern(pattern: str) -> CompiledPattern | None:
    """Compile one gitignore-style pattern; None for a blank line, a comment or `/`."""
    text = pattern if pattern.endswith("\\ ") else pattern.rstrip()
    if not text or text.startswith("#") or text == "/":
        return None
    excludes = not text.startswith("!")
    if not excludes:
        text = text[1:]
    segments = text.split("/")
    is_dir_pattern = not segments[-1]
    try:
        normalized = _normalize_segments(is_dir_pattern, segments)
        if isinstance(normalized, str):
            regex = normalized
        else:
            regex = _translate_segments(is_dir_pattern, normalized)
        compiled = re.compile(regex)
    except _RangeError:
        return None  # git discards patterns with an invalid range
    except (ValueError, re.error) as error:
        raise RecordingError(f"invalid exclude pattern {pattern!r}: {error}") from None
    return CompiledPattern(text=pattern, regex=compiled, excludes=excludes)


def normalize_for_matching(path: str) -> str:
    """pathspec.util.normalize_file on POSIX: drop one leading "/" or "./"."""
    if path.startswith("/"):
        return path[1:]
    if path.startswith("./"):
        return path[2:]
    return path


class ExcludeFilter:
    """Decides whether a path (relative to the recording base) is excluded."""

    def __init__(self, patterns: Sequence[str]) -> None:
        compiled = [c for c in (compile_pattern(p) for p in patterns) if c is not None]
        self.patterns: tuple[CompiledPattern, ...] = tuple(compiled)
        self._reversed = tuple(reversed(compiled))
        self._any: re.Pattern[str] | None = None
        if compiled and all(c.excludes for c in compiled):
            # Without "!" patterns the order and priority rules cannot change the answer:
            # the path is excluded when any pattern matches. One regex does that.
            self._any = re.compile(
                "|".join(f"(?:{c.regex.pattern.replace(_DIR_MARK_GROUP, '/')})"
                         for c in compiled)
            )

    def excludes(self, path: str) -> bool:
        return self.excludes_normalized(normalize_for_matching(path))

    def excludes_normalized(self, path: str) -> bool:
        """`excludes` for a path that normalize_for_matching leaves as it is."""
        if not self.patterns:
            return False
        if self._any is not None:
            return self._any.search(path) is not None
        decision = False
        best = 0
        for pattern in self._reversed:
            match = pattern.regex.search(path)
            if match is None:
                continue
            # A match through a directory marker ("foo/" on "foo/bar") ranks below a
            # match on the path itself, whatever the order (pathspec's SimpleGiBackend).
            priority = 1 if match.groupdict().get(_DIR_MARK) else 2
            if priority > best:
                decision, best = pattern.excludes, priority
            if priority == 2:
                break
        return decision
