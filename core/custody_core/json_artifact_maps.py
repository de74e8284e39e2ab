"""How the one JSON reader (custody_core.strict_json) reads artifact maps compact.

An artifact map is a link's `materials` or `products`, `{path: {algorithm: digest}}`. A
link of 100,000 artifacts would hold 100,000 dicts of one member each; read compact it
holds custody_core.artifacts.FrozenArtifacts (path -> digest) instead. The C parser
calls `digest_hook` for every object it makes: an object whose one member is the
algorithm with a string becomes that string (one string for the equal digests of
consecutive maps and links), and is noted. `settle_maps` then makes
the maps FrozenArtifacts, but only if what the hook took is exactly their hash dicts (a
hash dict anywhere else, or a map with any other value, and the document is read again
without the hook). The reader's own checks see the same document: the members a compact
map holds out of their sight are counted, its keys' order checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import is_
from typing import Any

from custody_core.artifacts import FrozenArtifacts

__all__ = ["ArtifactMaps", "NotCompact", "Settled", "algorithm_hint", "digest_hook",
           "settle_maps"]


@dataclass(frozen=True)
class ArtifactMaps:
    """Which members hold artifact maps, to be read compact: the members `names` of the
    top-level member `root`, or of the document itself (`root` None). With
    `canonical_text`, only when the text is the canonical form of `root` but for its
    escapes (no whitespace, keys in order, no floats, no `-0`): its caller takes the
    canonical bytes from the text, never from the value."""

    root: str | None
    names: frozenset[str]
    canonical_text: bool = False


# The algorithm of a compact document's first artifact (a hint for the hook only:
# sha256 when there is none; anything else is taken as written).
_ALGORITHM_HINT = re.compile(
    r'"(?:materials|products)":\{"[^"\\]{0,4096}":\{"([0-9A-Za-z_-]{1,64})":"')


def algorithm_hint(text: str) -> str:
    """The algorithm the hook takes: that of the first artifact of a compact text."""
    for member in ('"materials":{"', '"products":{"'):
        start = text.find(member)
        found = _ALGORITHM_HINT.match(text, start) if start >= 0 else None
        if found:
            return found.group(1)
    return "sha256"


_LOOK_AHEAD = 16


def digest_hook(algorithm: str, digests: list[str],
                earlier: Sequence[str]) -> Callable[[dict[str, Any]], Any]:
    """object_hook for artifact maps: an object whose one member is `algorithm` with a
    string becomes that string, noted in `digests`; any other object stays.

    A map's digest equal to the one at the same place in the map before it (a step's
    products are mostly its materials), or for a document's first map in `earlier` (the
    previous step's products, its materials), is that string: one string where a chain
    of links would hold several equal ones. Places are followed by position, past new
    paths and past up to _LOOK_AHEAD paths gone at a time, without hashing 100,000
    digests."""
    note = digests.append
    candidates: Sequence[str] = earlier
    place, end = 0, len(earlier)
    start = 0  # where the digests of the map being read begin in `digests`

    def hook(obj: dict[str, Any]) -> Any:
        nonlocal candidates, place, end, start
        if len(obj) == 1:
            digest = obj.get(algorithm)
            if type(digest) is str:
                if place < end:
                    if candidates[place] == digest:
                        digest = candidates[place]
                        place += 1
                    else:  # paths gone: look a few places on; a new path: stay
                        try:
                            found = candidates.index(digest, place + 1,
                                                     min(place + _LOOK_AHEAD, end))
                        except ValueError:
                            pass
                        else:
                            digest = candidates[found]
                            place = found + 1
                note(digest)
                return digest
        if len(digests) > start:  # a map's hash dicts ended: the next map follows this one
            candidates, place, end, start = digests, start, len(digests), len(digests)
        return obj

    return hook


class NotCompact(Exception):
    """What the hook took is not exactly the artifact maps' hash dicts."""


@dataclass(frozen=True)
class Settled:
    """A value read with the hook, and what the reader's own walk cannot see of it."""

    value: Any
    hidden_members: int
    maps_sorted: bool


def settle_maps(root: Any, names: frozenset[str], algorithm: str,
                digests: list[str]) -> Settled:
    """`root` as read with digest_hook, its members `names` made FrozenArtifacts. Raises
    NotCompact unless the hook took exactly their hash dicts: then `root` must be read
    again without it (a hash dict elsewhere, a map of other values)."""
    if not digests:
        return Settled(root, 0, True)
    if type(root) is not dict:
        raise NotCompact
    tables = [(name, table) for name, table in root.items()
              if name in names and type(table) is dict and table]
    if sum(map(len, (table for _, table in tables))) != len(digests) or not all(
            map(is_, chain.from_iterable(table.values() for _, table in tables), digests)):
        raise NotCompact
    hidden = 0
    in_order = True
    for name, table in tables:
        root[name] = FrozenArtifacts.of_digests(algorithm, table)
        hidden += 2 * len(table)  # each path's member and its hash dict's one member
        in_order = in_order and _ascending(list(table))
    return Settled(root, hidden, in_order)


def _ascending(keys: list[str]) -> bool:
    """Whether distinct `keys` are in ascending order (a short head first spares an
    unsorted list a full sort)."""
    head = keys[:32]
    return head == sorted(head) and keys == sorted(keys)
