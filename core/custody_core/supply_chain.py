"""Supply-chain verification: the reference pipeline, over bytes as received, no I/O.

Stages, in the reference order (in_toto.verifylib.in_toto_verify): layout signature ->
expiry -> parameter substitution -> links per step by authorized key ids -> per-step
threshold of distinct functionaries -> sublayouts (recursive) -> command alignment
(warning) -> threshold links agree -> step rules -> inspections -> inspection rules.
Custody adds one stage the reference does not have, after the step rules and before any
inspection: the artifacts the caller holds must be products of the layout's final steps
(final_product.py; only when artifacts are given).

Verification stops after the first stage that fails (later stages depend on it); within a
stage every failure is reported. A verification failure is a failing Verdict, never an
exception; only layout bytes that cannot be understood raise MetadataError.

Where we differ from in-toto 3.1 (its verdict is the oracle everywhere else; the full
list, with reasons and tests, is docs/REFERENCE.md):
- a threshold counts keys (public key material), not keyids; in-toto counts keyids;
- a listed key that cannot verify is set aside with a warning (in-toto refuses the
  layout at load when it does not know the scheme);
- signatures are checked over the bytes as received, never over a re-serialized model
  (in-toto fails on layouts and links with fields it does not know);
- a link whose payload names another step is ignored (in-toto accepts a replayed link);
- `expires` is required and `threshold` must be at least 1 (in-toto defaults them);
- `{NAME}` placeholders: no attribute, index or format-spec evaluation (`str.format`);
  substituted only when parameters are given, as in in-toto (see substitution.py);
- inspections are never run here: the caller hands in the links it recorded;
- a present but malformed link file fails even if its signature would not verify (in-toto
  ignores a DSSE one in that case); Statement v1 links (link predicate v0.3) are accepted;
- GPG keys and subkeys are not supported; sublayouts nest at most MAX_SUBLAYOUT_DEPTH.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from custody_core.envelope import PAYLOAD_TYPE_INTOTO, Envelope, parse_envelope
from custody_core.errors import MetadataError
from custody_core.final_product import GivenArtifact, artifact_failures, check_artifacts
from custody_core.inspections import collect_inspection_links
from custody_core.key_policy import DefaultKeyPolicy, KeyPolicy
from custody_core.keys import PublicKey
from custody_core.layout_stages import (
    StepChain,
    apply_item_rules,
    command_warnings,
    layout_signature_failures,
    open_rule_list_warnings,
    placeholder_warnings,
    substitute_layout,
    summary_link,
    unusable_key_warnings,
)
from custody_core.models import Layout, Link
from custody_core.rules import ArtifactsSource
from custody_core.step_links import (
    StepLinks,
    load_step_links,
    sublayout_dir,
    verify_threshold_agreement,
    verify_thresholds,
)
from custody_core.verdict import Failure, Stage, TraceEntry, Verdict, VerdictWarning, failure

__all__ = ["MAX_SUBLAYOUT_DEPTH", "verify_supply_chain"]

# Each level is signed by a key the level above trusts, but one functionary can still
# nest sublayouts at will: bound it well below Python's recursion limit.
MAX_SUBLAYOUT_DEPTH = 16
_NO_FILES: Mapping[str, bytes] = MappingProxyType({})


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
    artifacts: Sequence[GivenArtifact] = ()
    warnings: list[VerdictWarning] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)


def verify_supply_chain(
    *,
    layout: bytes,
    layout_keys: Mapping[str, PublicKey],
    links: Mapping[str, bytes],
    inspection_links: Mapping[str, bytes] = _NO_FILES,
    parameters: Mapping[str, str] | None = None,
    now: datetime,
    key_policy: KeyPolicy | None = None,
    artifacts: Sequence[GivenArtifact] = (),
) -> Verdict:
    """Verify a final product's supply chain against a signed layout.

    `layout_keys` maps key ids to trusted keys; every one of them must have signed the
    layout. `links` maps file names as in a link directory (`<step>.<keyid8>.link`,
    sublayout links under `<step>.<keyid8>/`) to envelope bytes; `inspection_links` maps
    `<inspection>.link` to the links the caller recorded by running the inspections.
    `{NAME}` placeholders in the layout are replaced from `parameters` when it is not
    None (a missing one fails, as in_toto_verify with substitution_parameters); with None
    nothing is substituted (as in-toto-verify) and the verdict warns of what looks like a
    placeholder. `now` must be timezone-aware. `artifacts`, the files the caller holds
    (final_product.py): each must be a product of the layout's final step(s).

    Raises MetadataError only if `layout` cannot be parsed as a signed layout, or an
    artifact has no path or no hex digest.
    """
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    check_artifacts(artifacts)
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
        artifacts=artifacts,
    )
    try:
        _verify_layout(
            envelope,
            layout_keys=layout_keys,
            parameters=parameters,
            prefix="",
            depth=0,
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


def _verify_sublayouts(
    layout: Layout, steps: list[StepLinks], *, prefix: str, depth: int, context: _Context
) -> StepChain:
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
            if depth >= MAX_SUBLAYOUT_DEPTH:
                reason = f"sublayouts nest deeper than {MAX_SUBLAYOUT_DEPTH} levels at {sub_prefix}"
                failures.append(failure(Stage.SUBLAYOUT, reason, step=step_links.step.name))
                continue
            try:
                summary = _verify_layout(
                    loaded.envelope,
                    layout_keys={loaded.keyid: layout.keys[loaded.keyid]},
                    parameters=None,  # the reference does not substitute in sublayouts
                    prefix=sub_prefix,
                    depth=depth + 1,
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
    return failure(
        Stage.SUBLAYOUT,
        f"sublayout {where} failed at {inner.stage}: {inner.reason}",
        step=step_name,
        rule=inner.rule,
        paths=inner.paths,
        cause=inner.cause or inner.stage,  # what failed inside, for monitoring
    )


def _verify_layout(
    envelope: Envelope,
    *,
    layout_keys: Mapping[str, PublicKey],
    parameters: Mapping[str, str] | None,
    prefix: str,
    depth: int,
    name: str,
    context: _Context,
) -> Link:
    """Verify one (sub)layout; return its summary link or raise _StageFailed."""
    _raise_if(layout_signature_failures(envelope, layout_keys, context.policy, context.now))
    layout = Layout.from_payload(envelope.payload)  # verified bytes; MetadataError if malformed
    if layout.expires <= context.now:
        _raise_if([failure(Stage.EXPIRY, f"layout expired at {layout.expires.isoformat()}")])
    if parameters is not None:
        layout, failures = substitute_layout(layout, parameters)
        _raise_if(failures)
    elif depth == 0:  # the reference never substitutes in sublayouts: nothing to warn of
        context.warnings.extend(placeholder_warnings(layout, prefix))
    context.warnings.extend(unusable_key_warnings(layout, prefix))
    context.warnings.extend(open_rule_list_warnings(layout, prefix))

    loaded, failures = load_step_links(layout, context.links, prefix=prefix)
    _raise_if(failures)
    steps, failures, warnings = verify_thresholds(
        layout=layout, loaded=loaded, policy=context.policy, now=context.now
    )
    context.warnings.extend(warnings)
    _raise_if(failures)
    chain = _verify_sublayouts(layout, steps, prefix=prefix, depth=depth, context=context)
    context.warnings.extend(command_warnings(chain, prefix))
    _raise_if(verify_threshold_agreement(chain))
    # Like the reference: each step's first accepted link stands for the step.
    reduced = {step.name: named_links[0][1] for step, named_links in chain}

    # Step rules come before inspections: an inspection never sees unverified artifacts.
    failures, trace = apply_item_rules(layout.steps, reduced, stage=Stage.STEP_RULES, prefix=prefix)
    context.trace.extend(trace)
    _raise_if(failures)
    if depth == 0:  # the gate's files, against the verified products: before inspections
        _raise_if(artifact_failures(layout, reduced, context.artifacts))
    inspection_links, failures = collect_inspection_links(
        layout, context.inspection_links, prefix=prefix
    )
    _raise_if(failures)
    combined: dict[str, ArtifactsSource] = {**reduced, **inspection_links}
    failures, trace = apply_item_rules(
        layout.inspections, combined, stage=Stage.INSPECTION_RULES, prefix=prefix
    )
    context.trace.extend(trace)
    _raise_if(failures)
    return summary_link(layout, reduced, name)
