"""Verify: resolve the trusted layout keys, run the core pipeline, audit the verdict.

The service never runs a command: inspection links come from the caller.

With `stored_links` the links come from the attestation store, which is a read of the
store (docs/STORE.md, "Who may read the store"): the access gate lets only callers also
granted ListLinks ask for it (custody_server.policy.rpcs.STORE_READ_RPC), the layout
must pass its own stages (signature by the keys given, expiry, parameters) before the
store is read at all, and every such call is audited: a verdict by its `verify` entry,
a plan by a `store-read` entry (custody_server.store_reads).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from custody_core.envelope import parse_envelope
from custody_core.errors import CustodyError, MetadataError
from custody_core.final_product import GivenArtifact
from custody_core.keys import PublicKey
from custody_core.link import link_file_name
from custody_core.models import Layout
from custody_core.strict_json import JsonLimits, parse_json
from custody_core.supply_chain import verify_supply_chain
from custody_core.verdict import Stage, Verdict, warning
from custody_server.attestations import Attestations
from custody_server.audit_events import AuditEvent, AuditSink, record_or_refuse
from custody_server.errors import RequestError
from custody_server.lifecycle.keyring import KeyRing, KeyVersion
from custody_server.lifecycle.rotation import KeyState, format_time
from custody_server.lifecycle.rotation_diagnosis import explain_rotations
from custody_server.lifecycle.service_key_policy import ServiceKeyPolicy
from custody_server.store_reads import STORE_READ, STORE_READ_CATEGORY


@dataclass(frozen=True)
class TrustedKeySpec:
    """One trusted layout key as the caller named it: exactly one field is set."""

    alias: str = ""
    public_key_json: str = ""
    public_key_pem: str = ""


@dataclass(frozen=True)
class VerifyInput:
    layout: bytes
    layout_keys: tuple[TrustedKeySpec, ...]
    links: Mapping[str, bytes]
    inspection_links: Mapping[str, bytes]
    parameters: Mapping[str, str]
    # files no authorized keyid names: only to explain a failure (lifecycle.rotation_diagnosis)
    unlisted_links: Mapping[str, bytes] = field(default_factory=dict)
    # a plan: the verdict without a `verify` entry or a verdict count (the CLI's way to
    # learn which inspections to run before the one Verify that is recorded); one that
    # takes its links from the store is audited as a read of it (`store-read`)
    plan: bool = False
    # files the gate holds: each must be a final step's product (custody_core.final_product)
    artifacts: tuple[GivenArtifact, ...] = ()
    # verify the attestation store's links (of `run_id`, or of the run that made the
    # artifacts) instead of `links` (custody_server.attestations)
    stored_links: bool = False
    run_id: str = ""


# Stages about the layout alone, before any link is read.
_LAYOUT_STAGES = (Stage.LAYOUT_SIGNATURE, Stage.EXPIRY, Stage.PARAMETERS)


class VerificationService:
    def __init__(self, *, keys: KeyRing, audit: AuditSink,
                 clock: Callable[[], datetime], layout_limits: JsonLimits | None = None,
                 attestations: Attestations | None = None) -> None:
        """`layout_limits`: the size and nesting a layout may have (the core's reader
        refuses more than 64 levels in every document anyway). `attestations`: the store
        a request with `stored_links` takes its links from."""
        self._attestations = attestations
        self._keys = keys
        self._layout_limits = layout_limits or JsonLimits()
        self._audit = audit
        self._clock = clock

    def verify(self, request: VerifyInput, *, caller: str) -> Verdict:
        """The verdict, recorded in the audit trail (fail-closed) unless it is a plan."""
        return self.verify_run(request, caller=caller)[0]

    def verify_run(self, request: VerifyInput, *, caller: str) -> tuple[Verdict, str]:
        """The verdict and, with `stored_links`, the run whose links it verified."""
        details: dict[str, Any] = {
            "caller": caller,
            "layout_sha256": hashlib.sha256(request.layout).hexdigest(),
            "links": len(request.links),
            "inspection_links": len(request.inspection_links),
            "unlisted_links": len(request.unlisted_links),
        }
        if request.artifacts:  # what the gate asked about (the first 20), as digests
            details["artifacts"] = len(request.artifacts)
            details["artifact_digests"] = [_digest_text(a) for a in request.artifacts[:20]]
        if request.stored_links:
            details.update(stored_links=True, store_read=False)
            if request.run_id:  # the run asked for (a run found is `run_id` below)
                details["requested_run_id"] = request.run_id[:200]
        run_id = ""
        try:
            if not request.layout:
                raise RequestError("layout is required")
            self._layout_limits.check_size_and_depth(request.layout, what="layout")
            now = self._clock()
            layout_keys = self.resolve_keys(request.layout_keys, layout=request.layout, now=now)
            links, unlisted = request.links, request.unlisted_links
            not_found = None
            # The store only for a layout that verifies: one that fails on its own (an
            # unsigned or expired one, or one signed by other keys than those given) is
            # answered without reading the store, so without a run or a link of it.
            store = self._store_for(request) if request.stored_links else None
            verdict = (self._layout_stage(request, layout_keys, now)
                       if store is not None else None)
            if verdict is None:
                if store is not None:
                    stored = store.links_for(layout=request.layout,
                                             artifacts=request.artifacts,
                                             run_id=request.run_id)
                    run_id = stored.run_id
                    details.update(store_read=True, run_id=run_id, links=len(stored.links),
                                   unlisted_links=len(stored.unlisted))
                    links, unlisted, not_found = stored.links, stored.unlisted, stored.not_found
                verdict = self._verify_chain(request, layout_keys, links, now)
            # no run: that is the verdict, unless the layout itself failed already
            if not_found is not None and verdict.failed_stage not in _LAYOUT_STAGES:
                verdict = Verdict.of(failures=(not_found,), warnings=verdict.warnings)
            verdict = self._warn_layout_key_windows(verdict, layout_keys, now)
            verdict = explain_rotations(verdict, layout=request.layout,
                                        links={**unlisted, **links}, keys=self._keys)
        except CustodyError as error:
            if not request.plan:
                self._record(AuditEvent.failure(action="verify", category="process",
                                                error=error, details=details))
            elif request.stored_links:  # a plan that asked to read the store
                self._record(AuditEvent.failure(action=STORE_READ, category=STORE_READ_CATEGORY,
                                                error=error, details={**details, "plan": True}))
            raise
        if not request.plan:
            details.update(self._indicators(request, links))
        return self._recorded(verdict, request, details), run_id

    def _verify_chain(self, request: VerifyInput, layout_keys: Mapping[str, PublicKey],
                      links: Mapping[str, bytes], now: datetime) -> Verdict:
        return verify_supply_chain(
            layout=request.layout,
            layout_keys=layout_keys,
            links=links,
            inspection_links=request.inspection_links,
            # the wire cannot tell no parameters from none given: both mean none, so
            # nothing is substituted (as in-toto-verify)
            parameters=request.parameters or None,
            now=now,
            key_policy=ServiceKeyPolicy(self._keys.versions_by_keyid()),
            artifacts=request.artifacts,
        )

    def _layout_stage(self, request: VerifyInput, layout_keys: Mapping[str, PublicKey],
                      now: datetime) -> Verdict | None:
        """The verdict if the layout fails on its own (signature by `layout_keys`, expiry,
        parameters), before any link is looked at; None if it gets past them. The core's
        pipeline with no links stops at the first stage that fails, so a failure in a
        stage of the layout is exactly what the whole verification would report."""
        verdict = self._verify_chain(replace(request, inspection_links={}, artifacts=()),
                                     layout_keys, {}, now)
        return verdict if verdict.failed_stage in _LAYOUT_STAGES else None

    def _indicators(self, request: VerifyInput, links: Mapping[str, bytes]) -> dict[str, Any]:
        """What the SLIs count (custody_server.metrics): the layout's steps and how many
        of them had a link, and of the artifacts, how many the store keeps links of."""
        indicators: dict[str, Any] = {}
        try:
            layout = Layout.from_payload(parse_envelope(request.layout).payload)
        except MetadataError:  # verified already: only a layout the core refused
            return indicators
        indicators["layout_steps"] = len(layout.steps)
        indicators["steps_with_links"] = sum(
            any(link_file_name(step.name, keyid) in links for keyid in step.pubkeys)
            for step in layout.steps)
        if request.artifacts and self._attestations is not None:
            # the store down: not counted, the verdict stands
            with contextlib.suppress(CustodyError):
                indicators["artifacts_retained"] = self._attestations.retained(
                    layout, request.artifacts)
        return indicators

    def _store_for(self, request: VerifyInput) -> Attestations:
        """The store `request` takes its links from; RequestError if it may not (checked
        before the layout, so that a malformed request is refused as such)."""
        if request.links:
            raise RequestError("stored_links: send no links (they come from the store)")
        if self._attestations is None:
            raise RequestError("stored_links: this server keeps no attestation store")
        return self._attestations

    def _recorded(self, verdict: Verdict, request: VerifyInput,
                  details: dict[str, Any]) -> Verdict:
        """The verdict, once audited and counted (a plan: neither, but a plan that read,
        or asked to read, the store is audited as a `store-read`)."""
        first = verdict.failures[0] if verdict.failures else None
        if request.plan:
            if request.stored_links:
                read = bool(details.get("store_read"))
                self._record(AuditEvent(
                    action=STORE_READ, category=STORE_READ_CATEGORY,
                    outcome="success" if read else "failure",
                    reason="" if read or first is None else
                    f"the store was not read: the layout failed at {first.stage}: "
                    f"{first.reason}"[:500],
                    details={**details, "plan": True, "passed": verdict.passed,
                             "failure_stage": first.failure_stage if first else ""}))
            return verdict
        self._record(AuditEvent(
            action="verify",
            category="process",
            outcome="success" if verdict.passed else "failure",
            reason=first.reason[:500] if first else "",
            details={**details, "passed": verdict.passed,
                     "failure_stage": first.failure_stage if first else ""},
        ))
        return verdict

    def resolve_keys(self, specs: Sequence[TrustedKeySpec], *, layout: bytes,
                     now: datetime) -> dict[str, PublicKey]:
        """The trusted layout keys by keyid. The core requires a signature by each one, so a
        service alias stands for the one version of it that signed `layout` (the newest
        that verifies at `now`, else the newest that signed, which the core then refuses
        with the reason), or its active version if none signed."""
        if not specs:
            raise RequestError("at least one trusted layout key is required")
        keys: dict[str, PublicKey] = {}
        for index, spec in enumerate(specs):
            for key in self._resolve_one(spec, index, layout=layout, now=now):
                keys[key.keyid] = key
        return keys

    def _resolve_one(self, spec: TrustedKeySpec, index: int, *, layout: bytes,
                     now: datetime) -> list[PublicKey]:
        if spec.alias:
            return [self._layout_key_version(spec.alias, layout, now).public_key]
        if spec.public_key_json:
            field = f"layout_keys[{index}].public_key_json"
            data = parse_json(spec.public_key_json.encode(), what=field).value
            if not isinstance(data, dict):
                raise RequestError(f"{field} must be a JSON object")
            return [PublicKey.from_dict(data)]
        if spec.public_key_pem:
            return [PublicKey.from_pem(spec.public_key_pem)]
        raise RequestError(f"layout key {index} is empty: give an alias, a key dict or a PEM")

    def _layout_key_version(self, alias: str, layout: bytes, now: datetime) -> KeyVersion:
        key = self._keys.get(alias)
        try:
            envelope = parse_envelope(layout)
        except MetadataError:
            return key.active  # the core reports the malformed layout
        signed = envelope.verified_keyids({v.keyid: v.public_key for v in key.versions})
        signers = [v for v in key.versions if v.keyid in signed]
        usable = [v for v in signers if v.verifies_at(now)]
        return (usable or signers or [key.active])[-1]

    def _warn_layout_key_windows(self, verdict: Verdict, layout_keys: Mapping[str, PublicKey],
                                 now: datetime) -> Verdict:
        """A layout signed by an owner version inside its window passes, with a warning that
        says when it must be re-signed."""
        warnings = []
        for keyid in layout_keys:
            version = self._keys.find_keyid(keyid)
            if version is None or version.state_at(now) is not KeyState.VERIFY_ONLY:
                continue
            until = format_time(version.lifecycle.verify_until or now)
            active = self._keys.get(version.alias).active
            warnings.append(warning(
                Stage.LAYOUT_SIGNATURE,
                f"the layout is signed by {version.name} (keyid {keyid[:8]}), which verifies "
                f"only until {until}: re-sign it with {active.name} before then",
            ))
        if not warnings:
            return verdict
        return Verdict.of(failures=verdict.failures, warnings=(*warnings, *verdict.warnings),
                          trace=verdict.trace)

    def _record(self, event: AuditEvent) -> None:
        record_or_refuse(self._audit, event, refusal="audit log unavailable: verdict withheld")


def _digest_text(artifact: GivenArtifact) -> str:
    """`sha256:<hex>` (or the first algorithm's), for the audit entry."""
    digest = artifact.digest
    name = "sha256" if "sha256" in digest else min(digest, default="")
    return f"{name[:64]}:{digest.get(name, '')[:512]}"
