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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from custody_core.rule_syntax import ArtifactRule, ArtifactType, RuleKind, parse_rules

__all__ = [
    "ArtifactRule",
    "ArtifactType",
    "ArtifactsSource",
    "RuleApplication",
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


def filter_paths(paths: Collection[str], pattern: str) -> set[str]:
    """The paths that fnmatch `pattern` (as fnmatch.filter on POSIX, but set-fast)."""
    if not _MAGIC.search(pattern):
        return {pattern} if pattern in paths else set()
    if not pattern.strip("*"):
        return set(paths)
    match = _matcher(pattern)
    return {path for path in paths if match(path)}


def _with_slash(prefix: str) -> str:
    # The reference: os.path.join(prefix, "").replace("\\", "/").
    return posixpath.join(prefix, "").replace("\\", "/")


def _match(
    rule: ArtifactRule,
    queue: set[str],
    source: Artifacts,
    links: Mapping[str, ArtifactsSource],
) -> set[str]:
    dest_link = links.get(rule.dest_name)
    if dest_link is None:
        return set()
    dest = dest_link.materials if rule.dest_type is ArtifactType.MATERIALS else dest_link.products
    if rule.source_prefix:
        prefix = _with_slash(rule.source_prefix)
        stripped = {path[len(prefix) :]: path for path in queue if path.startswith(prefix)}
        candidates: Iterable[tuple[str, str]] = (
            (path, stripped[path]) for path in filter_paths(stripped.keys(), rule.pattern)
        )
    else:
        candidates = ((path, path) for path in filter_paths(queue, rule.pattern))
    consumed = set()
    for path, full_source_path in candidates:
        if rule.dest_prefix:
            full_dest_path = posixpath.join(rule.dest_prefix, path).replace("\\", "/")
        else:
            full_dest_path = path
        dest_hashes = dest.get(full_dest_path)
        if dest_hashes is not None and dest_hashes == source[full_source_path]:
            consumed.add(full_source_path)
    return consumed


def _violation(
    rule: ArtifactRule, queue: set[str], applied: Sequence[RuleApplication], where: str
) -> RuleViolation | None:
    if rule.kind is RuleKind.DISALLOW:
        matched = filter_paths(queue, rule.pattern)
        if not matched:
            return None
        paths = tuple(sorted(matched))
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        return RuleViolation(
            rule=rule,
            paths=paths,
            reason=f"{len(paths)} {where} not consumed by an earlier rule: {shown}",
        )
    if rule.pattern in queue:
        return None
    consumer = next((a.rule for a in applied if rule.pattern in a.consumed), None)
    if consumer is not None:
        reason = f"required {where[:-1]} {rule.pattern!r} was consumed by '{consumer.text}'"
    else:
        reason = f"required {where[:-1]} {rule.pattern!r} is not among the {where}"
    return RuleViolation(rule=rule, paths=(rule.pattern,), reason=reason)


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
    materials, products = item.materials, item.products
    source = materials if source_type is ArtifactType.MATERIALS else products
    queue = set(source)
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
                    remaining=frozenset(queue),
                )
            consumed: set[str] = set()
        elif kind is RuleKind.MATCH:
            consumed = _match(rule, queue, source, links)
        else:
            matched = filter_paths(queue, rule.pattern)
            if kind is RuleKind.ALLOW:
                consumed = matched
            elif kind is RuleKind.CREATE:
                consumed = {p for p in matched if p in products and p not in materials}
            elif kind is RuleKind.DELETE:
                consumed = {p for p in matched if p in materials and p not in products}
            else:  # MODIFY: in both, with different hash dicts
                consumed = {
                    p
                    for p in matched
                    if p in materials and p in products and materials[p] != products[p]
                }
        queue -= consumed
        trace.append(RuleApplication(rule=rule, consumed=frozenset(consumed)))
    return RuleListResult(
        item_name=item_name,
        source_type=source_type,
        trace=tuple(trace),
        violation=None,
        remaining=frozenset(queue),
    )
