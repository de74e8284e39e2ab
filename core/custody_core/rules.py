"""The artifact-rule engine, with the semantics of in_toto.verifylib.verify_item_rules.

Like a firewall: all materials (or products) of an item go into a queue; each rule in
order consumes the queued paths it matches; only DISALLOW (a queued path matches) and
REQUIRE (the path is not queued) fail. Patterns are fnmatch patterns where `*` crosses
`/`. MATCH and MODIFY compare whole hash dicts.

Fast on large links: the queue is a set, literal patterns are set look-ups, `*` takes
everything without a regex, other patterns are compiled once; nothing is re-serialized.
The result keeps a trace of which rule consumed which paths.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import compress, filterfalse, islice, repeat
from operator import eq
from typing import Protocol

from custody_core.artifacts import comparable_table
from custody_core.rule_syntax import ArtifactRule, ArtifactType, RuleKind, parse_rules

__all__ = [
    "ArtifactRule",
    "ArtifactType",
    "ArtifactsSource",
    "RuleApplication",
    "RuleKind",
    "RuleListResult",
    "RuleViolation",
    "apply_rules",
    "filter_paths",
    "parse_rules",
]

HashDict = Mapping[str, str]
Artifacts = Mapping[str, HashDict]


class ArtifactsSource(Protocol):
    """Anything with the artifacts of a performed step or inspection (e.g. models.Link)."""

    @property
    def materials(self) -> Artifacts: ...

    @property
    def products(self) -> Artifacts: ...


@dataclass(frozen=True)
class RuleApplication:
    """One line of the trace: `rule` consumed `consumed` from the queue."""

    rule: ArtifactRule
    consumed: frozenset[str]


@dataclass(frozen=True)
class RuleViolation:
    """A DISALLOW that matched queued paths, or a REQUIRE that did not find its path."""

    rule: ArtifactRule
    paths: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class RuleListResult:
    """Outcome of one rule list (an item's expected_materials or expected_products)."""

    item_name: str
    source_type: ArtifactType
    trace: tuple[RuleApplication, ...]
    violation: RuleViolation | None
    remaining: frozenset[str]

    @property
    def passed(self) -> bool:
        return self.violation is None

    def consumer_of(self, path: str) -> ArtifactRule | None:
        """The rule that consumed `path`, if one did."""
        for application in self.trace:
            if path in application.consumed:
                return application.rule
        return None


_MAGIC = re.compile(r"[*?[]")


@lru_cache(maxsize=1024)
def _matcher(pattern: str) -> Callable[[str], object]:
    return re.compile(fnmatch.translate(pattern)).match


def _matching(
    ordered: Sequence[str], members: Collection[str], pattern: str, *, is_sorted: bool = False
) -> list[str]:
    """The paths of `ordered` that fnmatch `pattern`, in order; `members` holds the same paths.

    Common shapes skip the regex: a literal is a look-up, `*` takes all, `dir/*` and
    `*.ext` (one `*`, at an end, since `*` crosses `/`) are prefix and suffix tests.
    All loops run in C (filter/compress over bound methods). In sorted paths, those
    with a prefix are one run, found by bisection.
    """
    if not _MAGIC.search(pattern):
        return [pattern] if pattern in members else []
    if not pattern.strip("*"):
        return list(ordered)
    stem = pattern[:-1] if pattern.endswith("*") else pattern[1:] if pattern[0] == "*" else None
    if stem is not None and not _MAGIC.search(stem):
        if pattern.endswith("*") and is_sorted:
            start = bisect_left(ordered, stem)  # the first path >= the prefix
            end = bisect_left(ordered, True, start, key=partial(_lacks_prefix, stem))
            return list(ordered[start:end])
        test = str.startswith if pattern.endswith("*") else str.endswith
        return list(compress(ordered, map(test, ordered, repeat(stem))))
    return list(filter(_matcher(pattern), ordered))


def _lacks_prefix(prefix: str, path: str) -> bool:
    return not path.startswith(prefix)


def filter_paths(paths: Collection[str], pattern: str) -> set[str]:
    """The paths that fnmatch `pattern` (as fnmatch.filter on POSIX, but fast)."""
    return set(_matching(list(paths), paths, pattern))


class _Queue:
    """The unconsumed paths: a set, and the same paths in the link's order.

    Walking paths in the order the link lists them (the order their objects were made
    in) keeps 100,000-artifact comparisons cache-friendly: about twice as fast as
    walking a set. The set stays a frozenset until a rule takes part of it, so that a
    rule taking all of it records the queue's own set in the trace (no copy).
    """

    def __init__(self, source: Artifacts) -> None:
        self.ordered = list(source)
        self.paths: frozenset[str] | set[str] = frozenset(self.ordered)
        # Links list their paths sorted (timsort confirms that with one memcmp a path; a
        # short head first spares an unsorted link a full sort). Taking paths out keeps
        # the rest sorted.
        head = self.ordered[:32]
        self.is_sorted = head == sorted(head) and self.ordered == sorted(self.ordered)

    def matching(self, pattern: str) -> list[str]:
        return _matching(self.ordered, self.paths, pattern, is_sorted=self.is_sorted)

    def as_set(self, paths: Collection[str]) -> frozenset[str]:
        """Distinct queued `paths` as a frozenset; the queue's own if they are all of it."""
        if len(paths) == len(self.paths) and isinstance(self.paths, frozenset):
            return self.paths
        return frozenset(paths)

    def consume(self, consumed: frozenset[str]) -> None:
        """Take `consumed` (queued paths) out of the queue."""
        if len(consumed) == len(self.paths):  # a rule often takes everything left
            self.paths = frozenset()
            self.ordered = []
            return
        if not consumed:
            return
        if isinstance(self.paths, frozenset):
            self.paths = set(self.paths)  # one copy, then removals cost what they take
        self.paths -= consumed
        # Filter the order by the smaller set: its look-ups stay in the CPU cache.
        if len(consumed) < len(self.paths):
            self.ordered = list(filterfalse(consumed.__contains__, self.ordered))
        else:
            self.ordered = list(filter(self.paths.__contains__, self.ordered))


def _with_slash(prefix: str) -> str:
    # The reference: os.path.join(prefix, "").replace("\\", "/").
    return posixpath.join(prefix, "").replace("\\", "/")


def _same_hashes(
    source_paths: list[str], source: Artifacts, dest_paths: list[str], dest: Artifacts
) -> list[str]:
    """The source paths whose hash dict equals the one at the paired dest path.

    Usually all are equal: two lists compared at once is twice as fast as pairing them
    one by one; only a mismatch pays for the pairwise pass. Links of one algorithm
    compare their digests (custody_core.artifacts).
    """
    source_table, source_kind = comparable_table(source)
    dest_table, dest_kind = comparable_table(dest)
    if source_kind != dest_kind:  # one algorithm against another, or hash dicts
        source_table, dest_table = source, dest
    source_hashes = _values_at(source_paths, source_table)
    dest_hashes = _values_at(dest_paths, dest_table)
    if source_hashes == dest_hashes:
        return source_paths
    return list(compress(source_paths, map(eq, source_hashes, dest_hashes)))


def _values_at(paths: list[str], artifacts: Mapping[str, object]) -> list[object]:
    """The hash dict of each path (None if absent).

    Links list their artifacts sorted, so `paths` are often a run of the link's own
    list (all of it, or the paths under one directory): then the values are taken as
    they are, with no look-up (each a cache miss in a dict of 100,000 paths). The
    comparison of the run with `paths` makes sure of it, sorted or not.
    """
    keys = list(artifacts)
    if paths and len(paths) <= len(keys):
        start = 0 if len(paths) == len(keys) else bisect_left(keys, paths[0])
        end = start + len(paths)
        if keys[start:end] == paths:
            return list(islice(artifacts.values(), start, end))
    return list(map(artifacts.get, paths))


def _match(
    rule: ArtifactRule,
    queue: _Queue,
    source: Artifacts,
    links: Mapping[str, ArtifactsSource],
) -> frozenset[str]:
    dest_link = links.get(rule.dest_name)
    if dest_link is None:
        return frozenset()
    dest = dest_link.materials if rule.dest_type is ArtifactType.MATERIALS else dest_link.products
    if rule.source_prefix:
        prefix = _with_slash(rule.source_prefix)
        stripped = {p[len(prefix) :]: p for p in queue.ordered if p.startswith(prefix)}
        paths = _matching(list(stripped), stripped, rule.pattern)
        source_paths = [stripped[path] for path in paths]
    else:
        paths = source_paths = queue.matching(rule.pattern)
    if rule.dest_prefix:
        # The reference: os.path.join(dest_prefix, path).replace("\\", "/").
        dest_prefix = rule.dest_prefix
        dest_paths = [posixpath.join(dest_prefix, path).replace("\\", "/") for path in paths]
    else:
        dest_paths = paths
    return queue.as_set(_same_hashes(source_paths, source, dest_paths, dest))


def _violation(
    rule: ArtifactRule, queue: _Queue, applied: Sequence[RuleApplication], where: str
) -> RuleViolation | None:
    if rule.kind is RuleKind.DISALLOW:
        matched = queue.matching(rule.pattern)
        if not matched:
            return None
        paths = tuple(sorted(matched))
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        return RuleViolation(
            rule=rule,
            paths=paths,
            reason=f"{len(paths)} {where} not consumed by an earlier rule: {shown}",
        )
    if rule.pattern in queue.paths:
        return None
    consumer = next((a.rule for a in applied if rule.pattern in a.consumed), None)
    if consumer is not None:
        reason = f"required {where[:-1]} {rule.pattern!r} was consumed by '{consumer.text}'"
    else:
        reason = f"required {where[:-1]} {rule.pattern!r} is not among the {where}"
    return RuleViolation(rule=rule, paths=(rule.pattern,), reason=reason)


def _consumed_by_type(
    kind: RuleKind, queue: _Queue, pattern: str, *, from_products: bool, item: ArtifactsSource
) -> frozenset[str]:
    """What ALLOW, CREATE, DELETE or MODIFY with `pattern` consumes from the queue.

    The queue holds only the source's paths, which settles one side of each test: from
    products, every path is in products (CREATE: those not in materials; DELETE:
    nothing), and from materials the other way round.
    """
    matched = queue.matching(pattern)
    if kind is RuleKind.ALLOW:
        return queue.as_set(matched)
    materials, products = item.materials, item.products
    if kind is RuleKind.CREATE:  # in products, not in materials
        return _absent_from(queue.as_set(matched), materials) if from_products else frozenset()
    if kind is RuleKind.DELETE:  # in materials, not in products
        return frozenset() if from_products else _absent_from(queue.as_set(matched), products)
    # MODIFY: in both, with different hash dicts
    other = comparable_table(materials if from_products else products)[0]
    both = list(filter(other.__contains__, matched))
    return frozenset(both).difference(_same_hashes(both, materials, both, products))


def _absent_from(paths: frozenset[str], artifacts: Artifacts) -> frozenset[str]:
    """The `paths` that are not keys of `artifacts`.

    Few paths: a look-up each. Many: walk `artifacts` in its order with set look-ups,
    twice as fast as a dict look-up per path (each a cache miss in 100,000 keys).
    """
    table = comparable_table(artifacts)[0]  # a dict's own look-ups, not a Mapping's
    if len(paths) * 4 < len(table):
        absent = frozenset(filterfalse(table.__contains__, paths))
        return paths if len(absent) == len(paths) else absent
    if paths.isdisjoint(table.keys()):  # the usual CREATE or DELETE: takes them all
        return paths
    return paths.difference(table.keys())


def apply_rules(
    *,
    item_name: str,
    source_type: ArtifactType,
    rules: Sequence[ArtifactRule],
    links: Mapping[str, ArtifactsSource],
) -> RuleListResult:
    """Apply `rules` to the `source_type` artifacts of `links[item_name]`.

    Stops at the first violation, like the reference. `links` maps step (and inspection)
    names to their (reduced) link; MATCH rules look their destination up there and consume
    nothing if it is absent. Precondition: `item_name` is in `links`.
    """
    item = links[item_name]
    from_products = source_type is ArtifactType.PRODUCTS
    source = item.products if from_products else item.materials
    queue = _Queue(source)
    trace: list[RuleApplication] = []
    for rule in rules:
        kind = rule.kind
        if kind in (RuleKind.DISALLOW, RuleKind.REQUIRE):
            violation = _violation(rule, queue, trace, str(source_type))
            if violation is not None:
                return RuleListResult(
                    item_name=item_name,
                    source_type=source_type,
                    trace=tuple(trace),
                    violation=violation,
                    remaining=frozenset(queue.paths),
                )
            consumed: frozenset[str] = frozenset()
        elif kind is RuleKind.MATCH:
            consumed = _match(rule, queue, source, links)
        else:
            consumed = _consumed_by_type(
                kind, queue, rule.pattern, from_products=from_products, item=item
            )
        queue.consume(consumed)
        trace.append(RuleApplication(rule=rule, consumed=consumed))
    return RuleListResult(
        item_name=item_name,
        source_type=source_type,
        trace=tuple(trace),
        violation=None,
        remaining=frozenset(queue.paths),
    )
