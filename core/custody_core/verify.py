"""Supply-chain verification: the reference pipeline, over bytes as received, no I/O.

Stages, in the reference order (in_toto.verifylib.in_toto_verify): layout signature ->
expiry -> parameter substitution -> links per step by authorized key ids -> per-step
threshold of distinct functionaries -> sublayouts (recursive) -> command alignment
(warning) -> threshold links agree -> step rules -> inspections -> inspection rules.

Verification stops after the first stage that fails (later stages depend on it); within a
stage every failure is reported. A verification failure is a failing Verdict, never an
exception; only layout bytes that cannot be understood raise MetadataError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TypeVar

from custody_core.envelope import PAYLOAD_TYPE_INTOTO, Envelope, parse_envelope
from custody_core.errors import MetadataError
from custody_core.inspections import collect_inspection_links
from custody_core.key_policy import DefaultKeyPolicy, KeyPolicy
from custody_core.keys import PublicKey
from custody_core.models import Inspection, Layout, Link, Step
from custody_core.rules import ArtifactRule, ArtifactsSource, ArtifactType, apply_rules
from custody_core.step_links import (
    StepLinks,
    load_step_links,
    sublayout_dir,
    verify_threshold_agreement,
    verify_thresholds,
)
from custody_core.substitution import check_parameters
from custody_core.verdict import (
    Failure,
    Stage,
    TraceEntry,
    Verdict,
    VerdictWarning,
    failure,
    warning,
)

__all__ = ["verify_supply_chain"]

_Item = TypeVar("_Item", Step, Inspection)
_NO_FILES: Mapping[str, bytes] = MappingProxyType({})
_NO_PARAMETERS: Mapping[str, str] = MappingProxyType({})


class _StageFailed(Exception):
    """Internal: a stage failed; carries its failures to the top. Never escapes."""

    def __init__(self, failures: list[Failure]) -> None:
        super().__init__(failures[0].reason)
        self.failures = failures


def _raise_if(failures: list[Failure]) -> None:
    if failures:
        raise _StageFailed(failures)


@dataclass
class _Context:
    """What one verification (with its sublayouts) shares: inputs and findings so far."""

    links: Mapping[str, bytes]
    inspection_links: Mapping[str, bytes]
    policy: KeyPolicy
    now: datetime
    warnings: list[VerdictWarning] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)


def verify_supply_chain(
    *,
    layout: bytes,
    layout_keys: Mapping[str, PublicKey],
    links: Mapping[str, bytes],
    inspection_links: Mapping[str, bytes] = _NO_FILES,
    parameters: Mapping[str, str] = _NO_PARAMETERS,
    now: datetime,
    key_policy: KeyPolicy | None = None,
) -> Verdict:
    """Verify a final product's supply chain against a signed layout.

    `layout_keys` maps key ids to trusted keys; every one of them must have signed the
    layout. `links` maps file names as in a link directory (`<step>.<keyid8>.link`,
    sublayout links under `<step>.<keyid8>/`) to envelope bytes; `inspection_links` maps
    `<inspection>.link` to the links the caller recorded by running the inspections.
    `{NAME}` placeholders in the layout are replaced from `parameters` (a missing one
    fails, as in-toto-verify with substitution parameters). `now` must be timezone-aware.

    Raises MetadataError only if `layout` cannot be parsed as a signed layout.
    """
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    try:
        envelope = parse_envelope(layout)
    except MetadataError as exc:
        raise MetadataError(f"layout {exc}") from None
    if envelope.kind == "dsse" and envelope.payload_type != PAYLOAD_TYPE_INTOTO:
        raise MetadataError(f"layout: DSSE payloadType must be {PAYLOAD_TYPE_INTOTO}")
    context = _Context(
        links=links,
        inspection_links=inspection_links,
        policy=key_policy or DefaultKeyPolicy(),
        now=now,
    )
    try:
        _verify_layout(
            envelope,
            layout_keys=layout_keys,
            parameters=parameters,
            prefix="",
            name="",
            context=context,
        )
    except _StageFailed as failed:
        return Verdict.of(
            failures=tuple(failed.failures),
            warnings=tuple(context.warnings),
            trace=tuple(context.trace),
        )
    return Verdict.of(failures=(), warnings=tuple(context.warnings), trace=tuple(context.trace))


def _check_layout_signatures(
    envelope: Envelope, layout_keys: Mapping[str, PublicKey], context: _Context
) -> None:
    if not layout_keys:
        _raise_if([failure(Stage.LAYOUT_SIGNATURE, "no layout key given: at least one is needed")])
    failures = []
    for keyid in layout_keys:
        refusal = context.policy.refusal(keyid, context.now)
        if refusal is not None:
            failures.append(
                failure(Stage.LAYOUT_SIGNATURE, f"layout key {keyid[:8]} is refused: {refusal}")
            )
    verified = envelope.verified_keyids(layout_keys)
    for keyid in layout_keys:
        if keyid not in verified:
            failures.append(
                failure(Stage.LAYOUT_SIGNATURE, f"no valid layout signature by key {keyid[:8]}")
            )
    _raise_if(failures)


def _substitute(layout: Layout, parameters: Mapping[str, str]) -> Layout:
    try:
        check_parameters(parameters)
    except MetadataError as exc:
        _raise_if([failure(Stage.PARAMETERS, str(exc))])
    failures: list[Failure] = []

    def substituted(item: _Item) -> _Item | None:
        try:
            return item.substituted(parameters)
        except MetadataError as exc:
            failures.append(failure(Stage.PARAMETERS, str(exc), step=item.name))
            return None

    steps = [substituted(step) for step in layout.steps]
    inspections = [substituted(inspection) for inspection in layout.inspections]
    _raise_if(failures)
    return Layout(
        steps=tuple(step for step in steps if step is not None),
        inspections=tuple(item for item in inspections if item is not None),
        keys=layout.keys,
        expires=layout.expires,
        readme=layout.readme,
    )


def _warn_open_rule_lists(layout: Layout, prefix: str, context: _Context) -> None:
    items: list[tuple[Stage, Step | Inspection]] = [(Stage.STEP_RULES, s) for s in layout.steps]
    items += [(Stage.INSPECTION_RULES, i) for i in layout.inspections]
    for stage, item in items:
        for kind, rules in (
            ("materials", item.expected_materials),
            ("products", item.expected_products),
        ):
            if not rules or not rules[-1].is_final_disallow_all():
                context.warnings.append(
                    warning(
                        stage,
                        f"expected_{kind} does not end in DISALLOW *: any {kind} not consumed "
                        "by a rule passes",
                        step=prefix + item.name,
                    )
                )


def _verify_sublayouts(
    layout: Layout, steps: list[StepLinks], prefix: str, context: _Context
) -> list[tuple[Step, list[tuple[str, Link]]]]:
    """Each step's accepted links as Links: a sublayout becomes its summary link."""
    failures: list[Failure] = []
    result = []
    for step_links in steps:
        named: list[tuple[str, Link]] = []
        for loaded in step_links.accepted:
            if loaded.link is not None:
                named.append((loaded.file_name, loaded.link))
                continue
            sub_prefix = prefix + sublayout_dir(step_links.step.name, loaded.keyid)
            try:
                summary = _verify_layout(
                    loaded.envelope,
                    layout_keys={loaded.keyid: layout.keys[loaded.keyid]},
                    parameters=None,  # the reference does not substitute in sublayouts
                    prefix=sub_prefix,
                    name=step_links.step.name,
                    context=context,
                )
            except _StageFailed as failed:
                failures.extend(
                    _as_sublayout_failure(f, step_links.step.name, sub_prefix)
                    for f in failed.failures
                )
                continue
            named.append((loaded.file_name, summary))
        result.append((step_links.step, named))
    _raise_if(failures)
    return result


