"""SignLink and SignLayout: build what to sign (core), sign (HSM), audit, return.

Data flows one way: request -> build metadata -> sign -> audit -> response.
No signature leaves this module unless its audit record was written first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from custody_core.api_enums import EnvelopeKind
from custody_core.envelope import PAYLOAD_TYPE_INTOTO, sign_dsse, sign_metablock
from custody_core.errors import CustodyError, MetadataError, SignatureError
from custody_core.keys import PublicKey
from custody_core.link import build_link, link_file_name, link_to_statement
from custody_core.models import Layout
from custody_core.signer import Signer
from custody_server.audit_events import AuditEvent, AuditSink, record_or_refuse
from custody_server.errors import LimitExceededError, RequestError
from custody_server.jsonlimits import loads_limited
from custody_server.lifecycle.functionaries import resolve_functionaries
from custody_server.lifecycle.keyring import KeyRing, KeyVersion

ALIAS_PREFIX = "alias:"
# The link's environment records who asked for it (the client certificate's identity,
# docs/SECURITY.md); a client cannot set this key itself.
REQUESTED_BY = "custody.requested-by"


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


@dataclass(frozen=True)
class SignedMetadata:
    content: bytes  # the file to write, exactly
    key: KeyVersion
    envelope: EnvelopeKind
    signed_sha256: str  # hex SHA-256 of the exact bytes the signature covers
    file_name: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Signed:
    content: bytes
    signed_bytes: bytes


class SigningService:
    def __init__(self, *, keys: KeyRing, audit: AuditSink, max_artifacts: int) -> None:
        self._keys = keys
        self._audit = audit
        self._max_artifacts = max_artifacts

    def sign_link(self, request: LinkRequest, *, caller: str) -> SignedMetadata:
        details: dict[str, Any] = {"step": request.step_name[:200],
                                   "key_alias": request.key_alias[:100],
                                   "caller": caller, "envelope": request.envelope.value}
        try:
            if not request.step_name:
                raise RequestError("step_name is required")
            count = len(request.materials) + len(request.products)
            if count > self._max_artifacts:
                raise LimitExceededError(
                    f"{count} artifacts is over the limit of {self._max_artifacts} per link"
                )
            link = build_link(
                name=request.step_name,
                command=request.command,
                materials=request.materials,
                products=request.products,
                byproducts=request.byproducts,
                environment=_recorded_environment(request.environment, caller=caller),
            )
            version, signer = self._keys.signer(request.key_alias)
            signed = _sign(link, request.envelope, signer, compact=True)
        except CustodyError as error:
            self._audit_failure("sign-link", error, details)
            raise
        return self._audited_result("sign-link", signed, details=details, key=version,
                                    envelope=request.envelope,
                                    file_name=link_file_name(request.step_name,
                                                             version.public_key.keyid))

    def sign_layout(self, layout: bytes, *, key_alias: str, envelope: EnvelopeKind,
                    caller: str) -> SignedMetadata:
        details: dict[str, Any] = {"key_alias": key_alias, "caller": caller,
                                   "envelope": envelope.value}
        try:
            if envelope is EnvelopeKind.STATEMENT:
                raise RequestError("a layout is signed as METABLOCK or DSSE, not STATEMENT")
            payload, warnings = self._resolve_functionaries(_unsigned_layout(layout))
            details["layout_readme"] = str(payload.get("readme", ""))[:200]
            Layout.from_payload(payload)  # reject what a verifier would reject
            version, signer = self._keys.signer(key_alias)
            signed = _sign(payload, envelope, signer, compact=False)
        except CustodyError as error:
            self._audit_failure("sign-layout", error, details)
            raise
        return self._audited_result("sign-layout", signed, details=details, key=version,
                                    envelope=envelope, warnings=warnings)

    def _resolve_functionaries(
        self, payload: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Replace "alias:NAME" entries in steps' pubkeys with the keyids of the versions
        that verify now (only the active one in steps with threshold > 1): see
        custody_server.lifecycle.functionaries. Returns the warnings for the response."""
        return resolve_functionaries(payload, keys=self._keys, now=self._keys.now())

    def _audited_result(self, action: str, signed: _Signed, *, details: Mapping[str, Any],
                        key: KeyVersion, envelope: EnvelopeKind, file_name: str = "",
                        warnings: tuple[str, ...] = ()) -> SignedMetadata:
        """The result to return, once its audit entry is on disk (fail-closed)."""
        result = SignedMetadata(content=signed.content, key=key, envelope=envelope,
                                signed_sha256=hashlib.sha256(signed.signed_bytes).hexdigest(),
                                file_name=file_name, warnings=warnings)
        self._audit_success(action, result, details)
        return result

    def _audit_success(self, action: str, result: SignedMetadata,
                       details: Mapping[str, Any]) -> None:
        event = AuditEvent(action=action, category="process", outcome="success", details={
            **details,
            "key_alias": result.key.alias,
            "key_version": result.key.version,
            "keyid": result.key.public_key.keyid,
            "signed_sha256": result.signed_sha256,
        })
        record_or_refuse(self._audit, event, refusal="audit log unavailable: signature withheld")

    def _audit_failure(self, action: str, error: CustodyError,
                       details: Mapping[str, Any]) -> None:
        event = AuditEvent.failure(action=action, category="process", error=error,
                                   details=details)
        record_or_refuse(self._audit, event, refusal="audit log unavailable")


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


def _sign(signed: Mapping[str, Any], envelope: EnvelopeKind, signer: Signer, *,
          compact: bool) -> _Signed:
    """`compact`: one line, as in-toto's `compact_json` writes. Links are, since machines
    read them and the standard library indents in pure Python (about a tenth of a small
    SignLink's CPU); layouts stay indented for the people who review them."""
    recording = _RecordingSigner(signer)
    if envelope is EnvelopeKind.METABLOCK:
        content = sign_metablock(signed, [recording], compact=compact)
        return _Signed(content, recording.only_signed_bytes())
    body = link_to_statement(signed) if envelope is EnvelopeKind.STATEMENT else signed
    # DSSE signs the payload bytes as they are, so no canonical form is needed; plain
    # sorted JSON (as in-toto writes it) also escapes the newlines in PEM keys, which
    # canonical JSON would leave raw and strict JSON parsers reject.
    payload = json.dumps(body, sort_keys=True).encode()
    content = sign_dsse(payload, payload_type=PAYLOAD_TYPE_INTOTO, signers=[recording],
                        compact=compact)
    return _Signed(content, recording.only_signed_bytes())


def _unsigned_layout(data: bytes) -> dict[str, Any]:
    value = loads_limited(data, what="layout")
    if not isinstance(value, dict):
        raise MetadataError("layout must be a JSON object")
    if "signed" in value:  # a Metablock: re-sign its `signed` part
        value = value["signed"]
        if not isinstance(value, dict):
            raise MetadataError("layout Metablock 'signed' must be a JSON object")
    if value.get("_type") != "layout":
        raise MetadataError(f"layout _type must be 'layout', got {value.get('_type')!r}")
    return value


def _recorded_environment(environment: Mapping[str, str], *, caller: str) -> dict[str, str]:
    if REQUESTED_BY in environment:
        raise RequestError(f"environment key {REQUESTED_BY!r} is set by the service, "
                           "not by the client")
    return {**environment, REQUESTED_BY: caller}

