"""Who is calling, may they, and how often: the access interceptor.

For every Custody and KeyAdmin RPC, before the servicer runs, in this order:

1. a call whose deadline passed while it waited for a worker: DEADLINE_EXCEEDED;
2. the identity from the client certificate (custody_server.policy.identity);
   a certificate without a usable identity: UNAUTHENTICATED (audited);
3. the identity's token bucket: RESOURCE_EXHAUSTED with a `retry-after-ms` trailer
   (audited at most once a minute per identity, with the count of refusals since the
   previous entry: custody_server.policy.refusal_sampler);
4. an identity no grant names: UNAUTHENTICATED (audited);
5. the policy's decision on RPC, key alias and step name: PERMISSION_DENIED (audited);
6. layout size and nesting limits: INVALID_ARGUMENT.

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
from typing import Any, NoReturn, cast

import grpc
import structlog

from custody_core.errors import CustodyError
from custody_server.audit_events import AuditEvent, AuditSink
from custody_server.policy import (
    RPC_CATALOG,
    AccessRequest,
    ClientIdentity,
    PolicyStore,
    RateLimiter,
    ReloadOutcome,
    RequestLimits,
    RpcInfo,
    identity_from_auth_context,
)
from custody_server.policy.errors import IdentityError
from custody_server.policy.refusal_sampler import RefusalSampler
from custody_server.policy.rpcs import READS_WITHOUT_AUDIT, KeyScope
from custody_server.transport.in_progress import CallCounter

log = structlog.get_logger("custody.access")

RETRY_AFTER_TRAILER = "retry-after-ms"
_LAYOUT_RPCS = frozenset({"SignLayout", "Verify"})  # their `layout` field: size and depth
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
    """A call is refused before the servicer runs; carries its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 trailers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.trailers = tuple(trailers)


class AccessControl:
    """The decisions, without gRPC plumbing: testable with a plain auth-context dict."""

    def __init__(self, *, policy: PolicyStore, audit: AuditSink, limits: RequestLimits,
                 defaults: KeyDefaults, rate_limiter: RateLimiter | None = None,
                 refusal_sampler: RefusalSampler | None = None) -> None:
        self.policy = policy
        self._audit = audit
        self._limits = limits
        self._defaults = defaults
        self._rate_limiter = rate_limiter or RateLimiter()
        self._refusals = refusal_sampler or RefusalSampler()

    def admit(self, rpc: RpcInfo, request: Any, *, auth: Mapping[str, Sequence[bytes]],
              peer: str) -> ClientIdentity:
        """The caller's identity if the call may go ahead; AccessRefused if not."""
        details: dict[str, Any] = {"rpc": rpc.name, "peer": peer}
        try:
            identity = identity_from_auth_context(auth)
        except IdentityError as error:
            self._deny(grpc.StatusCode.UNAUTHENTICATED, "authenticate", "authentication",
                       f"unauthenticated: {error}", {**details, "caller": ""})
        details.update(caller=identity.value, identity_source=identity.source.value)
        policy = self.policy.current  # one policy for the whole decision
        wait = self._rate_limiter.acquire(identity.value, policy.rate_for(identity.value))
        if wait > 0:
            self._refuse_for_rate(identity.value, wait, details)
        access = self._access_request(rpc, request, identity.value)
        if access.key_alias is not None:
            details["key_alias"] = access.key_alias
        if access.step is not None:
            details["step"] = access.step[:200]
        decision = policy.decide(access)
        if not decision.known:
            self._deny(grpc.StatusCode.UNAUTHENTICATED, "authenticate", "authentication",
                       f"unauthenticated: {decision.reason}", details)
        if not decision.allowed:
            self._deny(grpc.StatusCode.PERMISSION_DENIED, "authorize", "iam",
                       f"permission denied: {decision.reason}", details)
        layout = getattr(request, "layout", None) if rpc.name in _LAYOUT_RPCS else None
        if isinstance(layout, bytes):
            self._limits.check_layout(layout)
        return identity

    def _access_request(self, rpc: RpcInfo, request: Any, identity: str) -> AccessRequest:
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
            self._audit_rate_limit(f"rate limit for {identity!r} exceeded (reported at "
                                   "shutdown)", {"caller": identity}, refusals)

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

        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            if context.time_remaining() <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "the deadline passed before the call started")
            with counting():  # refusals are audited too
                try:
                    auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
                    identity = access.admit(rpc, request, auth=auth, peer=context.peer())
                except AccessRefused as refused:
                    _abort(context, refused)
                token = _caller.set(identity)
                try:
                    return inner(request, context)
                finally:
                    _caller.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            admitted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _abort(context: grpc.ServicerContext, refused: AccessRefused) -> NoReturn:
    if refused.trailers:
        existing = tuple(context.trailing_metadata() or ())
        context.set_trailing_metadata(existing + refused.trailers)
    context.abort(refused.code, str(refused))
