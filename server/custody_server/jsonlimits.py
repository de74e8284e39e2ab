"""JSON parsing of untrusted request bytes with a nesting limit.

Python's json module recurses once per nesting level, so a deeply nested
document raises RecursionError (or worse). Count the depth first, cheaply.
"""

from __future__ import annotations

import json
import re
from typing import Any

from custody_core.errors import MetadataError

MAX_DEPTH = 64


def loads_limited(data: bytes, *, what: str, max_depth: int = MAX_DEPTH) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MetadataError(f"{what} is not valid UTF-8 (byte {error.start})") from None
    _check_depth(text, what=what, max_depth=max_depth)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MetadataError(
            f"{what} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None


# Escapes go first, so that a string is then simply '"' up to the next '"'. (The
# single pattern '"(?:[^"\\]|\\.)*"' backtracks quadratically on input like '"\\"\\"...':
# see docs/PERFORMANCE.md#json-string-scanning.) Every step here is linear in the input.
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_BRACKET = re.compile(r"[\[\]{}]")


def depth_exceeds(text: str, max_depth: int) -> bool:
    """Whether brackets outside strings nest deeper than `max_depth`; malformed JSON is
    left to the parser (which names the problem)."""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub("", _ESCAPE.sub("", text))):
        if match.group() in "[{":
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def _check_depth(text: str, *, what: str, max_depth: int) -> None:
    if depth_exceeds(text, max_depth):
        raise MetadataError(f"{what} is nested deeper than {max_depth} levels")
