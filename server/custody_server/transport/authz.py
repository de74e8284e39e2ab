"""Who is calling, may they, and how often: the access interceptor.

For every Custody and KeyAdmin RPC, before the servicer runs, in this order:

1. a call whose deadline passed while it waited for a worker: DEADLINE_EXCEEDED;
2. the client certificate, read from its own bytes (custody_server.policy.identity):
   one that names no usable identity, or whose serial the CRL in force revokes
   (custody_server.policy.revocation), is UNAUTHENTICATED (audited with its serial),
   after a token from a bucket of its own (keyed by the serial, at the default rate),
   so that a stolen or broken certificate can neither flood the audit trail nor use up
   the rate of the identity it names;
3. the identity's token bucket: RESOURCE_EXHAUSTED with a `retry-after-ms` trailer
   (audited at most once a minute per identity, with the count of refusals since the
   previous entry: custody_server.policy.refusal_sampler);
4. an identity no grant names: UNAUTHENTICATED (audited);
5. the request's bytes parsed as the RPC's protobuf message: INVALID_ARGUMENT if they
   do not parse (audited as `decode-request`). The service handlers are registered
   with the raw bytes (AccessInterceptor), so that no request, however malformed,
   skips steps 2-4, the audit trail or the request id;
6. the policy's decision on RPC, key alias and step name: PERMISSION_DENIED (audited);
   for SignLinks on the RPC alone, and each link then by `check_link` (one token of the
   rate and a decision on its key alias and step name each); Verify with `stored_links`
   reads the attestation store, so it needs a grant of ListLinks as well;
7. layout size and nesting limits (custody_core.strict_json.JsonLimits):
   INVALID_ARGUMENT naming the limit (audited as `request-limit`).

Health checking and reflection pass through (the TLS handshake still requires a
client certificate signed by the client CA). The servicer learns the identity
from `authenticated_identity()`.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, cast

import grpc
import structlog

from custody_core.errors import CustodyError
from custody_core.step_names import step_name_for_audit
from custody_server.audit_events import AuditEvent, AuditSink
from custody_server.errors import MalformedRequestError, RequestError
from custody_server.policy import (
    RPC_CATALOG,
    AccessRequest,
    ClientIdentity,
    Policy,
    PolicyStore,
    RateLimiter,
    ReloadOutcome,
    RequestLimits,
    RpcInfo,
)
from custody_server.policy.identity import PeerCertificate, peer_from_auth_context
from custody_server.policy.refusal_sampler import RefusalSampler
from custody_server.policy.revocation import RevocationStore
from custody_server.policy.rpcs import (
    READS_WITHOUT_AUDIT,
    STORE_READ_RPC,
    KeyScope,
    reads_store,
)
from custody_server.transport.errors import status_for
from custody_server.transport.in_progress import CallCounter

log = structlog.get_logger("custody.access")

RETRY_AFTER_TRAILER = "retry-after-ms"
_LAYOUT_RPCS = frozenset({"SignLayout", "Verify"})  # their `layout` field: size and depth
Parse = Callable[[bytes], Any]  # the RPC's request message from its bytes
_CERTIFICATE_BUCKET = "certificate-serial:"  # rate buckets of refused certificates
_caller: contextvars.ContextVar[ClientIdentity | None] = contextvars.ContextVar(
    "custody_caller", default=None)


def authenticated_identity() -> ClientIdentity | None:
    """The identity the access interceptor admitted for the current call, if any."""
    return _caller.get()


@dataclass(frozen=True)
class KeyDefaults:
    """The aliases the servicer uses when a request names none; the policy checks these."""

    link_key: str
    layout_key: str


class AccessRefused(CustodyError):
    """A call is refused before the servicer runs; carries its gRPC status. A link of a
    SignLinks call refused by `check_link` carries the audit event that records it."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: Sequence[tuple[str, str]] = (),
                 event: AuditEvent | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.trailers = tuple(trailers)
        self.event = event


