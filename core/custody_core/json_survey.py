"""One walk over a parsed JSON value: members, depth, floats and key order.

Level by level, with C-level passes over the whole level (map, chain, compress) rather
than a Python call per container: a link has one level with 200,000 small dicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate, chain, compress, islice, repeat
from operator import is_, lt
from typing import Any

__all__ = ["Survey", "survey"]


@dataclass(frozen=True)
class Survey:
    """What a JSON value holds.

    `members` is the sum of len(dict) over all its objects, `depth` how deep containers
    nest (a scalar is 0, `[]` is 1), `keys_sorted` whether every object lists its keys in
    code-point order.
    """

    members: int
    depth: int
    has_floats: bool
    keys_sorted: bool

    @classmethod
    def of_object(cls, value: dict[str, Any], surveys: Iterable[Survey]) -> Survey:
        """The survey of the object `value` from the surveys of its values."""
        inner = list(surveys)
        return cls(
            members=len(value) + sum(s.members for s in inner),
            depth=1 + max((s.depth for s in inner), default=0),
            has_floats=any(s.has_floats for s in inner),
            keys_sorted=_keys_sorted([value]) and all(s.keys_sorted for s in inner),
        )


def survey(value: Any) -> Survey:
    """Walk `value` (as the json module builds it) once, level by level."""
    dicts, lists = _containers([value], {type(value)})
    members = depth = 0
    has_floats = type(value) is float
    keys_sorted = True
    while dicts or lists:
        depth += 1
        members += sum(map(len, dicts))
        keys_sorted = keys_sorted and _keys_sorted(dicts)
        children = list(chain.from_iterable(map(dict.values, dicts)))
        children.extend(chain.from_iterable(lists))
        kinds = set(map(type, children))
        has_floats = has_floats or float in kinds
        dicts, lists = _containers(children, kinds)
    return Survey(members=members, depth=depth, has_floats=has_floats, keys_sorted=keys_sorted)


def _containers(values: list[Any], kinds: set[type]) -> tuple[list[Any], list[Any]]:
    """The dicts and the lists among `values` (whose types are `kinds`)."""
    return _of_type(values, dict, kinds), _of_type(values, list, kinds)


def _of_type(values: list[Any], kind: type, kinds: set[type]) -> list[Any]:
    if kind not in kinds:
        return []
    if len(kinds) == 1:
        return values
    return list(compress(values, map(is_, map(type, values), repeat(kind))))


def _keys_sorted(dicts: list[dict[str, Any]]) -> bool:
    """Whether every dict lists its (distinct) keys in ascending order.

    All keys in one list, every neighbour compared at once; the pairs that straddle two
    dicts are then taken out of the count.
    """
    if max(map(len, dicts), default=0) < 2:
        return True
    several = list(compress(dicts, map(lt, repeat(1), map(len, dicts))))
    keys = list(chain.from_iterable(several))
    ascending = list(map(lt, keys, islice(keys, 1, None)))
    # Index of the pair (last key of one dict, first key of the next).
    straddling = list(islice(accumulate(map(len, several), initial=-1), 1, len(several)))
    ascending_straddling = sum(map(ascending.__getitem__, straddling))
    ascending_inside = sum(ascending) - ascending_straddling
    return bool(ascending_inside == len(ascending) - len(straddling))
