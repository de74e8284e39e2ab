"""A link's artifacts (path -> hash dict), read-only and compact.

A link lists up to 100,000s of artifacts, nearly always each with one digest of one
algorithm (`{"sha256": hex}`). The table then keeps path -> digest and the algorithm
once: a dict of one member costs more than the digest itself (184 bytes against 113 for
a SHA-256 hex string), and two tables of one algorithm compare their digests in C. Any
other link (several algorithms, an empty hash dict, algorithms that differ between
artifacts) keeps path -> hash dict. Either way the Mapping gives hash dicts.

Validation is the caller's (models.Link); this module only stores.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from itertools import repeat
from typing import Any, NoReturn

__all__ = ["FrozenArtifacts", "HashDict", "comparable_table"]

HashDict = Mapping[str, str]

_MISSING = object()


class FrozenArtifacts(Mapping[str, HashDict]):
    """path -> hash dict, read-only. Made from any Mapping of hash dicts (a copy), or by
    the JSON reader from a table it made (`of_digests`)."""

    __slots__ = ("_algorithm", "_table")

    _algorithm: str | None  # set: every hash dict is {_algorithm: _table[path]}
    _table: dict[str, Any]

    def __init__(self, artifacts: Mapping[str, HashDict] | None = None) -> None:
        artifacts = artifacts or {}
        found = _single_algorithm(list(artifacts.values()))
        if found is None:
            self._set(None, dict(artifacts))
        else:
            self._set(found[0], dict(zip(artifacts, found[1], strict=True)))

    @classmethod
    def of_digests(cls, algorithm: str, table: dict[str, str]) -> FrozenArtifacts:
        """path -> digest of `algorithm`, taken as it is, not copied: for the JSON reader,
        which made `table` and gives it up."""
        artifacts = cls.__new__(cls)
        artifacts._set(algorithm, table)
        return artifacts

    def _set(self, algorithm: str | None, table: dict[str, Any]) -> None:
        object.__setattr__(self, "_algorithm", algorithm)
        object.__setattr__(self, "_table", table)

    @property
    def algorithm(self) -> str | None:
        """The one algorithm of every hash dict, if there is one: then `digests()` gives
        the digests."""
        return self._algorithm

    def digests(self) -> ValuesView[Any]:
        """The stored values in path order: digests (one algorithm), else hash dicts."""
        return self._table.values()

    def __getitem__(self, path: str) -> HashDict:
        value = self._table[path]
        if self._algorithm is None:
            return value  # type: ignore[no-any-return]
        return {self._algorithm: value}

    def get(self, path: str, default: Any = None) -> Any:
        value = self._table.get(path, _MISSING)
        if value is _MISSING:
            return default
        return value if self._algorithm is None else {self._algorithm: value}

    def __contains__(self, path: object) -> bool:
        return path in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def keys(self) -> KeysView[str]:
        return self._table.keys()

    def items(self) -> ItemsView[str, HashDict]:
        if self._algorithm is None:
            return self._table.items()
        return _CompactItems(self)

    def values(self) -> ValuesView[HashDict]:
        if self._algorithm is None:
            return self._table.values()
        return _CompactValues(self)

    def to_dict(self) -> dict[str, dict[str, str]]:
        """A plain copy: path -> hash dict."""
        return {path: dict(hashes) for path, hashes in self.items()}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenArtifacts) and other._algorithm == self._algorithm:
            return self._table == other._table
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self) == len(other) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrozenArtifacts({self.to_dict()!r})"

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("link artifacts are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = __setattr__ = __delattr__ = _read_only

    def __reduce__(self) -> tuple[type[FrozenArtifacts], tuple[dict[str, dict[str, str]]]]:
        return (type(self), (self.to_dict(),))  # copied and pickled as plain hash dicts


class _CompactItems(ItemsView[str, HashDict]):
    _mapping: FrozenArtifacts

    def __iter__(self) -> Iterator[tuple[str, HashDict]]:
        algorithm = self._mapping.algorithm
        assert algorithm is not None
        for path, digest in zip(self._mapping.keys(), self._mapping.digests(), strict=True):
            yield path, {algorithm: digest}


class _CompactValues(ValuesView[HashDict]):
    _mapping: FrozenArtifacts

    def __iter__(self) -> Iterator[HashDict]:
        algorithm = self._mapping.algorithm
        assert algorithm is not None
        for digest in self._mapping.digests():
            yield {algorithm: digest}


def _single_algorithm(hash_dicts: list[Any]) -> tuple[str, list[Any]] | None:
    """The algorithm and the digests if every hash dict is a dict of that one algorithm
    alone (the usual link), found with one look-up per dict, in C. Else None."""
    if not hash_dicts or type(hash_dicts[0]) is not dict or len(hash_dicts[0]) != 1:
        return None
    algorithm = next(iter(hash_dicts[0]))
    if type(algorithm) is not str:
        return None
    try:  # dict.__getitem__ also checks the type: TypeError for anything but a dict
        digests = list(map(dict.__getitem__, hash_dicts, repeat(algorithm)))
    except (KeyError, TypeError):
        return None
    # Each has this key; with one key each, it is the only one.
    return (algorithm, digests) if sum(map(len, hash_dicts)) == len(hash_dicts) else None


def comparable_table(artifacts: Mapping[str, HashDict]) -> tuple[Mapping[str, Any], object]:
    """A table path -> value, and its kind: the values of two tables of one kind compare
    as their hash dicts do (FrozenArtifacts of one algorithm: the digests)."""
    if isinstance(artifacts, FrozenArtifacts):
        return artifacts._table, artifacts._algorithm
    return artifacts, None
