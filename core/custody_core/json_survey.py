"""One walk over parsed JSON values: how many members, how deep, keys in order.

Level by level, with C-level passes (map, chain, compress) over a level rather than a
Python call per container: a link has one level with 200,000 small dicts. The raw text
says how many containers there are; once all are found, the values of the last level
(scalars, then) are not looked at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate, chain, compress, islice, repeat
from operator import is_, lt
from typing import Any

__all__ = ["Survey", "survey"]

# Levels with at most this many containers are split container by container.
_FEW = 64


@dataclass(frozen=True)
class Survey:
    """What some JSON values hold.

    `members` is the sum of len(dict) over all objects inside, `depth` how deep their
    containers nest (scalars only: 0, `[]`: 1), `keys_sorted` whether every object
    lists its keys in code-point order.
    """

    members: int
    depth: int
    keys_sorted: bool


def survey(values: list[Any], *, containers: int) -> Survey:
    """Walk `values` (as the json module builds them) once, level by level.

    `containers` is how many objects and arrays `values` hold at most (as written in
    the raw text: duplicate keys can only drop some).
    """
    dicts, lists = _split(values)
    found = members = depth = 0
    keys_sorted = True
    while dicts or lists:
        depth += 1
        found += len(dicts) + len(lists)
        sizes = set(map(len, dicts))
        # A level of one-member objects (a link's hash dicts) needs this one pass.
        members += len(dicts) if sizes == {1} else sum(map(len, dicts))
        if keys_sorted and max(sizes, default=0) > 1:
            keys_sorted = _keys_sorted(dicts)
        if found >= containers:
            break  # all found: nothing below this level is a container
        dicts, lists = _next_level(dicts, lists)
    return Survey(members=members, depth=depth, keys_sorted=keys_sorted)


def _next_level(dicts: list[Any], lists: list[Any]) -> tuple[list[Any], list[Any]]:
    """The dicts and the lists among the values of `dicts` and the items of `lists`."""
    if len(dicts) + len(lists) > _FEW:
        children = list(chain.from_iterable(map(dict.values, dicts)))
        children.extend(chain.from_iterable(lists))
        return _split(children)
    # Few containers (a link's artifact dicts): a uniform one needs no filtering.
    next_dicts: list[Any] = []
    next_lists: list[Any] = []
    for container in chain(dicts, lists):
        values = container.values() if type(container) is dict else container
        kinds = set(map(type, values))
        next_dicts.extend(_of_type(values, dict, kinds))
        next_lists.extend(_of_type(values, list, kinds))
    return next_dicts, next_lists


def _split(values: list[Any]) -> tuple[list[Any], list[Any]]:
    """The dicts and the lists among `values`."""
    kinds = set(map(type, values))
    return list(_of_type(values, dict, kinds)), list(_of_type(values, list, kinds))


def _of_type(values: Iterable[Any], kind: type, kinds: set[type]) -> Iterable[Any]:
    if kind not in kinds:
        return ()
    if len(kinds) == 1:
        return values
    return compress(values, map(is_, map(type, values), repeat(kind)))


def _ascending(keys: list[str]) -> bool:
    """Whether distinct `keys` are in ascending order. Sorting sorted strings costs one
    memcmp a key in C; a short head checked first spares an unsorted list a full sort."""
    head = keys[:32]
    return head == sorted(head) and keys == sorted(keys)


def _keys_sorted(dicts: list[dict[str, Any]]) -> bool:
    """Whether every dict lists its (distinct) keys in ascending order."""
    several = list(compress(dicts, map(lt, repeat(1), map(len, dicts))))
    if len(several) <= _FEW:
        return all(map(_ascending, map(list, several)))
    # Many small dicts: all keys in one list, every neighbour compared at once; the
    # pairs that straddle two dicts are then taken out of the count.
    keys = list(chain.from_iterable(several))
    ascending = list(map(lt, keys, islice(keys, 1, None)))
    # Index of the pair (last key of one dict, first key of the next).
    straddling = list(islice(accumulate(map(len, several), initial=-1), 1, len(several)))
    ascending_inside = sum(ascending) - sum(map(ascending.__getitem__, straddling))
    return bool(ascending_inside == len(ascending) - len(straddling))