class AccessControl:
    """The decisions, without gRPC plumbing: testable with a plain auth-context dict."""

    def __init__(self, *, policy: PolicyStore, audit: AuditSink, limits: RequestLimits,
                 defaults: KeyDefaults, rate_limiter: RateLimiter | None = None,
                 refusal_sampler: RefusalSampler | None = None,
                 revocation: RevocationStore | None = None) -> None:
        self.policy = policy
        self.revocation = revocation  # None: no CRL configured
        self._audit = audit
        self._limits = limits
        self._defaults = defaults
        # not `or`: an empty RateLimiter is falsy (it has a length), and would be replaced
        self._rate_limiter = rate_limiter if rate_limiter is not None else RateLimiter()
        self._refusals = refusal_sampler or RefusalSampler()

    def admit(self, rpc: RpcInfo, message: Any, *, auth: Mapping[str, Sequence[bytes]],
              peer: str, parse: Parse | None = None) -> tuple[ClientIdentity, Any]:
        """The caller's identity and its request if the call may go ahead; AccessRefused
        if not. `message` is the request's bytes, parsed with `parse` once the caller is
        known (without `parse`, `message` is the request itself)."""
        details: dict[str, Any] = {"rpc": rpc.name, "peer": peer}
        policy = self.policy.current  # one policy for the whole decision
        identity = self._authenticate(peer_from_auth_context(auth), policy, details)
        details.update(caller=identity.value, identity_source=identity.source.value)
        wait = self._rate_limiter.acquire(identity.value, policy.rate_for(identity.value))
        if wait > 0:
            self._refuse_for_rate(identity.value, wait, details)
        if not policy.knows(identity.value):
            self._deny(grpc.StatusCode.UNAUTHENTICATED, "authenticate", "authentication",
                       f"unauthenticated: identity {identity.value!r} is not in the policy",
                       details)
        request = message if parse is None else self._parse(parse, message, details)
        access = self._access_request(rpc, request, identity.value)
        if access.key_alias is not None:
            details["key_alias"] = access.key_alias
        if access.step is not None:  # the whole name, or its digest: never a prefix
            details.update(step_name_for_audit(access.step))
        decision = policy.decide(access)
        if not decision.known:
            self._deny(grpc.StatusCode.UNAUTHENTICATED, "authenticate", "authentication",
                       f"unauthenticated: {decision.reason}", details)
        if not decision.allowed:
            self._deny(grpc.StatusCode.PERMISSION_DENIED, "authorize", "iam",
                       f"permission denied: {decision.reason}", details)
        if reads_store(rpc.name, request):
            self._check_store_read(policy, identity.value, rpc, details)
        layout = getattr(request, "layout", None) if rpc.name in _LAYOUT_RPCS else None
        if isinstance(layout, bytes):
            try:
                self._limits.check_layout(layout)
            except RequestError as refused:
                self._deny(status_for(refused), "request-limit", "api", str(refused), details)
        return identity, request

    def _check_store_read(self, policy: Policy, identity: str, rpc: RpcInfo,
                          details: dict[str, Any]) -> None:
        """A call that reads the attestation store beyond its RPC's name (Verify with
        stored_links) is allowed only to an identity granted the store's read RPC."""
        details["stored_links"] = True
        decision = policy.decide(AccessRequest(identity=identity, rpc=STORE_READ_RPC))
        if not decision.allowed:
            self._deny(grpc.StatusCode.PERMISSION_DENIED, "authorize", "iam",
                       f"permission denied: {rpc.name} with stored_links reads the "
                       f"attestation store, which needs a grant of {STORE_READ_RPC}: "
                       f"{decision.reason}", details)

    def check_link(self, *, identity: str, key_alias: str, step: str) -> None:
        """One link of a SignLinks call, decided as the link on its own: one token of the
        identity's rate, then the policy on key alias and step name (the grants of
        SignLinks). AccessRefused if not, carrying the audit event that records the
        refusal (for the caller to record with the batch's other entries; None for a rate
        refusal the sampler leaves out)."""
        policy = self.policy.current
        details: dict[str, Any] = {"rpc": "SignLinks", "caller": identity,
                                   "key_alias": key_alias[:100], **step_name_for_audit(step)}
        wait = self._rate_limiter.acquire(identity, policy.rate_for(identity))
        if wait > 0:
            retry_ms = max(1, math.ceil(wait * 1000))
            reason = f"rate limit for {identity!r} exceeded: retry in {retry_ms} ms"
            refusals = self._refusals.refused(identity)
            raise AccessRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, event=AuditEvent(
                action="rate-limit", category="iam", outcome="failure", reason=reason,
                details={**details, "refusals": refusals}) if refusals else None)
        decision = policy.decide(AccessRequest(identity=identity, rpc="SignLinks",
                                               key_scope=KeyScope.LINK, key_alias=key_alias,
                                               step=step))
        if decision.allowed:
            return
        code, action, category, reason = (
            (grpc.StatusCode.PERMISSION_DENIED, "authorize", "iam", "permission denied")
            if decision.known else
            (grpc.StatusCode.UNAUTHENTICATED, "authenticate", "authentication",
             "unauthenticated"))
        reason = f"{reason}: {decision.reason}"[:1000]
        raise AccessRefused(code, reason, event=AuditEvent(
            action=action, category=category, outcome="failure", reason=reason[:500],
            details=details))

    def _authenticate(self, certificate: PeerCertificate, policy: Policy,
                      details: dict[str, Any]) -> ClientIdentity:
        """The certificate's identity; AccessRefused if it has none or is revoked."""
        if certificate.serial is not None:
            details["certificate_serial"] = certificate.serial_text
        revocation = self.revocation.current if self.revocation is not None else None
        if certificate.identity is not None and (revocation is None
                                                 or not revocation.revokes(certificate)):
            return certificate.identity
        if certificate.identity is None:
            reason = certificate.problem
            details["caller"] = ""
        else:
            assert revocation is not None  # for mypy: revoked, so a CRL is in force
            reason = (f"client certificate (serial {certificate.serial_text}) is revoked "
                      "by the CRL in force")
            details.update(caller=certificate.identity.value, crl_sha256=revocation.fingerprint)
        bucket = f"{_CERTIFICATE_BUCKET}{certificate.serial_text or 'none'}"
        wait = self._rate_limiter.acquire(bucket, policy.default_rate)
        if wait > 0:
            self._refuse_for_rate(bucket, wait, details)
        self._deny(grpc.StatusCode.UNAUTHENTICATED, "authenticate", "authentication",
                   f"unauthenticated: {reason}", details)

    def _parse(self, parse: Parse, message: Any, details: Mapping[str, Any]) -> Any:
        """The request from its bytes; INVALID_ARGUMENT (audited) if they do not parse."""
        try:
            return parse(message)
        except Exception as error:  # DecodeError, or anything else a parser raises on bytes
            refused = MalformedRequestError(
                f"malformed request: {str(error)[:200] or type(error).__name__}")
        self._deny(status_for(refused), "decode-request", "api", str(refused), details)

    def _access_request(self, rpc: RpcInfo, request: Any, identity: str) -> AccessRequest:
        if rpc.per_link:  # the call is granted or not; each link is decided on its own
            return AccessRequest(identity=identity, rpc=rpc.name)
        alias: str | None = None
        if rpc.key_scope is not None:
            alias = str(getattr(request, rpc.key_field, "") or "")
            if not alias and rpc.key_scope is KeyScope.LINK:
                alias = self._defaults.link_key
            elif not alias and rpc.key_scope is KeyScope.LAYOUT:
                alias = self._defaults.layout_key
        step = str(getattr(request, rpc.step_field, "")) if rpc.step_field else None
        return AccessRequest(identity=identity, rpc=rpc.name, key_scope=rpc.key_scope,
                             key_alias=alias, step=step)

    def _refuse_for_rate(self, identity: str, wait: float,
                         details: Mapping[str, Any]) -> NoReturn:
        retry_ms = max(1, math.ceil(wait * 1000))
        reason = f"rate limit for {identity!r} exceeded: retry in {retry_ms} ms"
        log.info("access.rate_limited", caller=identity, retry_after_ms=retry_ms)
        if refusals := self._refusals.refused(identity):
            self._audit_rate_limit(reason, details, refusals)
        raise AccessRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, reason,
                            ((RETRY_AFTER_TRAILER, str(retry_ms)),))

    def report_pending_refusals(self) -> None:
        """At shutdown: audit the rate-limit refusals that no entry has reported yet."""
        for identity, refusals in self._refusals.drain().items():
            serial = identity.removeprefix(_CERTIFICATE_BUCKET)  # a refused certificate's
            details = ({"caller": identity} if serial == identity
                       else {"caller": "", "certificate_serial": serial})
            self._audit_rate_limit(f"rate limit for {identity!r} exceeded (reported at "
                                   "shutdown)", details, refusals)

    def _audit_rate_limit(self, reason: str, details: Mapping[str, Any],
                          refusals: int) -> None:
        self._record_refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, AuditEvent(
            action="rate-limit", category="iam", outcome="failure", reason=reason,
            details={**details, "refusals": refusals}))

    def _deny(self, code: grpc.StatusCode, action: str, category: str, reason: str,
              details: Mapping[str, Any]) -> NoReturn:
        """Audit the denial, then refuse."""
        self._record_refusal(code, AuditEvent(action=action, category=category,
                                              outcome="failure", reason=reason[:500],
                                              details=dict(details)))
        log.info("access.denied", code=code.name, reason=reason[:300])
        raise AccessRefused(code, reason[:1000])

    def _record_refusal(self, code: grpc.StatusCode, event: AuditEvent) -> None:
        """A refusal stays a refusal if its audit fails: the log says so."""
        try:
            self._audit.record(event)
        except Exception:
            log.exception("access.audit_failed", code=code.name)

    def reload_revocation(self) -> ReloadOutcome | None:
        """Re-read the CRL (SIGHUP); audit the outcome; the old one stays if the new is bad.
        None when no CRL is configured."""
        if self.revocation is None:
            return None
        outcome = self.revocation.reload()
        current = self.revocation.current
        details: dict[str, Any] = {"crl_file": str(self.revocation.path),
                                   "crl_sha256": outcome.fingerprint,
                                   "previous_crl_sha256": outcome.previous_fingerprint,
                                   "revoked_serials": len(current.serials)}
        expired = current.expired(datetime.now(UTC))
        if expired:
            details["crl_expired"] = True
        try:
            self._audit.record(AuditEvent(
                action="crl-reload", category="configuration",
                outcome="success" if outcome.loaded else "failure",
                reason=outcome.error[:500], details=details))
        except Exception:
            log.exception("access.audit_failed", action="crl-reload")
        if outcome.loaded:
            log.info("crl.reloaded", crl_sha256=outcome.fingerprint,
                     revoked_serials=len(current.serials))
        else:
            log.error("crl.reload_rejected", error=outcome.error, crl_sha256=outcome.fingerprint)
        if expired:
            log.warning("crl.expired", next_update=str(current.next_update))
        return outcome

    def reload_policy(self) -> ReloadOutcome:
        """Re-read the policy file (SIGHUP); audit the outcome; the old one stays if bad."""
        outcome = self.policy.reload()
        event = AuditEvent(
            action="policy-reload", category="configuration",
            outcome="success" if outcome.loaded else "failure",
            reason=outcome.error[:500],
            details={"policy_file": str(self.policy.path),
                     "policy_sha256": outcome.fingerprint,
                     "previous_policy_sha256": outcome.previous_fingerprint},
        )
        try:
            self._audit.record(event)
        except Exception:
            log.exception("access.audit_failed", action="policy-reload")
        if outcome.loaded:
            log.info("policy.reloaded", policy_sha256=outcome.fingerprint)
        else:
            log.error("policy.reload_rejected", error=outcome.error,
                      policy_sha256=outcome.fingerprint)
        return outcome


class AccessInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, access: AccessControl,
                 catalog: Mapping[str, RpcInfo] = RPC_CATALOG,
                 in_progress: CallCounter | None = None) -> None:
        self._access = access
        self._catalog = catalog
        self._in_progress = in_progress or CallCounter()

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        rpc = self._catalog.get(handler_call_details.method)
        if handler is None or rpc is None or handler.unary_unary is None:
            return handler  # health, reflection, unknown methods: not ours to decide
        inner = handler.unary_unary
        access = self._access
        # the calls whose audit entry a group commit waits for
        counting = (nullcontext if rpc.name in READS_WITHOUT_AUDIT
                    else self._in_progress.counting)

        parse = handler.request_deserializer  # parsed in admit(), once the caller is known

        def admitted(message: bytes, context: grpc.ServicerContext) -> Any:
            if context.time_remaining() <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "the deadline passed before the call started")
            with counting():  # refusals are audited too
                try:
                    auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
                    identity, request = access.admit(rpc, message, auth=auth,
                                                     peer=context.peer(), parse=parse)
                except AccessRefused as refused:
                    _abort(context, refused)
                token = _caller.set(identity)
                try:
                    return inner(request, context)
                finally:
                    _caller.reset(token)

        # No deserializer: gRPC hands over the bytes as received, and a request that does
        # not parse is refused here, authenticated, rate-limited and audited like any other.
        return grpc.unary_unary_rpc_method_handler(
            admitted, request_deserializer=None,
            response_serializer=handler.response_serializer,
        )


def _abort(context: grpc.ServicerContext, refused: AccessRefused) -> NoReturn:
    if refused.trailers:
        existing = tuple(context.trailing_metadata() or ())
        context.set_trailing_metadata(existing + refused.trailers)
    context.abort(refused.code, str(refused))
