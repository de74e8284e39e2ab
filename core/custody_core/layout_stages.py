"""Pipeline stages over a (sub)layout as a whole: layout signatures, parameters, rule
lists, command alignment, the summary link. Each returns findings; none raises for a
verification failure (supply_chain.py decides when to stop)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import TypeVar

from custody_core.envelope import Envelope
from custody_core.errors import MetadataError
from custody_core.key_policy import KeyPolicy
from custody_core.keys import PublicKey
from custody_core.models import Inspection, Layout, Link, Step
from custody_core.rules import ArtifactRule, ArtifactsSource, ArtifactType, apply_rules
from custody_core.substitution import check_parameters, placeholder_names
from custody_core.verdict import (
    Failure,
    Stage,
    TraceEntry,
    VerdictWarning,
    failure,
    warning,
)

_Item = TypeVar("_Item", Step, Inspection)
StepChain = list[tuple[Step, list[tuple[str, Link]]]]  # each step's (file name, link)


def layout_signature_failures(
    envelope: Envelope, layout_keys: Mapping[str, PublicKey], policy: KeyPolicy, now: datetime
) -> list[Failure]:
    """Every given layout key must be acceptable now and have signed (like in-toto-verify)."""
    if not layout_keys:
        return [failure(Stage.LAYOUT_SIGNATURE, "no layout key given: at least one is needed")]
    failures = []
    for keyid in layout_keys:
        refusal = policy.refusal(keyid, now)
        if refusal is not None:
            failures.append(
                failure(Stage.LAYOUT_SIGNATURE, f"layout key {keyid[:8]} is refused: {refusal}")
            )
    verified = envelope.verified_keyids(layout_keys)
    failures.extend(
        failure(Stage.LAYOUT_SIGNATURE, f"no valid layout signature by key {keyid[:8]}")
        for keyid in layout_keys
        if keyid not in verified
    )
    return failures


def substitute_layout(
    layout: Layout, parameters: Mapping[str, str]
) -> tuple[Layout, list[Failure]]:
    """The layout with `{NAME}` replaced; a failure per item that cannot be substituted."""
    try:
        check_parameters(parameters)
    except MetadataError as exc:
        return layout, [failure(Stage.PARAMETERS, str(exc))]
    failures: list[Failure] = []

    def substituted(item: _Item) -> _Item | None:
        try:
            return item.substituted(parameters)
        except MetadataError as exc:
            failures.append(failure(Stage.PARAMETERS, str(exc), step=item.name))
            return None

    steps = [substituted(step) for step in layout.steps]
    inspections = [substituted(inspection) for inspection in layout.inspections]
    result = replace(
        layout,
        steps=tuple(step for step in steps if step is not None),
        inspections=tuple(item for item in inspections if item is not None),
    )
    return result, failures


def placeholder_warnings(layout: Layout, prefix: str) -> list[VerdictWarning]:
    """Without parameters nothing is substituted (as in-toto-verify, which has no way to
    pass any): say where the layout holds text that looks like a `{NAME}` placeholder."""
    found: dict[str, list[str]] = {}
    items: tuple[Step | Inspection, ...] = (*layout.steps, *layout.inspections)
    for item in items:
        texts = item.run if isinstance(item, Inspection) else item.expected_command
        rules = (*item.expected_materials, *item.expected_products)
        for text in (*texts, *(token for rule in rules for token in rule.tokens)):
            for name in placeholder_names(text):
                found.setdefault(name, [])
                if item.name not in found[name]:
                    found[name].append(item.name)
    if not found:
        return []
    names = ", ".join(f"{{{name}}} ({', '.join(prefix + n for n in where)})"
                      for name, where in sorted(found.items()))
    return [
        warning(
            Stage.PARAMETERS,
            f"no parameters were given, so nothing was substituted (as in-toto-verify): "
            f"the layout holds {names}; if these are parameters, give their values",
        )
    ]


def unusable_key_warnings(layout: Layout, prefix: str) -> list[VerdictWarning]:
    """A warning for each listed key that cannot verify anything (links it signs are
    ignored); in-toto 3.1 refuses the whole layout when the scheme is unknown to it."""
    where = f" of sublayout {prefix.rstrip('/')}" if prefix else ""
    return [
        warning(
            Stage.LINKS,
            f"layout key {keyid[:8]}{where} cannot verify: {reason}; links it signs do "
            "not count (in-toto-verify refuses such a layout)",
        )
        for keyid, reason in layout.unusable_keys.items()
    ]


def open_rule_list_warnings(layout: Layout, prefix: str) -> list[VerdictWarning]:
    """A warning for each rule list that does not end in `DISALLOW *`."""
    items: list[tuple[Stage, Step | Inspection]] = [(Stage.STEP_RULES, s) for s in layout.steps]
    items += [(Stage.INSPECTION_RULES, i) for i in layout.inspections]
    warnings = []
    for stage, item in items:
        rule_lists = (("materials", item.expected_materials), ("products", item.expected_products))
        for kind, rules in rule_lists:
            if not rules or not rules[-1].is_final_disallow_all():
                message = (
                    f"expected_{kind} does not end in DISALLOW *: any {kind} not consumed by a "
                    "rule passes"
                )
                warnings.append(warning(stage, message, step=prefix + item.name))
    return warnings


def command_warnings(chain: StepChain, prefix: str) -> list[VerdictWarning]:
    """A warning for each link whose command differs from its step's expected command."""
    return [
        warning(
            Stage.COMMAND_ALIGNMENT,
            f"{file_name} ran {list(link.command)}, expected {list(step.expected_command)}",
            step=prefix + step.name,
        )
        for step, named_links in chain
        for file_name, link in named_links
        if link.command != step.expected_command
    ]


