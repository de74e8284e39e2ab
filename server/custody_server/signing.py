"""SignLink and SignLayout: build what to sign (core), sign (HSM), audit, return.

Data flows one way: request -> build metadata -> sign -> audit -> response.
No signature leaves this module unless its audit record was written first, and none is
made unless it can be delivered: every limit (step names, byproducts, the size of the
response, known before the signer is asked) is checked before the HSM is touched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from custody_core.api_enums import EnvelopeKind
from custody_core.envelope import (
    PAYLOAD_TYPE_INTOTO,
    UnsignedDsse,
    UnsignedMetablock,
    prepare_dsse,
    prepare_metablock,
)
from custody_core.errors import CustodyError, MetadataError, SignatureError
from custody_core.keys import PublicKey
from custody_core.layout_review import review_layout
from custody_core.link import build_link, link_file_name, link_to_statement
from custody_core.models import Layout
from custody_core.preliminary_link import check_preliminary_link
from custody_core.signer import Signer
from custody_core.step_names import check_step_name, step_name_for_audit
from custody_core.strict_json import JsonLimits
from custody_server.audit_events import AuditEvent, AuditSink, record_or_refuse
from custody_server.errors import LimitExceededError, RequestError, ResponseTooLargeError
from custody_server.layout_signatures import (
    SignedLayout,
    appended,
    check_custody_signatures,
    read_signed_layout,
    refuse_aliases,
)
from custody_server.lifecycle.functionaries import (
    Resolution,
    drop_unlisted_keys,
    resolve_functionaries,
    unresolve_functionaries,
)
from custody_server.lifecycle.keyring import KeyRing, KeyVersion, ServiceKey
from custody_server.lifecycle.layout_lifetime import lifetime_warnings
from custody_server.lifecycle.settings import LifecycleSettings
from custody_server.store.records import (
    SIGNED_RUN_ID,
    NewRecord,
    check_run_id,
    product_rows,
)

if TYPE_CHECKING:
    from custody_server.store.service import AttestationStore

ALIAS_PREFIX = "alias:"
# The link's environment records who asked for it (the client certificate's identity,
# docs/SECURITY.md); a client cannot set this key itself.
REQUESTED_BY = "custody.requested-by"
DEFAULT_MAX_BYPRODUCTS_BYTES = 8 * 1024 * 1024
# A response holds, besides the signed file: its file name (a step name, at most 240
# bytes, and 14 more), the keyid, alias, version, envelope kind and a SHA-256, and the
# protobuf framing of each. Far less than this.
RESPONSE_FIELDS_ALLOWANCE = 4096
AUDIT_UNAVAILABLE = "audit log unavailable"
SIGNATURE_WITHHELD = "audit log unavailable: signature withheld"


@dataclass(frozen=True)
class SigningLimits:
    """What one SignLink or SignLayout may ask for (the [limits] of the config)."""

    max_artifacts: int = 200_000
    max_byproducts_bytes: int = DEFAULT_MAX_BYPRODUCTS_BYTES
    max_response_bytes: int | None = None  # None: no bound (the transport's own applies)
    layout: JsonLimits = field(default_factory=JsonLimits)


@dataclass(frozen=True)
class LinkRequest:
    step_name: str
    command: tuple[str, ...]
    materials: Mapping[str, Mapping[str, str]]
    products: Mapping[str, Mapping[str, str]]
    byproducts: Mapping[str, Any]
    environment: Mapping[str, str]
    key_alias: str
    envelope: EnvelopeKind
    preliminary_link: bytes = b""  # record stop: record start's signed link (its materials)
    run_id: str = ""  # the pipeline run (custody_server.store.records.RUN_ID grammar)


@dataclass(frozen=True)
class SignedMetadata:
    content: bytes  # the file to write, exactly
    key: KeyVersion
    envelope: EnvelopeKind
    signed_sha256: str  # hex SHA-256 of the exact bytes the signature covers
    file_name: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    other_owners: tuple[str, ...] = ()  # refresh: Custody owners to sign again (append)


@dataclass(frozen=True)
class _Signed:
    content: bytes
    signed_bytes: bytes


class SigningService:
    def __init__(self, *, keys: KeyRing, audit: AuditSink, limits: SigningLimits | None = None,
                 max_artifacts: int | None = None,
                 settings: LifecycleSettings | None = None,
                 prepare_next: Callable[[str], ServiceKey] | None = None,
                 store: AttestationStore | None = None) -> None:
        """`prepare_next(alias)`: the alias with a next version, made if it has none (an
        alias made before pre-rotation); without it SignLayout lists what there is.
        `max_artifacts`, if given, overrides that of `limits`. `store`: every link and
        layout signed is kept there before it is returned (None: nowhere)."""
        self._keys = keys
        self._audit = audit
        self._limits = limits or SigningLimits()
        if max_artifacts is not None:
            self._limits = replace(self._limits, max_artifacts=max_artifacts)
        self._settings = settings or LifecycleSettings()
        self._prepare_next = prepare_next
        self._store = store

    def sign_link(self, request: LinkRequest, *, caller: str) -> SignedMetadata:
        prepared = self.prepare_link(request, caller=caller)
        record_or_refuse(self._audit, prepared.event, refusal=prepared.refusal)
        self.keep([prepared])
        return prepared.deliver()

    def keep(self, prepared: Sequence[PreparedLink]) -> None:
        """Store the signed links among `prepared` (their audit entries are written), in
        one transaction: StoreUnavailableError if they cannot be, and then none may be
        delivered (custody_server.store.service)."""
        if self._store is None:
            return
        self._store.keep_signed([(item.record, item.result.signed_sha256)
                                 for item in prepared
                                 if item.record is not None and item.result is not None])

    def prepare_link(self, request: LinkRequest, *, caller: str,
                     response_budget: int | None = None) -> PreparedLink:
        """Decide, build and sign one link, recording nothing: the caller records its
        `event` (fail-closed: record_or_refuse with its `refusal`), then `deliver()`s it.
        SignLinks prepares many and records their events together. `response_budget`:
        the bytes the response has left for this link (a batch's), besides the limit."""
        details: dict[str, Any] = {**step_name_for_audit(request.step_name),
                                   "key_alias": request.key_alias[:100],
                                   "caller": caller, "envelope": request.envelope.value}
        try:
            if not request.step_name:
                raise RequestError("step_name is required")
            check_step_name(request.step_name, what="step_name")
            if request.run_id:
                details["run_id"] = request.run_id[:200]
                check_run_id(request.run_id)
            materials = request.materials
            if request.preliminary_link:
                details["preliminary_link"] = True
                materials = self._preliminary_materials(request, caller=caller)
            count = len(materials) + len(request.products)
            if count > self._limits.max_artifacts:
                raise LimitExceededError(
                    f"{count} artifacts is over the limit of {self._limits.max_artifacts} "
                    "per link (limits.max_artifacts_per_link)"
                )
            self._check_byproducts(request.byproducts)
            # what the attestation store indexes, checked as it checks it: a link the
            # store would refuse is refused before the HSM signs it
            products = product_rows(request.products) if self._store is not None else ()
            link = build_link(
                name=request.step_name,
                command=request.command,
                materials=materials,
                products=request.products,
                byproducts=request.byproducts,
                environment=_recorded_environment(request.environment, caller=caller,
                                                  run_id=request.run_id),
            )
            version, signer = self._keys.signer(request.key_alias)
            file_name = link_file_name(request.step_name, version.public_key.keyid)
            signed = self._sign(link, request.envelope, signer, compact=True,
                                response_fields=len(file_name), budget=response_budget)
        except CustodyError as error:
            return PreparedLink(event=AuditEvent.failure(
                action="sign-link", category="process", error=error, details=details),
                error=error)
        result = self._result(signed, key=version, envelope=request.envelope,
                              file_name=file_name)
        record = NewRecord.link(content=result.content, step=request.step_name,
                                keyid=version.public_key.keyid, file_name=file_name,
                                products=products, run_id=request.run_id,
                                origin="signed", caller=caller)
        return PreparedLink(event=self._success_event("sign-link", result, details),
                            result=result, record=record)

    def _preliminary_materials(self, request: LinkRequest, *,
                               caller: str) -> Mapping[str, Mapping[str, str]]:
        """The materials of `record start`'s link, once it is shown to be what the service
        signed for this step and caller with a version of this key that verifies now."""
        if request.materials:
            raise RequestError("give the materials in preliminary_link or in materials, "
                               "not in both")
        now = self._keys.now()
        key = self._keys.get(request.key_alias)
        keys = {v.keyid: v.public_key for v in key.verifying_at(now)}
        link = check_preliminary_link(request.preliminary_link, step_name=request.step_name,
                                      keys=keys, environment={REQUESTED_BY: caller})
        return link.materials

    def _check_byproducts(self, byproducts: Mapping[str, Any]) -> None:
        """LimitExceededError if stdout and stderr together hold more than the limit of
        UTF-8 bytes (escaped in the file, control characters grow sixfold)."""
        size = sum(_utf8_size(byproducts.get(name)) for name in ("stdout", "stderr"))
        if size > self._limits.max_byproducts_bytes:
            raise LimitExceededError(
                f"byproducts (stdout and stderr) are {size} bytes, over the limit of "
                f"{self._limits.max_byproducts_bytes} (limits.max_byproducts_bytes)")

    def sign_layout(self, layout: bytes, *, key_alias: str, envelope: EnvelopeKind | None,
                    caller: str, append: bool = False,
                    refresh: bool = False) -> SignedMetadata:
        """Sign a layout (resolving "alias:NAME"), or with `append` add a signature to a
        signed one, or with `refresh` re-resolve a signed one's service keys and sign it
        again. `envelope` None: METABLOCK, or the signed layout's own."""
        mode = "append" if append else "refresh" if refresh else "sign"
        details: dict[str, Any] = {"key_alias": key_alias, "caller": caller,
                                   "envelope": envelope.value if envelope else "", "mode": mode}
        try:
            if append and refresh:
                raise RequestError("append and refresh exclude each other")
            if envelope is EnvelopeKind.STATEMENT:
                raise RequestError("a layout is signed as METABLOCK or DSSE, not STATEMENT")
            if append:
                version, signed, warnings, others = self._append(layout, key_alias,
                                                                 envelope, details)
            else:
                version, signed, warnings, others = self._sign_new(layout, key_alias,
                                                                   envelope, refresh, details)
        except CustodyError as error:
            self._audit_failure("sign-layout", error, details)
            raise
        return self._audited_result("sign-layout", signed, details=details, key=version,
                                    envelope=envelope or EnvelopeKind.METABLOCK,
                                    warnings=warnings, other_owners=others)

    def _sign_new(self, layout: bytes, key_alias: str, envelope: EnvelopeKind | None,
                  refresh: bool, details: dict[str, Any]
                  ) -> tuple[KeyVersion, _Signed, tuple[str, ...], tuple[str, ...]]:
        warnings: list[str] = []
        others: tuple[str, ...] = ()
        if refresh:
            source = read_signed_layout(layout, what="refresh")
            envelope = _same_envelope(envelope, source.kind, what="refresh")
            others, dropped = self._refresh_owners(source, key_alias)
            warnings += dropped
            payload, replaced = unresolve_functionaries(source.payload, keys=self._keys)
        else:
            details["layout_sha256"] = hashlib.sha256(layout).hexdigest()
            payload, dropped_count = _unsigned_layout(layout, limits=self._limits.layout)
            if dropped_count:
                warnings.append(f"the layout's {dropped_count} existing signature(s) were "
                                "dropped: add a signature with --append instead")
            replaced = frozenset()
        details["envelope"] = (envelope or EnvelopeKind.METABLOCK).value
        resolution = self._resolve_functionaries(payload)
        drop_unlisted_keys(resolution.payload, replaced)
        payload = resolution.payload
        details["layout_readme"] = str(payload.get("readme", ""))[:200]
        parsed = Layout.from_payload(payload)  # reject what a verifier would reject
        _check_names(parsed)
        warnings += _reviewed(parsed)
        version, signer = self._keys.signer(key_alias)
        warnings += resolution.warnings
        warnings += self._lifetime(parsed, resolution, owner=key_alias)
        signed = self._sign(payload, envelope or EnvelopeKind.METABLOCK, signer, compact=False)
        if others:
            details["other_owners"] = list(others)
        return version, signed, tuple(dict.fromkeys(warnings)), others

    def _refresh_owners(self, source: SignedLayout,
                        key_alias: str) -> tuple[tuple[str, ...], list[str]]:
        """Who signed the layout: the other Custody owners (to sign again with append) and
        warnings for the signatures that cannot be re-made. `key_alias` must be one of its
        Custody owners, when it has any."""
        check_custody_signatures(source, keys=self._keys, what="refresh")
        owners: list[str] = []
        foreign: list[str] = []
        for keyid in source.keyids:
            version = self._keys.find_keyid(keyid)
            if version is None:
                foreign.append(keyid[:8])
            elif version.alias not in owners:
                owners.append(version.alias)
        if owners and key_alias not in owners:
            raise RequestError(
                f"refresh: the layout is signed by {', '.join(owners)}, not by {key_alias}: "
                f"refresh it with one of its owners (--key {owners[0]})")
        warnings = [f"the signature by keyid {keyid} is not a Custody key's and cannot be "
                    "made again: it was dropped (add it again with in-toto-sign -a)"
                    for keyid in foreign]
        others = tuple(alias for alias in owners if alias != key_alias)
        if others:
            warnings.append(f"the signatures by {', '.join(others)} were dropped: sign "
                            "again with --append and each of them")
        return others, warnings

    def _append(self, layout: bytes, key_alias: str, envelope: EnvelopeKind | None,
                details: dict[str, Any]
                ) -> tuple[KeyVersion, _Signed, tuple[str, ...], tuple[str, ...]]:
        source = read_signed_layout(layout, what="append")
        envelope = _same_envelope(envelope, source.kind, what="append")
        if not source.keyids and envelope is EnvelopeKind.METABLOCK:
            # A Metablock nobody signed yet (in-toto's workflow: each owner appends): the
            # first signature is a signing, which may resolve "alias:NAME".
            return self._sign_new(layout, key_alias, envelope, False, details)
        details["envelope"] = envelope.value
        payload = source.payload
        details["layout_readme"] = str(payload.get("readme", ""))[:200]
        refuse_aliases(payload, what="append")
        warnings = _reviewed(Layout.from_payload(payload))
        check_custody_signatures(source, keys=self._keys, what="append")
        version, signer = self._keys.signer(key_alias)
        if version.keyid in source.keyids:
            raise RequestError(f"append: the layout is already signed by {version.name} "
                               f"(keyid {version.keyid[:8]})")
        recording = _RecordingSigner(signer)
        content = appended(source, recording)
        details["signatures_before"] = len(source.keyids)
        return version, _Signed(content, recording.only_signed_bytes()), warnings, ()

    def _sign(self, signed: Mapping[str, Any], envelope: EnvelopeKind, signer: Signer, *,
              compact: bool, response_fields: int = 0, budget: int | None = None) -> _Signed:
        """Sign `signed`, once the response it goes into is known to fit the limit (and
        `budget`, what a batch's response has left)."""
        unsigned = _unsigned(signed, envelope, compact=compact)
        limits = [n for n in (self._limits.max_response_bytes, budget) if n is not None]
        limit = min(limits) if limits else None
        if limit is not None:
            size = (unsigned.size_bound([signer.public_key.keyid])
                    + response_fields + RESPONSE_FIELDS_ALLOWANCE)
            if size > limit:
                raise ResponseTooLargeError(
                    f"the signed {'link' if response_fields else 'layout'} would be "
                    f"{size} bytes, over the response limit of {limit} "
                    "(limits.max_message_bytes): nothing was signed")
        recording = _RecordingSigner(signer)
        content = unsigned.sign([recording])
        return _Signed(content, recording.only_signed_bytes())

    def _resolve_functionaries(self, payload: dict[str, Any]) -> Resolution:
        """Replace "alias:NAME" entries in steps' pubkeys with the keyids of the versions
        that sign or verify now and of the next version: see
        custody_server.lifecycle.functionaries. Aliases made before pre-rotation get
        their next version first (`prepare_next`)."""
        keys = _Preparing(self._keys, self._prepare_next)
        return resolve_functionaries(payload, keys=keys, now=self._keys.now(),
                                     threshold_next=self._settings.threshold_next)

    def _lifetime(self, layout: Layout, resolution: Resolution, *,
                  owner: str) -> list[str]:
        """Warnings (or, by lifecycle.layout_expiry_check, a refusal) for a layout that
        expires after its aliases' scheduled rotations end its use."""
        lines = lifetime_warnings(
            expires=layout.expires,
            functionaries=[(self._keys.get(alias), lists_next)
                           for alias, lists_next in resolution.aliases.items()],
            owners=[self._keys.get(owner)],
            schedules=self._settings.schedules, now=self._keys.now())
        if lines and self._settings.layout_expiry_check == "refuse":
            raise RequestError("; ".join(lines) + " (lifecycle.layout_expiry_check = refuse)")
        return lines

    def _audited_result(self, action: str, signed: _Signed, *, details: Mapping[str, Any],
                        key: KeyVersion, envelope: EnvelopeKind, file_name: str = "",
                        warnings: tuple[str, ...] = (),
                        other_owners: tuple[str, ...] = ()) -> SignedMetadata:
        """The result to return, once its audit entry is on disk (fail-closed) and the
        layout is in the attestation store."""
        result = self._result(signed, key=key, envelope=envelope, file_name=file_name,
                              warnings=warnings, other_owners=other_owners)
        record_or_refuse(self._audit, self._success_event(action, result, details),
                         refusal=SIGNATURE_WITHHELD)
        if self._store is not None:
            self._store.keep_signed([(NewRecord.layout(
                content=result.content, keyid=key.public_key.keyid,
                caller=str(details.get("caller", ""))), result.signed_sha256)])
        return result

    @staticmethod
    def _result(signed: _Signed, *, key: KeyVersion, envelope: EnvelopeKind,
                file_name: str = "", warnings: tuple[str, ...] = (),
                other_owners: tuple[str, ...] = ()) -> SignedMetadata:
        return SignedMetadata(content=signed.content, key=key, envelope=envelope,
                              signed_sha256=hashlib.sha256(signed.signed_bytes).hexdigest(),
                              file_name=file_name, warnings=warnings,
                              other_owners=other_owners)

    @staticmethod
    def _success_event(action: str, result: SignedMetadata,
                       details: Mapping[str, Any]) -> AuditEvent:
        return AuditEvent(action=action, category="process", outcome="success", details={
            **details,
            "key_alias": result.key.alias,
            "key_version": result.key.version,
            "keyid": result.key.public_key.keyid,
            "signed_sha256": result.signed_sha256,
        })

    def _audit_failure(self, action: str, error: CustodyError,
                       details: Mapping[str, Any]) -> None:
        event = AuditEvent.failure(action=action, category="process", error=error,
                                   details=details)
        record_or_refuse(self._audit, event, refusal=AUDIT_UNAVAILABLE)


@dataclass(frozen=True)
class PreparedLink:
    """A SignLink decided and signed (`result`) or refused (`error`), not yet answered:
    `event`, its audit entry, must be recorded first."""

    event: AuditEvent
    result: SignedMetadata | None = None
    error: CustodyError | None = None
    record: NewRecord | None = None  # the signed link, for the attestation store

    @property
    def refusal(self) -> str:
        """What the caller does not get if `event` cannot be recorded."""
        return AUDIT_UNAVAILABLE if self.error is not None else SIGNATURE_WITHHELD

    def deliver(self) -> SignedMetadata:
        """The signed link, or its error raised: once `event` is recorded."""
        if self.error is not None:
            raise self.error
        assert self.result is not None  # one of the two, by construction
        return self.result


class _RecordingSigner:
    """A Signer that keeps the bytes it was asked to sign.

    The audit digest is then taken over exactly what the signature covers, and the
    document is not encoded a second time for it (for a link with 20,000 artifacts the
    canonical encoding costs about as much as everything else together).
    """

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self.signed: list[bytes] = []

    @property
    def public_key(self) -> PublicKey:
        return self._signer.public_key

    def sign(self, data: bytes) -> bytes:
        signature = self._signer.sign(data)
        self.signed.append(data)
        return signature

    def only_signed_bytes(self) -> bytes:
        if len(self.signed) != 1:  # one signer, one signature: anything else is a bug
            raise SignatureError(f"expected one signature, made {len(self.signed)}")
        return self.signed[0]


def _unsigned(signed: Mapping[str, Any], envelope: EnvelopeKind, *,
              compact: bool) -> UnsignedMetablock | UnsignedDsse:
    """The file to sign, all but its signature. `compact`: one line, as in-toto's
    `compact_json` writes. Links are, since machines read them and the standard library
    indents in pure Python (about a tenth of a small SignLink's CPU); layouts stay
    indented for the people who review them."""
    if envelope is EnvelopeKind.METABLOCK:
        return prepare_metablock(signed, compact=compact)
    body = link_to_statement(signed) if envelope is EnvelopeKind.STATEMENT else signed
    # DSSE signs the payload bytes as they are, so no canonical form is needed; plain
    # sorted JSON (as in-toto writes it) also escapes the newlines in PEM keys, which
    # canonical JSON would leave raw and strict JSON parsers reject.
    payload = json.dumps(body, sort_keys=True).encode()
    return prepare_dsse(payload, payload_type=PAYLOAD_TYPE_INTOTO, compact=compact)


def _utf8_size(text: object) -> int:
    if not isinstance(text, str):
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _reviewed(layout: Layout) -> tuple[str, ...]:
    """What a verifier could not count as the layout says (a threshold step naming fewer
    distinct keys than its threshold, a key that cannot verify) refuses the signature; the
    warnings of custody_core.layout_review are returned."""
    review = review_layout(layout)
    if review.refusals:
        raise RequestError("; ".join(review.refusals))
    return review.warnings


def _unsigned_layout(data: bytes, *, limits: JsonLimits) -> tuple[dict[str, Any], int]:
    """The layout to sign, and how many signatures the Metablock it came in carried (they
    are dropped)."""
    parsed = limits.parse(data, what="layout")
    value = parsed.value
    if not isinstance(value, dict):
        raise MetadataError("layout must be a JSON object")
    if parsed.has_floats:  # a float's digits change when it is written again
        raise MetadataError("layout: numbers with a fraction or an exponent are not allowed "
                            "(in-toto's canonical JSON has none)")
    dropped = 0
    if "signed" in value:  # a Metablock: re-sign its `signed` part
        signatures = value.get("signatures")
        dropped = len(signatures) if isinstance(signatures, list) else 0
        value = value["signed"]
        if not isinstance(value, dict):
            raise MetadataError("layout Metablock 'signed' must be a JSON object")
    if value.get("_type") != "layout":
        raise MetadataError(f"layout _type must be 'layout', got {value.get('_type')!r:.80}")
    return value, dropped


def _same_envelope(envelope: EnvelopeKind | None, kind: EnvelopeKind, *,
                   what: str) -> EnvelopeKind:
    """The envelope of a signed layout; one asked for must be the same."""
    if envelope is not None and envelope is not kind:
        raise RequestError(f"{what}: the layout is in a {kind.value} envelope, not "
                           f"{envelope.value}")
    return kind


class _Preparing:
    """The key ring as resolve_functionaries reads it; an alias without a next version
    (made before pre-rotation) gets one first, by `prepare_next`."""

    def __init__(self, keys: KeyRing,
                 prepare_next: Callable[[str], ServiceKey] | None) -> None:
        self._keys = keys
        self._prepare_next = prepare_next

    def get(self, alias: str) -> ServiceKey:
        key = self._keys.get(alias)
        if key.next is None and self._prepare_next is not None:
            return self._prepare_next(alias)
        return key

    def find_keyid(self, keyid: str) -> KeyVersion | None:
        return self._keys.find_keyid(keyid)


def _check_names(layout: Layout) -> None:
    """Each step's and inspection's name follows the grammar (custody_core.step_names):
    a link is written to a file named after it."""
    for index, step in enumerate(layout.steps):
        check_step_name(step.name, what=f"layout steps[{index}].name")
    for index, inspection in enumerate(layout.inspections):
        check_step_name(inspection.name, what=f"layout inspect[{index}].name")


def _recorded_environment(environment: Mapping[str, str], *, caller: str,
                          run_id: str = "") -> dict[str, str]:
    for reserved in (REQUESTED_BY, SIGNED_RUN_ID):
        if reserved in environment:
            given = " (give run_id)" if reserved == SIGNED_RUN_ID else ""
            raise RequestError(f"environment key {reserved!r} is set by the service, "
                               f"not by the client{given}")
    recorded = {**environment, REQUESTED_BY: caller}
    if run_id:
        recorded[SIGNED_RUN_ID] = run_id
    return recorded

