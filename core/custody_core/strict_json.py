"""Strict parsing of untrusted JSON: UTF-8 only, no duplicate keys, bounded depth.

Every failure is a MetadataError with a message that says what was wrong and
where; no RecursionError, UnicodeDecodeError or JSONDecodeError escapes.

Fast, for 20 MB links, without a Python call per object:
1. the nesting depth is read off the raw bytes first (json_skeleton), so the parser
   never recurses deeper than the limit;
2. the C parser builds the value without object hooks (objects keep the order of the
   text); its number hooks count floats and note a `-0` (canonical JSON writes 0);
3. one level-by-level walk over the value (json_survey) sums len(dict) and checks key
   order. Each colon outside strings ends one member's key, so a sum equal to their
   number proves that no key was written twice.
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
from custody_core.json_survey import survey

__all__ = ["DEFAULT_MAX_DEPTH", "Member", "ParsedJson", "parse_json"]

DEFAULT_MAX_DEPTH = 64

_NO_MEMBERS: Mapping[str, Member] = MappingProxyType({})


@dataclass(frozen=True)
class Member:
    """A member of the top-level object: where its value is written in the text."""

    start: int
    end: int
    has_floats: bool


@dataclass(frozen=True)
class ParsedJson:
    """A parsed document; its objects keep the key order of the text.

    `has_floats` says whether any number was written with a fraction or an exponent
    (canonical JSON refuses floats). `members` describes the members of a top-level
    object, `keys_sorted` whether every object below the top level lists its keys in
    order, `compact` whether no whitespace is written outside strings and no `-0`.
    When the precise parser had to run, `members` is empty and the flags are False
    (never wrong, only unknown).
    """

    value: Any
    has_floats: bool
    raw: bytes = field(repr=False)
    text: str = field(repr=False)
    members: Mapping[str, Member] = field(default_factory=lambda: _NO_MEMBERS)
    keys_sorted: bool = False
    compact: bool = False

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
    parsed = _FastParse.of(text)
    if parsed is None:
        return _parse_precisely(raw, text, what=what, max_depth=max_depth)
    if parsed.spans:  # an object at the top: the walk starts below it
        found = survey(list(parsed.value.values()), containers=skeleton.containers - 1)
        members, depth = len(parsed.value) + found.members, found.depth + 1
    else:
        found = survey([parsed.value], containers=skeleton.containers)
        members, depth = found.members, found.depth
    if depth > max_depth:  # the raw check already refused this
        raise MetadataError(f"{what}: JSON nested deeper than {max_depth} levels")
    if members != skeleton.members:
        return _parse_precisely(raw, text, what=what, max_depth=max_depth)
    return ParsedJson(
        value=parsed.value,
        has_floats=parsed.floats > 0,
        raw=raw,
        text=text,
        members=MappingProxyType(
            {
                name: Member(start=start, end=end, has_floats=parsed.member_floats[name] > 0)
                for name, (start, end) in parsed.spans.items()
            }
        ),
        keys_sorted=found.keys_sorted,
        compact=skeleton.compact and not parsed.negative_zero,
    )


class _ConstantError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _ConstantError(name)


class _IntegerWatch:
    """parse_int for the C scanner: notes whether `-0` is written (an integer canonical
    JSON writes otherwise). Links hold a few integers; their artifacts none."""

    def __init__(self) -> None:
        self.negative_zero = False

    def __call__(self, literal: str) -> int:
        if literal == "-0":
            self.negative_zero = True
        return int(literal)


class _FloatCounter:
    """parse_float for the C scanner: called only for numbers with a fraction or exponent."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, literal: str) -> float:
        self.count += 1
        return float(literal)


_scan_string = scanstring  # the C string scanner: (string, end) after an opening quote
_skip_whitespace = re.compile(r"[ \t\n\r]*").match


@dataclass(frozen=True)
class _FastParse:
    """The value as the C scanner builds it, without hooks; for an object at the top,
    where each member's value is written and how many floats it holds."""

    value: Any
    floats: int
    spans: dict[str, tuple[int, int]]
    member_floats: dict[str, int]
    negative_zero: bool

    @classmethod
    def of(cls, text: str) -> _FastParse | None:
        """None if the text is not valid JSON or repeats a top-level key (the precise
        parser then says why). The top-level object is read here, a few members, so that
        the position of each value is known; everything inside is read in C."""
        floats, integers = _FloatCounter(), _IntegerWatch()
        decoder = json.JSONDecoder(
            parse_float=floats, parse_int=integers, parse_constant=_refuse_constant
        )
        scan_value = json.scanner.make_scanner(cast(Any, decoder))  # (value, end) at an index
        try:
            index = _end_of_whitespace(text, 0)
            if not text.startswith("{", index):
                whole = decoder.decode(text)
                return cls(whole, floats.count, {}, {}, negative_zero=integers.negative_zero)
            value: dict[str, Any] = {}
            spans: dict[str, tuple[int, int]] = {}
            member_floats: dict[str, int] = {}
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
                floats_before = floats.count
                value[name], end = scan_value(text, start)
                spans[name] = (start, end)
                member_floats[name] = floats.count - floats_before
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
        return cls(
            value,
            floats.count,
            spans=spans,
            member_floats=member_floats,
            negative_zero=integers.negative_zero,
        )


def _end_of_whitespace(text: str, index: int) -> int:
    match = _skip_whitespace(text, index)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _parse_precisely(raw: bytes, text: str, *, what: str, max_depth: int) -> ParsedJson:
    """The slow parser, a Python call per object: names the duplicate key or the error."""
    floats = _FloatCounter()
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_float=floats,
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
    return ParsedJson(value=value, has_floats=floats.count > 0, raw=raw, text=text)


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