def apply_item_rules(
    items: Sequence[Step | Inspection],
    links: Mapping[str, ArtifactsSource],
    *,
    stage: Stage,
    prefix: str,
) -> tuple[list[Failure], list[TraceEntry]]:
    """Apply every item's material and product rules; every violation, and the trace."""
    failures: list[Failure] = []
    trace: list[TraceEntry] = []
    for item in items:
        rule_lists: tuple[tuple[ArtifactType, tuple[ArtifactRule, ...]], ...] = (
            (ArtifactType.MATERIALS, item.expected_materials),
            (ArtifactType.PRODUCTS, item.expected_products),
        )
        for artifact_type, rules in rule_lists:
            result = apply_rules(
                item_name=item.name, source_type=artifact_type, rules=rules, links=links
            )
            source = links[item.name]
            paths = source.products if artifact_type is ArtifactType.PRODUCTS else source.materials
            trace.extend(
                TraceEntry(prefix + item.name, str(artifact_type), a.rule.text,
                           _in_order(a.consumed, paths))
                for a in result.trace
            )
            violation = result.violation
            if violation is not None:
                failures.append(
                    failure(
                        stage,
                        f"expected_{artifact_type} of '{item.name}': '{violation.rule.text}' "
                        f"failed: {violation.reason}",
                        step=item.name,
                        rule=violation.rule.text,
                        paths=violation.paths,
                    )
                )
    return failures, trace


def _in_order(consumed: frozenset[str], artifacts: Mapping[str, object]) -> tuple[str, ...]:
    """The consumed paths, sorted. A link lists its paths in order: taking those of its
    own list is linear, where sorting 100,000 paths from a set is not (and a tuple holds
    them in a quarter of a set's memory, for as long as the verdict lives)."""
    if len(consumed) < 64:
        return tuple(sorted(consumed))
    return tuple(sorted(filter(consumed.__contains__, artifacts.keys())))


def summary_link(layout: Layout, reduced: Mapping[str, Link], name: str) -> Link:
    """The reference's summary of a (sub)layout: first step's materials, last step's
    products, byproducts and command."""
    if not layout.steps:
        empty: Mapping[str, Mapping[str, str]] = MappingProxyType({})
        return Link(name, (), empty, empty, MappingProxyType({}), MappingProxyType({}))
    first, last = reduced[layout.steps[0].name], reduced[layout.steps[-1].name]
    return Link(
        name=name,
        command=last.command,
        materials=first.materials,
        products=last.products,
        byproducts=last.byproducts,
        environment=MappingProxyType({}),
    )
