"""Canonical JSON exactly as securesystemslib writes it for in-toto signatures.

The format (OLPC canonical JSON as implemented by `securesystemslib.formats`):
keys sorted by code point, no whitespace, only `\\` and `"` escaped inside
strings (control characters are written raw), integers in decimal, UTF-8.
Floats and any type other than dict/list/tuple/str/int/bool/None are refused.

Fast path: the C encoder of the standard `json` module with
`ensure_ascii=False, separators=(",", ":")` writes the same bytes for a value
whose dicts list their keys in sorted order, with one difference: it escapes
control characters (U+0000..U+001F) that canonical JSON writes raw. Every
backslash in its output starts an escape sequence, so a left-to-right scan over
escape sequences undoes exactly the control-character escapes and keeps
`\\\\` and `\\"`. Before encoding, one pass checks the types (`json` would
accept floats and turn int/None/bool dict keys into strings) and gives a view of
the value in which unsorted dicts are replaced by sorted copies (everything
already in order is shared, not copied). That is about twice as fast as letting
the encoder sort, which builds and sorts an item list for every dict. Byte
equality with securesystemslib is proven by a hypothesis test.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from itertools import chain
from typing import Any

from custody_core.errors import MetadataError
from custody_core.json_skeleton import outside_strings

__all__ = [
    "MAX_CANONICAL_DEPTH",
    "encode_canonical",
    "encode_canonical_as_written",
    "encode_canonical_presorted",
]

# Deeper structures are refused (this also stops self-referencing containers).
MAX_CANONICAL_DEPTH = 512

# Refuses NaN/Infinity; check_circular is off because the depth limit stops cycles.
_ORDER_KEEPING_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    check_circular=False,
    sort_keys=False,
    separators=(",", ":"),
)

# Every escape the json C encoder emits with ensure_ascii=False.
_JSON_ESCAPE = re.compile(r'\\(?:u00[01][0-9a-f]|[bfnrt"\\])')
_ESCAPE_TO_CANONICAL: dict[str, str] = {
    '\\"': '\\"',
    "\\\\": "\\\\",
    **{json.dumps(chr(code), ensure_ascii=False)[1:-1]: chr(code) for code in range(0x20)},
}

# Exact types written as they are (bool before int: it is an int subclass).
_SCALAR_TYPES = frozenset({str, int, bool, type(None)})


def encode_canonical(obj: object) -> bytes:
    """Return the canonical JSON bytes of `obj`, as in-toto signs them.

    Raises MetadataError for floats, non-string dict keys, unsupported types,
    nesting deeper than MAX_CANONICAL_DEPTH (self-referencing containers too),
    integers too long to print and strings that are not valid Unicode.
    """
    try:
        view = _sorted_view(obj, 0)
    except RecursionError as exc:  # only if the caller's own stack is already deep
        raise MetadataError("canonical JSON: value nested too deeply") from exc
    return _encode_ordered(view)


def encode_canonical_presorted(obj: object) -> bytes:
    """Canonical JSON of a value known to be clean, without re-checking it.

    Only for values from `custody_core.strict_json.parse_json` that hold no floats and
    whose dicts list their keys in sorted order (the parser's walk says so): string
    keys, bounded nesting, JSON types only. Anything else gives wrong bytes.
    """
    return _encode_ordered(obj)


def encode_canonical_as_written(
    written: bytes, value: object, *, keys_sorted: bool, compact: bool = False
) -> bytes:
    """Canonical JSON of `value`, parsed by `custody_core.strict_json.parse_json` from
    `written` and holding no floats.

    Signers write large documents compact with sorted keys: then `written` is the
    canonical form but for its string escapes, and is used as written (escapes
    rewritten) instead of encoding 20 MB again. That needs keys in order
    (`keys_sorted`: the parser's walk found every object in order), no whitespace
    outside strings and no `-0` (the only integer not written as Python writes it)
    (`compact`: the parser's raw scan found none; checked here otherwise).
    """
    if not keys_sorted:
        return encode_canonical(value)
    if not (compact or _is_compact(written)):
        return encode_canonical_presorted(value)
    if b"\\" not in written:
        return written
    try:
        return _JSON_ESCAPE_IN_TEXT.sub(_canonical_escape, written)
    except (UnicodeEncodeError, KeyError):  # a lone surrogate: let the encoder refuse it
        return encode_canonical_presorted(value)


def _is_compact(written: bytes) -> bool:
    # -0 is the one integer written otherwise (as 0); looked for in strings too. (A
    # regular expression: `b"-0" in written` is slower amid hex digests; measured: see
    # docs/PERFORMANCE.md#core-checks-on-large-links.)
    return _NEGATIVE_ZERO.search(written) is None and not outside_strings(written, b" \t\n\r")


_NEGATIVE_ZERO = re.compile(rb"-0")


# A JSON escape as a parser reads it, left to right: a surrogate pair, one \uXXXX, or a
# backslash and one character.
_JSON_ESCAPE_IN_TEXT = re.compile(
    rb"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)",
    re.DOTALL,
)
_SHORT_ESCAPE_TO_CANONICAL: dict[bytes, bytes] = {
    b'\\"': b'\\"',
    b"\\\\": b"\\\\",
    b"\\/": b"/",
    b"\\b": b"\b",
    b"\\f": b"\f",
    b"\\n": b"\n",
    b"\\r": b"\r",
    b"\\t": b"\t",
}


def _canonical_escape(match: re.Match[bytes]) -> bytes:
    return _canonical_form_of_escape(match.group())


@lru_cache(maxsize=4096)  # a text repeats few escapes (newlines, its non-ASCII letters)
def _canonical_form_of_escape(escape: bytes) -> bytes:
    """How canonical JSON writes the character of a JSON escape: only '"' and '\\' are
    escaped. KeyError for an escape JSON does not have, UnicodeEncodeError for a lone
    surrogate (neither parses: the caller falls back to the encoder)."""
    if len(escape) == 2:
        return _SHORT_ESCAPE_TO_CANONICAL[escape]
    code = int(escape[2:6], 16)
    if len(escape) == 12:  # a surrogate pair
        code = 0x10000 + ((code - 0xD800) << 10) + (int(escape[8:12], 16) - 0xDC00)
    character = chr(code)
    if character in ('"', "\\"):
        return b"\\" + character.encode("ascii")
    return character.encode("utf-8")


def _encode_ordered(obj: object) -> bytes:
    try:
        text = _ORDER_KEEPING_ENCODER.encode(obj)
        if "\\" in text:
            text = _unescape_controls(text)
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MetadataError("canonical JSON: string is not valid Unicode") from exc
    except (ValueError, TypeError, RecursionError) as exc:
        raise MetadataError(f"canonical JSON: cannot encode value ({exc})") from exc


def _to_canonical_escape(match: re.Match[str]) -> str:
    return _ESCAPE_TO_CANONICAL[match.group()]


# Below this many backslashes one pattern pass is cheapest; above it (a build log's
# newlines) a callback per escape costs more time and memory than a few replace passes.
_FEW_ESCAPES = 1024
_CONTROL_ESCAPES = tuple(
    (escape, character)
    for escape, character in _ESCAPE_TO_CANONICAL.items()
    if escape not in ('\\"', "\\\\")
)
_SHORT_CONTROL_ESCAPES = tuple(pair for pair in _CONTROL_ESCAPES if len(pair[0]) == 2)
# Stands for an escaped backslash while the others are undone: a lone surrogate, which no
# text that can be encoded holds.
_BACKSLASH_HOLDER = "\udfff"


def _unescape_controls(text: str) -> str:
    """`text` as the encoder wrote it, with its control-character escapes undone (kept:
    `\\\\` and `\\"`). Every backslash in it starts an escape, so taking out the escaped
    backslashes first (left to right, in pairs, as a parser reads a run of them) leaves
    only escapes that can be replaced one kind at a time: a C-level pass each, for the
    kinds that occur, instead of a Python call per escape."""
    if text.count("\\") < _FEW_ESCAPES or _BACKSLASH_HOLDER in text:
        return _JSON_ESCAPE.sub(_to_canonical_escape, text)  # (a holder: not encodable)
    held = text.replace("\\\\", _BACKSLASH_HOLDER)
    escapes = _CONTROL_ESCAPES if "\\u00" in held else _SHORT_CONTROL_ESCAPES
    for escape, character in escapes:
        if escape in held:
            held = held.replace(escape, character)
    return held.replace(_BACKSLASH_HOLDER, "\\\\")


def _sorted_view(obj: object, depth: int) -> object:
    """`obj` with every dict in sorted key order; `obj` itself if it already is.

    Refuses anything securesystemslib would not encode the same way. One frame
    per nesting level, so MAX_CANONICAL_DEPTH stays well inside the recursion limit.
    """
    kind = type(obj)
    if kind in _SCALAR_TYPES:
        return obj
    if depth >= MAX_CANONICAL_DEPTH:
        raise MetadataError(f"canonical JSON: nesting deeper than {MAX_CANONICAL_DEPTH} levels")
    if isinstance(obj, dict):
        keys = list(obj)
        if not set(map(type, keys)) <= {str}:
            _check_keys(keys)
        ordered_keys = sorted(keys) if len(keys) > 1 else keys
        changed = ordered_keys != keys
        values = [obj[key] for key in ordered_keys] if changed else list(obj.values())
    elif isinstance(obj, (list, tuple)):
        ordered_keys = None
        changed = False
        values = list(obj)
    elif isinstance(obj, str):
        return str(obj)  # a str subclass is written like str
    elif isinstance(obj, float):
        raise MetadataError("canonical JSON: floats are not allowed")
    else:
        raise MetadataError(f"canonical JSON: cannot encode type {kind.__name__}")
    value_types = set(map(type, values))
    if value_types <= _SCALAR_TYPES or (
        value_types == {dict} and depth + 1 < MAX_CANONICAL_DEPTH and _flat_and_sorted(values)
    ):
        value_types = set()  # nothing below needs a view: skip the per-value walk
    for index, value in enumerate(values if value_types else ()):
        if type(value) not in _SCALAR_TYPES:
            view = _sorted_view(value, depth + 1)
            if view is not value:
                changed = True
                values[index] = view
    if not changed:
        return obj
    if ordered_keys is None:
        return values
    return dict(zip(ordered_keys, values, strict=True))


def _flat_and_sorted(dicts: list[Any]) -> bool:
    """Whether all `dicts` have sorted string keys and scalar values only.

    Checks a link's 100,000 digest dicts ({"sha256": hex}) in a few C-level
    passes instead of one Python call each.
    """
    key_types = set(map(type, chain.from_iterable(dicts)))
    value_types = set(map(type, chain.from_iterable(map(dict.values, dicts))))
    if not key_types <= {str} or not value_types <= _SCALAR_TYPES:
        return False
    if max(map(len, dicts), default=0) < 2:
        return True
    return all(list(mapping) == sorted(mapping) for mapping in dicts if len(mapping) > 1)


def _check_keys(keys: list[object]) -> None:
    for key in keys:
        if not isinstance(key, str):
            raise MetadataError(
                f"canonical JSON: dict key must be a string, got {type(key).__name__}"
            )
