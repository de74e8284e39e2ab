"""The one reader of untrusted JSON: everything a client sends goes through `parse_json`.

What it refuses, each with a MetadataError (INVALID_ARGUMENT at the server) that names the
document (`what`: the request field) and the reason; no RecursionError, ValueError,
UnicodeDecodeError or JSONDecodeError escapes:
- more than `max_bytes` bytes, or nesting deeper than `max_depth` levels (both checked
  before the parser runs);
- bytes that are not UTF-8, and strings that are not Unicode text (a lone surrogate
  written as an escape, `"\\ud800"`: UTF-8 cannot hold it);
- a key written twice in one object (readers disagree on which value counts);
- `NaN`, `Infinity`, `-Infinity`, and numbers too large for a float (`1e400`, which
  Python reads as infinity and writes back as `Infinity`);
- integers longer than MAX_INTEGER_DIGITS digits.
So what a reviewer read is what is signed, and what Custody's own Verify later accepts.

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

A link's artifact maps can be read compact (`artifact_maps`, json_artifact_maps.py): a
link of 100,000 artifacts then never holds 100,000 dicts of one member each. Anything
unusual is read again without that; the checks above see the same document.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
from _json import scanstring
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from operator import itemgetter
from types import MappingProxyType
from typing import Any, cast

from custody_core.errors import MetadataError
from custody_core.json_artifact_maps import (
    ArtifactMaps,
    NotCompact,
    Settled,
    algorithm_hint,
    digest_hook,
    settle_maps,
)
from custody_core.json_skeleton import Skeleton
from custody_core.json_survey import survey

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "MAX_INTEGER_DIGITS",
    "ArtifactMaps",
    "JsonLimits",
    "Member",
    "ParsedJson",
    "parse_json",
]

DEFAULT_MAX_DEPTH = 64
# Far beyond any count, exit code or timestamp (an int64 has 19 digits), and far below
# the 4,300 digits beyond which Python refuses to convert a string to an integer (a
# ValueError, not a JSON error). Converting a decimal string costs time quadratic in
# its length: this keeps every integer cheap.
MAX_INTEGER_DIGITS = 64

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


@dataclass(frozen=True)
class JsonLimits:
    """The limits of one kind of document. `max_bytes` None: only the message size
    bounds it. `bytes_setting` and `depth_setting` name where an operator sets the two
    (config keys), quoted in the refusal: "... (limits.max_layout_bytes)"."""

    max_bytes: int | None = None
    max_depth: int = DEFAULT_MAX_DEPTH
    bytes_setting: str = ""
    depth_setting: str = ""

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1")

    def parse(self, data: bytes, *, what: str) -> ParsedJson:
        """`parse_json` with these limits."""
        return _parse(data, what=what, limits=self)

    def check_size_and_depth(self, data: bytes, *, what: str) -> None:
        """Only the two limits, before anything is parsed (for bytes that a parser with
        these limits reads later); linear in the input."""
        _check_size(data, what=what, limits=self)
        _check_depth(Skeleton.of(bytes(data)), what=what, limits=self)


def parse_json(data: bytes, *, what: str, max_depth: int = DEFAULT_MAX_DEPTH,
               max_bytes: int | None = None, artifact_maps: ArtifactMaps | None = None,
               earlier_digests: Sequence[str] = ()) -> ParsedJson:
    """Parse `data`; `what` names the document in error messages (the request field).
    `artifact_maps`: read those compact, when they are artifact maps of one algorithm,
    keeping a digest once when it is also the one at the same place in the map before it
    or, for the first map, in `earlier_digests` (the previous step's products)."""
    return _parse(data, what=what, limits=JsonLimits(max_bytes=max_bytes, max_depth=max_depth),
                  maps=artifact_maps, earlier=earlier_digests)


def _setting_note(setting: str) -> str:
    return f" ({setting})" if setting else ""


def _check_size(data: bytes, *, what: str, limits: JsonLimits) -> None:
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise MetadataError(f"{what}: {len(data)} bytes, over the limit of {limits.max_bytes}"
                            f"{_setting_note(limits.bytes_setting)}")


def _check_depth(skeleton: Skeleton, *, what: str, limits: JsonLimits) -> None:
    if skeleton.nesting_exceeds(limits.max_depth):
        raise MetadataError(f"{what}: JSON nested deeper than {limits.max_depth} levels"
                            f"{_setting_note(limits.depth_setting)}")


def _parse(data: bytes, *, what: str, limits: JsonLimits, maps: ArtifactMaps | None = None,
           earlier: Sequence[str] = ()) -> ParsedJson:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MetadataError(f"{what}: expected bytes, got {type(data).__name__}")
    _check_size(data, what=what, limits=limits)
    max_depth = limits.max_depth
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{what}: not valid UTF-8 (at byte {exc.start})") from exc
    skeleton = Skeleton.of(raw)
    _check_depth(skeleton, what=what, limits=limits)
    if maps is not None and ((maps.canonical_text and not skeleton.compact)
                             or _may_hold_lone_surrogates(raw)):
        maps = None  # compact maps could not be encoded, or checked for surrogates
    try:
        parsed = _FastParse.of(text, maps, earlier=earlier)
    except _RefusedValue as exc:
        raise MetadataError(f"{what}: {exc}") from None
    except NotCompact:
        return _parse(raw, what=what, limits=limits)
    if parsed is None:
        return _no_lone_surrogates(
            _parse_precisely(raw, text, what=what, max_depth=max_depth), what=what)
    if parsed.spans:  # an object at the top: the walk starts below it
        found = survey(list(parsed.value.values()), containers=skeleton.containers - 1)
        members, depth = len(parsed.value) + found.members, found.depth + 1
    else:
        found = survey([parsed.value], containers=skeleton.containers)
        members, depth = found.members, found.depth
    if depth > max_depth:  # the raw check already refused this
        raise MetadataError(f"{what}: JSON nested deeper than {max_depth} levels")
    if members + parsed.hidden_members != skeleton.members:
        return _no_lone_surrogates(
            _parse_precisely(raw, text, what=what, max_depth=max_depth), what=what)
    keys_sorted = found.keys_sorted and parsed.maps_sorted
    compact = skeleton.compact and not parsed.negative_zero
    if parsed.hidden_members and maps is not None and maps.canonical_text and not (
            compact and keys_sorted and not parsed.member_floats.get(maps.root or "")):
        del parsed
        return _parse(raw, what=what, limits=limits)  # the root's value must be encoded
    return _no_lone_surrogates(ParsedJson(
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
        keys_sorted=keys_sorted,
        compact=compact,
    ), what=what)


class _RefusedValue(ValueError):
    """A value the reader refuses (NaN, an integer too long, ...); says which."""


def _refuse_constant(name: str) -> Any:
    raise _RefusedValue(f"JSON constant {name} is not allowed")


def _excerpt(literal: str) -> str:
    return literal if len(literal) <= 24 else f"{literal[:12]}...{literal[-4:]}"


class _IntegerWatch:
    """parse_int for the C scanner: refuses integers longer than MAX_INTEGER_DIGITS and
    notes whether `-0` is written (an integer canonical JSON writes otherwise). Links
    hold a few integers; their artifacts none."""

    def __init__(self) -> None:
        self.negative_zero = False

    def __call__(self, literal: str) -> int:
        digits = len(literal) - literal.startswith("-")
        if digits > MAX_INTEGER_DIGITS:
            raise _RefusedValue(f"integer of {digits} digits ({_excerpt(literal)}) is over "
                                f"the limit of {MAX_INTEGER_DIGITS} digits")
        if literal == "-0":
            self.negative_zero = True
        return int(literal)


class _FloatCounter:
    """parse_float for the C scanner: called only for numbers with a fraction or exponent.
    Refuses those beyond a float's range (`1e400` would be read as infinity)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, literal: str) -> float:
        self.count += 1
        value = float(literal)
        if not math.isfinite(value):
            raise _RefusedValue(f"number {_excerpt(literal)} is out of range (it would be "
                                "read as infinity)")
        return value


# A surrogate written as a JSON escape: a pair (one character beyond U+FFFF) or alone.
_SURROGATE_PAIR_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _no_lone_surrogates(parsed: ParsedJson, *, what: str) -> ParsedJson:
    """`parsed`, or MetadataError if a string holds a surrogate without its partner.

    Raw UTF-8 cannot hold a surrogate (the decoder refused it), so only an escape can.
    Documents rarely hold one (writers that escape non-ASCII write emoji as pairs): the
    raw bytes are searched first, pairs taken out, and only a document with an escape
    left over (possibly a false alarm: `\\\\ud800` is a backslash and text) is encoded
    again to decide.
    """
    if not _may_hold_lone_surrogates(parsed.raw):
        return parsed
    try:
        json.dumps(parsed.value, ensure_ascii=False, check_circular=False).encode("utf-8")
    except UnicodeEncodeError:
        raise MetadataError(
            f"{what}: a string holds a lone surrogate escape (\\ud800 to \\udfff without "
            "its partner): not Unicode text") from None
    return parsed


def _may_hold_lone_surrogates(raw: bytes) -> bool:
    """Whether an escape in `raw` may be a surrogate without its partner (then the
    parsed value is encoded again to decide)."""
    # A backslash is found in C at memory speed, a two-byte string ten times slower.
    if b"\\" not in raw or b"\\u" not in raw or _SURROGATE_ESCAPE.search(raw) is None:
        return False
    return _SURROGATE_ESCAPE.search(_SURROGATE_PAIR_ESCAPE.sub(b"", raw)) is not None


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
    hidden_members: int = 0  # members inside compact artifact maps (the walk skips them)
    maps_sorted: bool = True  # whether the compact maps list their paths in order

    @classmethod
    def of(cls, text: str, maps: ArtifactMaps | None = None,
           earlier: Sequence[str] = ()) -> _FastParse | None:
        """None if the text is not valid JSON or repeats a top-level key (the precise
        parser then says why). The top-level object is read here, a few members, so that
        the position of each value is known; everything inside is read in C. `maps`: the
        artifact maps to read compact (see the module's docstring)."""
        floats, integers = _FloatCounter(), _IntegerWatch()
        decoder = json.JSONDecoder(
            parse_float=floats, parse_int=integers, parse_constant=_refuse_constant
        )
        scan_value = json.scanner.make_scanner(cast(Any, decoder))  # (value, end) at an index
        scan_maps = scan_value  # for the member `maps.root`
        digests: list[str] = []  # the hash dicts the hook took, in the text's order
        algorithm = ""
        if maps is not None:
            algorithm = algorithm_hint(text)
            hook = digest_hook(algorithm, digests, earlier)
            scan_maps = json.scanner.make_scanner(cast(Any, json.JSONDecoder(
                object_hook=hook, parse_float=floats, parse_int=integers,
                parse_constant=_refuse_constant)))
        try:
            index = _end_of_whitespace(text, 0)
            if not text.startswith("{", index):
                whole = decoder.decode(text)
                return cls(whole, floats.count, {}, {}, negative_zero=integers.negative_zero)
            if maps is not None and maps.root is None:  # the whole document, in one call
                whole, end = scan_maps(text, index)
                if _end_of_whitespace(text, end) != len(text):
                    return None
                settled = settle_maps(whole, maps.names, algorithm, digests)
                return cls(settled.value, floats.count, {}, {},
                           negative_zero=integers.negative_zero,
                           hidden_members=settled.hidden_members,
                           maps_sorted=settled.maps_sorted)
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
                scan = scan_maps if maps is not None and name == maps.root else scan_value
                value[name], end = scan(text, start)
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
        except _RefusedValue:
            raise
        except (ValueError, StopIteration, RecursionError):
            return None
        settled = Settled(None, 0, True)
        if maps is not None and maps.root in value:
            settled = settle_maps(value[maps.root], maps.names, algorithm, digests)
            value[maps.root] = settled.value
        return cls(
            value,
            floats.count,
            spans=spans,
            member_floats=member_floats,
            negative_zero=integers.negative_zero,
            hidden_members=settled.hidden_members,
            maps_sorted=settled.maps_sorted,
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
            parse_int=_IntegerWatch(),
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
    except _RefusedValue as exc:
        raise MetadataError(f"{what}: {exc}") from exc
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
