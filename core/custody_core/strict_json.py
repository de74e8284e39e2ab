"""Strict parsing of untrusted JSON: UTF-8 only, no duplicate keys, bounded depth.

Every failure is a MetadataError with a message that says what was wrong and
where; no RecursionError, UnicodeDecodeError or JSONDecodeError escapes.

Fast, for 20 MB links, without a Python call per object:
1. the nesting depth is read off the raw bytes first (json_skeleton), so the parser
   never recurses deeper than the limit;
2. the C parser builds the value without hooks (objects keep the order of the text);
3. one level-by-level walk over the value (json_survey) sums len(dict), notes floats and
   checks key order. Each colon outside strings ends one member's key, so a sum equal
   to their number proves that no key was written twice.
Only when they differ does the precise parser, with a hook per object, run to name the
duplicate.
"""

from __future__ import annotations

import json
import json.scanner
import re
from _json import scanstring
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from operator import itemgetter
from types import MappingProxyType
from typing import Any, cast

from custody_core.errors import MetadataError
from custody_core.json_skeleton import Skeleton
from custody_core.json_survey import Survey, survey

__all__ = ["DEFAULT_MAX_DEPTH", "Member", "ParsedJson", "parse_json"]

DEFAULT_MAX_DEPTH = 64

_NO_MEMBERS: Mapping[str, Member] = MappingProxyType({})


@dataclass(frozen=True)
class Member:
    """A member of the top-level object: where its value is written in the text, and
    what the walk found inside it."""

    start: int
    end: int
    has_floats: bool
    keys_sorted: bool  # every object inside lists its keys in code-point order


@dataclass(frozen=True)
class ParsedJson:
    """A parsed document; its objects keep the key order of the text.

    `has_floats` says whether any number was written with a fraction or an exponent
    (canonical JSON refuses floats). `members` describes the members of a top-level
    object; it may be empty (never wrong) when the precise parser had to run.
    """

    value: Any
    has_floats: bool
    raw: bytes = field(repr=False)
    text: str = field(repr=False)
    members: Mapping[str, Member] = field(default_factory=lambda: _NO_MEMBERS)

    def member_bytes(self, name: str) -> bytes:
        """The UTF-8 bytes of a top-level member's value exactly as written."""
        member = self.members[name]
        if self.text.isascii():  # then text positions are byte positions
            return self.raw[member.start : member.end]
        return self.text[member.start : member.end].encode("utf-8")


def parse_json(data: bytes, *, what: str, max_depth: int = DEFAULT_MAX_DEPTH) -> ParsedJson:
    """Parse `data`; `what` names the document in error messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MetadataError(f"{what}: expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{what}: not valid UTF-8 (at byte {exc.start})") from exc
    skeleton = Skeleton.of(raw)
    if skeleton.nesting_exceeds(max_depth):
        raise MetadataError(f"{what}: JSON nested deeper than {max_depth} levels")
    parsed = _parse_fast(text)
    if parsed is None:
        return _parse_precisely(raw, text, what=what, max_depth=max_depth)
    value, spans = parsed
    if spans:  # an object at the top: survey each member on its own
        surveys = {name: survey(value[name]) for name in spans}
        whole = Survey.of_object(value, surveys.values())
    else:
        surveys = {}
        whole = survey(value)
    if whole.depth > max_depth:  # the raw check already refused this
        raise MetadataError(f"{what}: JSON nested deeper than {max_depth} levels")
    if whole.members != skeleton.members:
        return _parse_precisely(raw, text, what=what, max_depth=max_depth)
    members = {
        name: Member(
            start=start,
            end=end,
            has_floats=surveys[name].has_floats,
            keys_sorted=surveys[name].keys_sorted,
        )
        for name, (start, end) in spans.items()
    }
    return ParsedJson(
        value=value,
        has_floats=whole.has_floats,
        raw=raw,
        text=text,
        members=MappingProxyType(members),
    )


class _ConstantError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _ConstantError(name)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
# The C scanners json.loads uses: (value, end) for the value at an index, (string, end)
# for the string whose opening quote is just before the index.
_scan_value = json.scanner.make_scanner(cast(Any, _DECODER))
_scan_string = scanstring
_skip_whitespace = re.compile(r"[ \t\n\r]*").match


def _parse_fast(text: str) -> tuple[Any, dict[str, tuple[int, int]]] | None:
    """The value and, for an object at the top, where each member's value is written.

    None if the text is not valid JSON or repeats a top-level key (the precise parser
    then says why). The top-level object is read here, a few members, so that the
    position of each value is known; everything inside is read by the C scanner.
    """
    try:
        index = _end_of_whitespace(text, 0)
        if not text.startswith("{", index):
            return _DECODER.decode(text), {}
        value: dict[str, Any] = {}
        spans: dict[str, tuple[int, int]] = {}
        index = _end_of_whitespace(text, index + 1)
        closed = text.startswith("}", index)
        while not closed:
            if not text.startswith('"', index):
                return None
            name, index = _scan_string(text, index + 1)
            index = _end_of_whitespace(text, index)
            if not text.startswith(":", index) or name in value:
                return None
            start = _end_of_whitespace(text, index + 1)
            value[name], end = _scan_value(text, start)
            spans[name] = (start, end)
            index = _end_of_whitespace(text, end)
            closed = text.startswith("}", index)
            if not closed:
                if not text.startswith(",", index):
                    return None
                index = _end_of_whitespace(text, index + 1)
        if _end_of_whitespace(text, index + 1) != len(text):
            return None
    except (ValueError, StopIteration, RecursionError):
        return None
    return value, spans


def _end_of_whitespace(text: str, index: int) -> int:
    match = _skip_whitespace(text, index)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _parse_precisely(raw: bytes, text: str, *, what: str, max_depth: int) -> ParsedJson:
    """The slow parser, a Python call per object: names the duplicate key or the error."""
    float_count = 0

    def parse_float(literal: str) -> float:
        nonlocal float_count
        float_count += 1
        return float(literal)

    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_float=parse_float,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as exc:
        raise MetadataError(
            f"{what}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    except RecursionError as exc:
        raise MetadataError(f"{what}: JSON nested deeper than {max_depth} levels") from exc
    except _DuplicateKeyError as exc:
        raise MetadataError(f"{what}: duplicate key {exc.key!r} in a JSON object") from exc
    except _ConstantError as exc:
        raise MetadataError(f"{what}: JSON constant {exc} is not allowed") from exc
    except ValueError as exc:  # e.g. an integer longer than Python will convert
        raise MetadataError(f"{what}: invalid JSON value: {exc}") from exc
    if survey(value).depth > max_depth:
        raise MetadataError(f"{what}: JSON nested deeper than {max_depth} levels")
    return ParsedJson(value=value, has_floats=float_count > 0, raw=raw, text=text)


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key if len(key) <= 64 else key[:64] + "..."


_by_key = itemgetter(0)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        for (key, _), (next_key, _) in pairwise(sorted(pairs, key=_by_key)):
            if key == next_key:
                raise _DuplicateKeyError(key)
    return result
