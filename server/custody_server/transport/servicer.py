"""The Custody servicer: convert protobuf to domain values at the edge and back.

KeyAdmin lives in transport/key_admin.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc
from custody_core.api_enums import ENVELOPE_NUMBERS, ENVELOPES_BY_NUMBER, UNSPECIFIED, EnvelopeKind
from custody_core.errors import CustodyError
from custody_core.final_product import GivenArtifact
from custody_core.keys import PublicKey
from custody_core.step_names import step_name_for_audit
from custody_core.strict_json import parse_json
from custody_core.verdict import Verdict
from custody_server.attestations import Attestations
from custody_server.audit_events import AuditEvent, AuditSink
from custody_server.batch_signing import BatchSigning, RefusedLink
from custody_server.errors import RequestError
from custody_server.signing import LinkRequest, SignedMetadata, SigningService
from custody_server.store.records import (
    DEFAULT_LIMIT,
    LinkQuery,
    StoredRecord,
    check_run_id,
    parse_digest,
    parse_page_token,
)
from custody_server.store_reads import audited_read, found_files
from custody_server.transport.authz import AccessRefused, authenticated_identity
from custody_server.transport.errors import client_message, status_for
from custody_server.verification import TrustedKeySpec, VerificationService, VerifyInput

DEFAULT_ENVELOPE = EnvelopeKind.METABLOCK  # for ENVELOPE_UNSPECIFIED


def caller_identity(context: grpc.ServicerContext) -> str:
    """Who is calling: the identity the access interceptor admitted (from the client
    certificate, see custody_server.policy.identity); the peer only without it."""
    identity = authenticated_identity()
    return identity.value if identity is not None else str(context.peer())


def _envelope(value: int) -> EnvelopeKind:
    if value == UNSPECIFIED:
        return DEFAULT_ENVELOPE
    kind = ENVELOPES_BY_NUMBER.get(value)
    if kind is None:
        raise RequestError(f"unknown envelope {value}")
    return kind


# A link of a SignLinks call, decided as that link alone (AccessControl.check_link)
CheckLink = Callable[..., None]


class CustodyServicer(pb_grpc.CustodyServicer):
    def __init__(self, *, signing: SigningService, verification: VerificationService,
                 default_link_key: str, default_layout_key: str, audit: AuditSink,
                 batch: BatchSigning | None = None,
                 check_link: CheckLink | None = None,
                 attestations: Attestations | None = None) -> None:
        """`audit`: where the reads of the store (GetLink, ListLinks) are recorded."""
        self._audit = audit
        self._attestations = attestations
        self._signing = signing
        self._verification = verification
        self._default_link_key = default_link_key
        self._default_layout_key = default_layout_key
        self._batch = batch
        self._check_link = check_link

    def SignLink(self, request: pb.SignLinkRequest,
                 context: grpc.ServicerContext) -> pb.SignLinkResponse:
        signed = self._signing.sign_link(self._link_request(request),
                                         caller=caller_identity(context))
        return _sign_link_response(signed)

    def SignLinks(self, request: pb.SignLinksRequest,
                  context: grpc.ServicerContext) -> pb.SignLinksResponse:
        """Each link decided (AccessControl.check_link), converted, signed and audited on
        its own; a refused one gets its error in its place."""
        if self._batch is None:
            raise RequestError("SignLinks is not available on this server")
        caller = caller_identity(context)
        self._batch.check_size(len(request.links), caller=caller)
        links = [self._batch_link(item, caller) for item in request.links]
        results = self._batch.sign_links(links, caller=caller)
        return pb.SignLinksResponse(results=[
            pb.SignLinkResult(signed=_sign_link_response(result))
            if isinstance(result, SignedMetadata) else
            pb.SignLinkResult(error=pb.SignLinkError(code=_status_number(result),
                                                     message=client_message(result)))
            for result in results])

    def _batch_link(self, item: pb.SignLinkRequest, caller: str) -> LinkRequest | RefusedLink:
        key_alias = item.key_alias or self._default_link_key
        try:
            if self._check_link is not None:
                self._check_link(identity=caller, key_alias=key_alias, step=item.step_name)
            return self._link_request(item)
        except AccessRefused as refused:
            return RefusedLink(refused, refused.event)
        except CustodyError as error:  # a malformed field: refused like its SignLink
            return RefusedLink(error, AuditEvent.failure(
                action="sign-link", category="process", error=error, details={
                    **step_name_for_audit(item.step_name), "key_alias": key_alias[:100],
                    "caller": caller}))

    def _link_request(self, request: pb.SignLinkRequest) -> LinkRequest:
        byproducts: dict[str, Any] = {}
        if request.HasField("byproducts"):
            byproducts = {"stdout": request.byproducts.stdout,
                          "stderr": request.byproducts.stderr}
            if request.byproducts.HasField("return_value"):
                byproducts["return-value"] = request.byproducts.return_value
        return LinkRequest(
            step_name=request.step_name,
            command=tuple(request.command),
            materials=_artifacts(request.materials, what="materials"),
            products=_artifacts(request.products, what="products"),
            byproducts=byproducts,
            environment=dict(request.environment),
            key_alias=request.key_alias or self._default_link_key,
            envelope=_envelope(request.envelope),
            preliminary_link=request.preliminary_link,
            run_id=request.run_id,
        )

    def SignLayout(self, request: pb.SignLayoutRequest,
                   context: grpc.ServicerContext) -> pb.SignLayoutResponse:
        signed = self._signing.sign_layout(
            request.layout,
            key_alias=request.key_alias or self._default_layout_key,
            # unspecified: METABLOCK, or with append/refresh the signed layout's own
            envelope=None if request.envelope == UNSPECIFIED else _envelope(request.envelope),
            caller=caller_identity(context),
            append=request.append,
            refresh=request.refresh,
        )
        return pb.SignLayoutResponse(signed=signed.content, warnings=list(signed.warnings),
                                     other_owners=list(signed.other_owners),
                                     **_key_fields(signed))

    def Verify(self, request: pb.VerifyRequest,
               context: grpc.ServicerContext) -> pb.VerifyResponse:
        verdict, run_id = self._verification.verify_run(VerifyInput(
            layout=request.layout,
            layout_keys=tuple(
                TrustedKeySpec(alias=k.alias, public_key_json=k.public_key_json,
                               public_key_pem=k.public_key_pem)
                for k in request.layout_keys
            ),
            links=_files(request.links, what="links"),
            inspection_links=_files(request.inspection_links, what="inspection_links"),
            parameters=dict(request.parameters),
            unlisted_links=_files(request.unlisted_links, what="unlisted_links"),
            plan=request.plan,
            artifacts=tuple(GivenArtifact(a.path, dict(a.digest)) for a in request.artifacts),
            stored_links=request.stored_links,
            run_id=request.run_id,
        ), caller=caller_identity(context))
        response = verdict_to_pb(verdict)
        response.run_id = run_id
        return response

    # The attestation store

    def _store(self) -> Attestations:
        if self._attestations is None:
            raise RequestError("this server keeps no attestation store")
        return self._attestations

    def AddLink(self, request: pb.AddLinkRequest,
                context: grpc.ServicerContext) -> pb.AddLinkResponse:
        attestations = self._store()
        trusted: dict[str, PublicKey] = {}
        for index, key in enumerate(request.keys):
            if key.alias:
                trusted.update(attestations.service_key_versions(key.alias))
            elif key.public_key_json:
                what = f"keys[{index}].public_key_json"
                data = parse_json(key.public_key_json.encode(), what=what).value
                if not isinstance(data, dict):
                    raise RequestError(f"{what} must be a JSON object")
                public = PublicKey.from_dict(data)
                trusted[public.keyid] = public
            elif key.public_key_pem:
                public = PublicKey.from_pem(key.public_key_pem)
                trusted[public.keyid] = public
            else:
                raise RequestError(f"keys[{index}] is empty: give an alias, a key dict or a PEM")
        record = attestations.add_link(request.link, run_id=request.run_id, trusted=trusted,
                                       caller=caller_identity(context))
        return pb.AddLinkResponse(link=_stored_link(record))

    # Reads of the store: each audited as a `store-read` (what was asked, what was found,
    # never a file's content) before the answer leaves; refused ones too.

    def GetLink(self, request: pb.GetLinkRequest,
                context: grpc.ServicerContext) -> pb.GetLinkResponse:
        return audited_read(self._audit, lambda: self._get_link(request, context),
                            caller=caller_identity(context),
                            asked={"requested_id": request.id[:64]}, found=_found_link)

    def ListLinks(self, request: pb.ListLinksRequest,
                  context: grpc.ServicerContext) -> pb.ListLinksResponse:
        return audited_read(self._audit, lambda: self._list_links(request, context),
                            caller=caller_identity(context), asked=_list_filters(request),
                            found=_found_links)

    def _get_link(self, request: pb.GetLinkRequest,
                  context: grpc.ServicerContext) -> pb.GetLinkResponse:
        return pb.GetLinkResponse(link=_stored_link(self._store().get(request.id)))

    def _list_links(self, request: pb.ListLinksRequest,
                    context: grpc.ServicerContext) -> pb.ListLinksResponse:
        query = LinkQuery(
            kind=request.kind or "link",
            run_id=check_run_id(request.run_id),
            step=request.step,
            digest=parse_digest(request.artifact_digest) if request.artifact_digest else "",
            since=_moment(request, "since"),
            until=_moment(request, "until"),
            limit=request.limit or DEFAULT_LIMIT,
            before_seq=parse_page_token(request.page_token),
            include_content=request.include_content)
        page = self._store().list(query)
        return pb.ListLinksResponse(links=[_stored_link(r) for r in page.records],
                                    next_page_token=page.next_page_token)


def _list_filters(request: pb.ListLinksRequest) -> dict[str, Any]:
    """A ListLinks request's filters as asked (capped: it may not parse), for its entry."""
    filters: dict[str, Any] = {"kind": request.kind[:20] or "link",
                               "limit": request.limit, "include_content": request.include_content}
    if request.step:
        filters.update(step_name_for_audit(request.step))
    for name in ("run_id", "artifact_digest", "page_token"):
        if value := getattr(request, name):
            filters[name] = value[:200]
    for name in ("since", "until"):
        if request.HasField(name):
            filters[name] = getattr(request, name).seconds
    return filters


