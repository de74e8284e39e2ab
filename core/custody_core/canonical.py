"""Canonical JSON exactly as securesystemslib writes it for in-toto signatures.

The format (OLPC canonical JSON as implemented by `securesystemslib.formats`):
keys sorted by code point, no whitespace, only `\\` and `"` escaped inside
strings (control characters are written raw), integers in decimal, UTF-8.
Floats and any type other than dict/list/tuple/str/int/bool/None are refused.

Fast path: the C encoder of the standard `json` module with
`ensure_ascii=False, sort_keys=True, separators=(",", ":")` writes the same
bytes, with one difference: it escapes control characters (U+0000..U+001F)
that canonical JSON writes raw. Every backslash in its output starts an escape
sequence, so a left-to-right scan over escape sequences can undo exactly the
control-character escapes and keep `\\\\` and `\\"`. A type walker runs first
because `json` would accept floats and turn int/None/bool dict keys into
strings. Byte equality with securesystemslib is proven by a hypothesis test.
"""

from __future__ import annotations

import json
import re

from custody_core.errors import MetadataError

__all__ = ["MAX_CANONICAL_DEPTH", "encode_canonical"]

# Deeper structures are refused (also catches self-referencing containers).
MAX_CANONICAL_DEPTH = 512

# Both refuse NaN/Infinity and self-referencing containers (ValueError).
_SORTING_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
# For values whose dicts are all already in sorted key order: about twice as fast.
_ORDER_KEEPING_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=False, separators=(",", ":")
)

# Every escape the json C encoder emits with ensure_ascii=False.
_JSON_ESCAPE = re.compile(r'\\(?:u00[01][0-9a-f]|[bfnrt"\\])')
_ESCAPE_TO_CANONICAL: dict[str, str] = {
    '\\"': '\\"',
    "\\\\": "\\\\",
    **{json.dumps(chr(code), ensure_ascii=False)[1:-1]: chr(code) for code in range(0x20)},
}


def encode_canonical(obj: object) -> bytes:
    """Return the canonical JSON bytes of `obj`, as in-toto signs them.

    Raises MetadataError for floats, non-string dict keys, unsupported types,
    nesting deeper than MAX_CANONICAL_DEPTH, self-referencing containers,
    integers too long to print and strings that are not valid Unicode.
    """
    all_dicts_sorted = _check_types(obj)
    encoder = _ORDER_KEEPING_ENCODER if all_dicts_sorted else _SORTING_ENCODER
    return _encode_checked(obj, encoder)


def encode_canonical_presorted(obj: object) -> bytes:
    """Canonical JSON of a value that is known to be clean, without re-checking it.

    Only for values from `custody_core.strict_json.parse_json(..., sort_keys=True)`
    that hold no floats: every dict key is a string, every dict is in sorted key
    order, nesting is bounded and there are no other types. Anything else gives
    wrong bytes.
    """
    return _encode_checked(obj, _ORDER_KEEPING_ENCODER)


def _encode_checked(obj: object, encoder: json.JSONEncoder) -> bytes:
    try:
        text = encoder.encode(obj)
        if "\\" in text:
            text = _JSON_ESCAPE.sub(_to_canonical_escape, text)
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MetadataError("canonical JSON: string is not valid Unicode") from exc
    except (ValueError, TypeError, RecursionError) as exc:
        raise MetadataError(f"canonical JSON: cannot encode value ({exc})") from exc


def _to_canonical_escape(match: re.Match[str]) -> str:
    return _ESCAPE_TO_CANONICAL[match.group()]


def _check_types(root: object) -> bool:
    """Refuse anything securesystemslib would not encode the same way.

    Returns whether every dict already lists its keys in sorted order.
    """
    all_dicts_sorted = True
    seen: set[int] = set()  # containers already checked (shared or cyclic)
    stack: list[tuple[object, int]] = [(root, 0)]
    push = stack.append
    pop = stack.pop
    while stack:
        obj, depth = pop()
        kind = type(obj)
        if kind is str or kind is int or kind is bool or obj is None:
            continue
        if isinstance(obj, (dict, list, tuple)):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if depth >= MAX_CANONICAL_DEPTH:
                raise MetadataError(
                    f"canonical JSON: nesting deeper than {MAX_CANONICAL_DEPTH} levels"
                )
        if isinstance(obj, dict):
            for key, value in obj.items():
                if not isinstance(key, str):
                    raise MetadataError(
                        f"canonical JSON: dict key must be a string, got {type(key).__name__}"
                    )
                value_kind = type(value)
                if not (value_kind is str or value_kind is int or value_kind is bool):
                    push((value, depth + 1))
            if all_dicts_sorted and len(obj) > 1:
                keys = list(obj)
                all_dicts_sorted = keys == sorted(keys)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                item_kind = type(item)
                if not (item_kind is str or item_kind is int or item_kind is bool):
                    push((item, depth + 1))
        elif isinstance(obj, str):
            continue  # str subclasses are written like str
        elif isinstance(obj, float):
            raise MetadataError("canonical JSON: floats are not allowed")
        else:
            raise MetadataError(f"canonical JSON: cannot encode type {kind.__name__}")
    return all_dicts_sorted
