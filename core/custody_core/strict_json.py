"""Strict parsing of untrusted JSON: UTF-8 only, no duplicate keys, bounded depth.

Every failure is a MetadataError with a message that says what was wrong and
where; no RecursionError, UnicodeDecodeError or JSONDecodeError escapes.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any

from custody_core.errors import MetadataError

__all__ = ["DEFAULT_MAX_DEPTH", "ParsedJson", "parse_json"]

DEFAULT_MAX_DEPTH = 64

_by_key = itemgetter(0)


@dataclass(frozen=True)
class ParsedJson:
    """A parsed document. Its dicts list their keys in sorted order.

    `has_floats` says whether any number was written with a fraction or an
    exponent (canonical JSON refuses floats).
    """

    value: Any
    has_floats: bool


def parse_json(data: bytes, *, what: str, max_depth: int = DEFAULT_MAX_DEPTH) -> ParsedJson:
    """Parse `data`; `what` names the document in error messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MetadataError(f"{what}: expected bytes, got {type(data).__name__}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{what}: not valid UTF-8 (at byte {exc.start})") from exc
    float_count = 0

    def parse_float(literal: str) -> float:
        nonlocal float_count
        float_count += 1
        return float(literal)

    try:
        with _garbage_collection_paused():
            value = json.loads(
                text,
                object_pairs_hook=_sorted_unique_object,
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
    if _depth_exceeds(value, max_depth):
        raise MetadataError(f"{what}: JSON nested deeper than {max_depth} levels")
    return ParsedJson(value=value, has_floats=float_count > 0)


@contextlib.contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """Pause the cyclic GC while parsing: a link with 100,000 artifacts allocates
    hundreds of thousands of dicts, and the collections they trigger (which can
    find no garbage, parsing makes no cycles) cost about a quarter of the parse.
    Nested or concurrent pauses are safe: only the outermost one that found the
    collector enabled turns it back on, and a collection delayed is not lost.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key if len(key) <= 64 else key[:64] + "..."


def _sorted_unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) < 2:
        return dict(pairs)
    pairs.sort(key=_by_key)  # stable: equal keys stay adjacent
    result = dict(pairs)
    if len(result) != len(pairs):
        for (key, _), (next_key, _) in pairwise(pairs):
            if key == next_key:
                raise _DuplicateKeyError(key)
    return result


class _ConstantError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _ConstantError(name)


def _depth_exceeds(root: Any, max_depth: int) -> bool:
    """Whether containers nest more than `max_depth` deep (top level is depth 1).

    Level by level, with comprehensions over the whole level rather than a call
    per container: a link has one level with 100,000 small dicts.
    """
    level = [root] if type(root) is dict or type(root) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        dicts = [container for container in level if type(container) is dict]
        children = list(chain.from_iterable(map(dict.values, dicts)))
        if len(dicts) != len(level):
            children.extend(
                chain.from_iterable(container for container in level if type(container) is list)
            )
        if set(map(type, children)).isdisjoint(_CONTAINER_TYPES):
            return False
        level = [child for child in children if type(child) is dict or type(child) is list]
    return False


_CONTAINER_TYPES = frozenset({dict, list})