def _found_links(response: pb.ListLinksResponse) -> dict[str, Any]:
    return {**found_files((link.run_id for link in response.links),
                          (len(link.content) for link in response.links),
                          count=len(response.links)),
            "more": bool(response.next_page_token)}


def _found_link(response: pb.GetLinkResponse) -> dict[str, Any]:
    link = response.link
    return {**found_files((link.run_id,), (len(link.content),), count=1),
            "id": link.id, "kind": link.kind, "keyid": link.keyid,
            **step_name_for_audit(link.step)}


def _moment(request: pb.ListLinksRequest, name: str) -> datetime | None:
    """A Timestamp field as a time, None if unset; RequestError outside the Timestamp's
    range (0001-01-01 to 9999-12-31 UTC, nanos under a second), not a crash."""
    if not request.HasField(name):
        return None
    try:
        moment: datetime = getattr(request, name).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as error:
        raise RequestError(f"{name}: not a time from 0001-01-01 to 9999-12-31 UTC "
                           f"({str(error)[:120]})") from None
    return moment


def _stored_link(record: StoredRecord) -> pb.StoredLink:
    message = pb.StoredLink(id=record.id, kind=record.kind, run_id=record.run_id,
                            step=record.step, keyid=record.keyid, file_name=record.file_name,
                            origin=record.origin, caller=record.caller)
    message.stored.FromDatetime(record.stored_at)
    if record.content is not None:
        message.content = record.content
    return message