def _as_sublayout_failure(inner: Failure, step_name: str, sub_prefix: str) -> Failure:
    where = f"{sub_prefix}{inner.step}" if inner.step else sub_prefix.rstrip("/")
    return Failure(
        stage=Stage.SUBLAYOUT,
        step=step_name,
        rule=inner.rule,
        paths=inner.paths,
        reason=f"sublayout {where} failed at {inner.stage}: {inner.reason}",
    )


def _summary_link(layout: Layout, reduced: Mapping[str, Link], name: str) -> Link:
    """The reference's summary of a (sub)layout: first step's materials, last step's products."""
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


def _apply_item_rules(
    items: tuple[Step, ...] | tuple[Inspection, ...],
    links: Mapping[str, ArtifactsSource],
    *,
    stage: Stage,
    prefix: str,
    context: _Context,
) -> None:
    failures = []
    for item in items:
        rule_lists: tuple[tuple[ArtifactType, tuple[ArtifactRule, ...]], ...] = (
            (ArtifactType.MATERIALS, item.expected_materials),
            (ArtifactType.PRODUCTS, item.expected_products),
        )
        for artifact_type, rules in rule_lists:
            result = apply_rules(
                item_name=item.name, source_type=artifact_type, rules=rules, links=links
            )
            context.trace.extend(
                TraceEntry(prefix + item.name, str(artifact_type), a.rule.text, a.consumed)
                for a in result.trace
            )
            if result.violation is not None:
                violation = result.violation
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
    _raise_if(failures)


def _verify_layout(
    envelope: Envelope,
    *,
    layout_keys: Mapping[str, PublicKey],
    parameters: Mapping[str, str] | None,
    prefix: str,
    name: str,
    context: _Context,
) -> Link:
    """Verify one (sub)layout; return its summary link or raise _StageFailed."""
    _check_layout_signatures(envelope, layout_keys, context)
    layout = Layout.from_payload(envelope.payload)  # verified bytes; MetadataError if malformed
    if layout.expires <= context.now:
        _raise_if([failure(Stage.EXPIRY, f"layout expired at {layout.expires.isoformat()}")])
    if parameters is not None:
        layout = _substitute(layout, parameters)
    _warn_open_rule_lists(layout, prefix, context)

    loaded, failures = load_step_links(layout, context.links, prefix=prefix)
    _raise_if(failures)
    steps, failures, warnings = verify_thresholds(
        layout=layout, loaded=loaded, policy=context.policy, now=context.now
    )
    context.warnings.extend(warnings)
    _raise_if(failures)
    chain = _verify_sublayouts(layout, steps, prefix, context)

    for step, named_links in chain:
        for file_name, link in named_links:
            if link.command != step.expected_command:
                context.warnings.append(
                    warning(
                        Stage.COMMAND_ALIGNMENT,
                        f"{file_name} ran {list(link.command)}, expected "
                        f"{list(step.expected_command)}",
                        step=prefix + step.name,
                    )
                )
    _raise_if(verify_threshold_agreement(chain))
    reduced = {step.name: named_links[0][1] for step, named_links in chain}

    # Step rules come before inspections: an inspection never sees unverified artifacts.
    _apply_item_rules(layout.steps, reduced, stage=Stage.STEP_RULES, prefix=prefix, context=context)
    inspection_links, failures = collect_inspection_links(
        layout, context.inspection_links, prefix=prefix
    )
    _raise_if(failures)
    combined: dict[str, ArtifactsSource] = {**reduced, **inspection_links}
    _apply_item_rules(
        layout.inspections, combined, stage=Stage.INSPECTION_RULES, prefix=prefix, context=context
    )
    return _summary_link(layout, reduced, name)