def _sign_link_response(signed: SignedMetadata) -> pb.SignLinkResponse:
    return pb.SignLinkResponse(signed=signed.content, file_name=signed.file_name,
                               **_key_fields(signed))


def _status_number(error: CustodyError) -> int:
    code = error.code if isinstance(error, AccessRefused) else status_for(error)
    number: int = code.value[0]
    return number


def _key_fields(signed: SignedMetadata) -> dict[str, Any]:
    return {
        "keyid": signed.key.public_key.keyid,
        "key_alias": signed.key.alias,
        "key_version": signed.key.version,
        "envelope": ENVELOPE_NUMBERS[signed.envelope],
        "sha256": signed.signed_sha256,
    }


def _artifacts(artifacts: Any, *, what: str) -> dict[str, dict[str, str]]:
    """{path: {algorithm: digest}} from repeated Artifact; duplicate paths are refused
    rather than merged. One plain copy per digest map (links hold 100,000s of them):
    reading a map key by key is faster than dict() on it, and the usual map, sha256
    alone, is read without iterating it (measured: see
    docs/PERFORMANCE.md#artifact-maps-in-signlink)."""
    result: dict[str, dict[str, str]] = {}
    for artifact in artifacts:
        digest = artifact.digest
        if len(digest) == 1 and "sha256" in digest:
            result[artifact.path] = {"sha256": digest["sha256"]}
        else:
            result[artifact.path] = {algorithm: digest[algorithm] for algorithm in digest}
    if len(result) != len(artifacts):
        seen: set[str] = set()
        for artifact in artifacts:
            if artifact.path in seen:
                raise RequestError(f"{what}: duplicate artifact path {artifact.path[:200]!r}")
            seen.add(artifact.path)
    return result


def _files(files: Any, *, what: str) -> dict[str, bytes]:
    result: dict[str, bytes] = {}
    for item in files:
        if not item.path:
            raise RequestError(f"{what}: a file has an empty path")
        if item.path in result:
            raise RequestError(f"{what}: duplicate path {item.path[:200]!r}")
        result[item.path] = item.content
    return result


def verdict_to_pb(verdict: Verdict) -> pb.VerifyResponse:
    return pb.VerifyResponse(
        passed=verdict.passed,
        failures=[
            pb.VerifyFailure(stage=f.stage, step=f.step or "", rule=f.rule or "",
                             paths=list(f.paths), reason=f.reason)
            for f in verdict.failures
        ],
        warnings=[
            pb.VerifyWarning(stage=w.stage, step=w.step or "", message=w.message)
            for w in verdict.warnings
        ],
        verdict_json=json.dumps(verdict.to_dict(), sort_keys=True),
    )

