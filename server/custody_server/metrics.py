"""Prometheus metrics: what the on-call and the security team watch.

Through prometheus_client, in a registry of each server's own (tests run several servers in
one process). `ServiceMetrics` holds Custody's metrics and is fed by an interceptor
(requests by RPC and status code, latency, calls in flight, rate-limit refusals), by the
audit sink it wraps (signatures, verdicts by failure stage, policy and CRL reloads, what the
attestation store could not keep), by the
audit trail (write latency, failures, the last checkpoint) and by callables read at scrape
time (HSM token, audit health, key versions, overlap windows, next rotations, the CRL).

Every labelled series whose label values are known in advance starts at zero, so that an
`increase()` or `rate()` sees the first event. docs/OPERATIONS.md lists the metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from custody_core.verdict import Cause, Stage
from custody_server import __version__
from custody_server.audit_events import AuditEvent, AuditSink
from custody_server.policy.rpcs import RPC_CATALOG
from custody_server.store.records import KINDS as STORED_KINDS

log = structlog.get_logger("custody.metrics")
# No `_created` series beside every counter and histogram: they double the series and
# Prometheus reads a reset from the counter itself (process-wide in prometheus_client).
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
# Every RPC the server registers that the interceptor measures (unary): the API's and
# the health check's.
KNOWN_RPCS: tuple[str, ...] = (*sorted(info.name for info in RPC_CATALOG.values()), "Check")
STATUS_CODES: tuple[str, ...] = tuple(code.name for code in grpc.StatusCode)
SIGNING_ACTIONS = ("sign-link", "sign-layout")
OUTCOMES = ("success", "failure")
# custody_verifications_total{result, stage}: a passed verdict has no stage, a request
# that could not be verified (bad layout bytes, unknown key) is an "error" at "request",
# a failed verdict names the failure stage (Failure.failure_stage: the pipeline stage,
# with the threshold stage told apart by its cause).
VERDICT_STAGES: tuple[str, ...] = (
    *(str(stage) for stage in Stage  # command alignment only warns
      if stage not in (Stage.THRESHOLD, Stage.COMMAND_ALIGNMENT)),
    *(str(cause) for cause in Cause))
# The SLIs that need the attestation store (counted at each recorded Verify, from its
# audit entry): the layout's steps with and without a link, and the artifacts asked
# about, by verdict, with and without links retained in the store.
STEP_LINKS = ("present", "missing")
ARTIFACT_LINKS = ("retained", "missing")
VERDICT_RESULTS = ("passed", "failed")
AUDIT_FAILURE_KINDS = ("write", "checkpoint", "anchor")
RELOADED_FILES = {"policy-reload": "policy", "crl-reload": "crl"}
UNKNOWN_ALIAS = "(unknown)"  # a failed signing request naming an alias never seen signing
RETRY_AFTER_TRAILER = "retry-after-ms"  # custody_server.transport.authz's rate-limit refusal


class ServiceMetrics:
    """Custody's metrics; implements the audit trail's AuditObserver."""

    def __init__(self, *, aliases: Iterable[str] = (), process: bool = True) -> None:
        """`aliases`: the key aliases whose signing series start at zero. `process`: the
        process, platform and GC collectors (one server per process in production)."""
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        Info("custody_build", "The running server's version", registry=registry).info(
            {"version": __version__})
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.rpc_requests = Counter(
            "custody_rpc_requests", "RPCs by method and gRPC status code",
            ("rpc", "code"), registry=registry)
        self.rpc_in_flight = Gauge(
            "custody_rpc_in_flight", "RPCs being handled now, by method (refusals included)",
            ("rpc",), registry=registry)
        self.rpc_duration = Histogram(
            "custody_rpc_duration_seconds",
            "RPC latency by method (SignLink and SignLayout: signing latency, audit included)",
            ("rpc",), buckets=LATENCY_BUCKETS, registry=registry)
        self.rate_limited = Counter(
            "custody_rate_limited_requests",
            "Calls refused by the caller's rate limit (RESOURCE_EXHAUSTED with retry-after-ms)",
            ("rpc",), registry=registry)
        self.signatures = Counter(
            "custody_signatures", "Signing requests by action, key alias and outcome",
            ("action", "key_alias", "outcome"), registry=registry)
        self.verifications = Counter(
            "custody_verifications",
            "Verify verdicts (audited; plan calls are not counted) by result and first "
            "failure stage", ("result", "stage"), registry=registry)
        self.verified_steps = Counter(
            "custody_verified_steps",
            "Steps of the layouts of recorded Verify calls, by whether the links verified "
            "held one for the step (links per run against the layout's steps)", ("links",),
            registry=registry)
        self.verified_artifacts = Counter(
            "custody_verified_artifacts",
            "Artifacts of recorded Verify calls (custody verify --artifact), by verdict and "
            "by whether the attestation store keeps a link that made them", ("result", "links"),
            registry=registry)
        self.store_withheld = Counter(
            "custody_store_withheld",
            "Links and layouts signed (and audited) but withheld from the caller "
            "(UNAVAILABLE) because the attestation store could not keep them, by kind",
            ("kind",), registry=registry)
        self.policy_reloads = Counter(
            "custody_policy_reloads", "Reloads (SIGHUP) of the access policy and the CRL, "
            "by file and outcome", ("file", "outcome"), registry=registry)
        self.audit_write = Histogram(
            "custody_audit_write_duration_seconds",
            "Durable append of one group commit of the audit trail", buckets=LATENCY_BUCKETS,
            registry=registry)
        self.audit_entries = Counter(
            "custody_audit_entries", "Entries written to the audit trail", registry=registry)
        self.audit_failures = Counter(
            "custody_audit_failures",
            "Audit trail failures: write (entries refused), checkpoint (not signed), anchor "
            "(the token's record not moved)", ("kind",), registry=registry)
        self.last_checkpoint = Gauge(
            "custody_audit_last_checkpoint_timestamp_seconds",
            "When the audit trail's last signed checkpoint was written (Unix time; 0: none "
            "since the server started)", registry=registry)
        self.certificate_expiry = Gauge(
            "custody_certificate_expiry_timestamp_seconds",
            "Not-after of the server's TLS certificate and of the client CA (the earliest, "
            "when the file holds several), as loaded at start (Unix time)",
            ("certificate",), registry=registry)
        self._scraped = _ScrapeTimeGauges()
        registry.register(self._scraped)
        self._known_aliases: set[str] = set()
        self._aliases_lock = threading.Lock()
        self._initialise(aliases)

    def _initialise(self, aliases: Iterable[str]) -> None:
        for rpc in KNOWN_RPCS:
            self.rpc_in_flight.labels(rpc)
            self.rpc_duration.labels(rpc)
            self.rate_limited.labels(rpc)
            for code in STATUS_CODES:
                self.rpc_requests.labels(rpc, code)
        self.add_aliases(aliases)
        self.verifications.labels("passed", "")
        self.verifications.labels("error", "request")
        for stage in VERDICT_STAGES:
            self.verifications.labels("failed", stage)
        for links in STEP_LINKS:
            self.verified_steps.labels(links)
        for result in VERDICT_RESULTS:
            for links in ARTIFACT_LINKS:
                self.verified_artifacts.labels(result, links)
        for kind in STORED_KINDS:
            self.store_withheld.labels(kind)
        for file in RELOADED_FILES.values():
            for outcome in OUTCOMES:
                self.policy_reloads.labels(file, outcome)
        for kind in AUDIT_FAILURE_KINDS:
            self.audit_failures.labels(kind)

    def add_aliases(self, aliases: Iterable[str]) -> None:
        """Key aliases whose signing series exist (at zero until used)."""
        with self._aliases_lock:
            for alias in aliases:
                if alias not in self._known_aliases:
                    self._known_aliases.add(alias)
                    for action in SIGNING_ACTIONS:
                        for outcome in OUTCOMES:
                            self.signatures.labels(action, alias, outcome)

    def render(self) -> str:
        """The text exposition format (0.0.4), as /metrics serves it by default."""
        return generate_latest(self.registry).decode("utf-8")

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample's value (e.g. `custody_audit_entries_total`), None if absent."""
        return self.registry.get_sample_value(name, labels)

    # Feeds: the audit trail (AuditObserver)

    def audit_written(self, *, seconds: float, entries: int) -> None:
        self.audit_write.observe(seconds)
        self.audit_entries.inc(entries)

    def audit_failed(self, *, kind: str) -> None:
        self.audit_failures.labels(kind).inc()

    def audit_checkpointed(self, *, at: datetime) -> None:
        self.last_checkpoint.set(at.timestamp())

    # Feeds read at scrape time

    def watch_audit(self, writable: Callable[[], bool]) -> None:
        self._scraped.set("custody_audit_writable",
                          "1 when the audit trail can be written, else 0", (),
                          lambda: {(): 1.0 if writable() else 0.0})

    def watch_token(self, available: Callable[[], bool]) -> None:
        """HSM session health: whether the key store reaches its token."""
        self._scraped.set("custody_hsm_token_available",
                          "1 while the HSM token can be reached (a session is open), else 0",
                          (), lambda: {(): 1.0 if available() else 0.0})

    def watch_keys(self, versions: Callable[[], Mapping[str, int]]) -> None:
        """`versions`: alias -> number of versions (e.g. from the KeyRing)."""
        def read() -> dict[tuple[str, ...], float]:
            counts = versions()
            self.add_aliases(counts)
            return {(alias,): float(n) for alias, n in counts.items()}

        self._scraped.set("custody_key_versions", "Versions of each key alias", ("alias",),
                          read)

    def watch_overlap(self, remaining: Callable[[], Mapping[tuple[str, int], float]]) -> None:
        """`remaining`: (alias, version) -> seconds until its overlap window ends."""
        self._scraped.set(
            "custody_key_overlap_remaining_seconds",
            "Seconds until the overlap window of a verify-only key version ends",
            ("alias", "version"),
            lambda: {(alias, str(version)): seconds
                     for (alias, version), seconds in remaining().items()})

    def watch_next_rotation(self, remaining: Callable[[], Mapping[str, float]]) -> None:
        """`remaining`: alias -> seconds until its next scheduled rotation."""
        self._scraped.set(
            "custody_key_next_rotation_seconds",
            "Seconds until the scheduled rotation of a key alias (negative: overdue)",
            ("alias",), lambda: {(alias,): s for alias, s in remaining().items()})

    def watch_crl(self, next_update: Callable[[], datetime | None]) -> None:
        """The CRL in force (`[tls] crl_file`): when its issuer promises the next one."""
        def read() -> dict[tuple[str, ...], float]:
            moment = next_update()
            return {} if moment is None else {(): moment.timestamp()}

        self._scraped.set("custody_crl_next_update_timestamp_seconds",
                          "nextUpdate of the certificate revocation list in force (Unix "
                          "time); past it the CRL is stale", (), read)

    def set_certificate_expiry(self, not_after: Mapping[str, datetime]) -> None:
        """`not_after`: "server" / "client-ca" -> the certificate's notAfter."""
        for name, moment in not_after.items():
            self.certificate_expiry.labels(name).set(moment.timestamp())

    # Feeds: events and calls

    def observe_event(self, event: AuditEvent) -> None:
        details = event.details
        if event.action in SIGNING_ACTIONS:
            self.signatures.labels(event.action, self._alias_label(event),
                                   event.outcome).inc()
        elif event.action == "verify":
            if "passed" not in details:
                result, stage = "error", "request"
            else:
                result = "passed" if details["passed"] else "failed"
                stage = str(details.get("failure_stage") or "")
            self.verifications.labels(result, stage).inc()
            if result != "error":
                self._observe_indicators(details, result=result)
        elif event.action in RELOADED_FILES:
            self.policy_reloads.labels(RELOADED_FILES[event.action], event.outcome).inc()
        elif event.action == "store-link" and event.outcome == "failure":
            # AttestationStore.keep_signed: one entry per withheld link or layout
            kind = str(details.get("kind", ""))
            if kind in STORED_KINDS:
                self.store_withheld.labels(kind).inc()

    def _observe_indicators(self, details: Mapping[str, Any], *, result: str) -> None:
        """The store's SLIs from a recorded verdict's entry
        (VerificationService._indicators)."""
        steps, linked = details.get("layout_steps"), details.get("steps_with_links")
        if isinstance(steps, int) and isinstance(linked, int) and 0 <= linked <= steps:
            self.verified_steps.labels("present").inc(linked)
            self.verified_steps.labels("missing").inc(steps - linked)
        artifacts, retained = details.get("artifacts"), details.get("artifacts_retained")
        if isinstance(artifacts, int) and isinstance(retained, int) \
                and 0 <= retained <= artifacts:
            self.verified_artifacts.labels(result, "retained").inc(retained)
            self.verified_artifacts.labels(result, "missing").inc(artifacts - retained)

    def watch_store(self, available: Callable[[], bool]) -> None:
        """The attestation store: whether links can be stored (and so signed)."""
        self._scraped.set("custody_store_available",
                          "1 while the attestation store can be written, else 0 (links "
                          "are then withheld)", (), lambda: {(): 1.0 if available() else 0.0})

    def _alias_label(self, event: AuditEvent) -> str:
        """The alias, when it is a key's: a refused request may name any string, and a
        label value per string would grow without bound."""
        alias = str(event.details.get("key_alias", ""))
        if event.outcome == "success":
            self.add_aliases((alias,))
            return alias
        with self._aliases_lock:
            return alias if alias in self._known_aliases else UNKNOWN_ALIAS

    def observed(self, sink: AuditSink) -> AuditSink:
        return _ObservedSink(sink, self)

    def interceptor(self) -> grpc.ServerInterceptor:  # type: ignore[type-arg]
        return _MetricsInterceptor(self)


class _ScrapeTimeGauges(Collector):
    """Gauges read from callables at scrape time: {label values: value} each.

    prometheus_client's Gauge.set_function takes no labels, hence this collector. A source
    that raises leaves its gauge without samples (logged) and never breaks the scrape.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gauges: dict[str, tuple[str, tuple[str, ...],
                                      Callable[[], Mapping[tuple[str, ...], float]]]] = {}

    def set(self, name: str, documentation: str, labels: tuple[str, ...],
            read: Callable[[], Mapping[tuple[str, ...], float]]) -> None:
        with self._lock:
            self._gauges[name] = (documentation, labels, read)

    def describe(self) -> Iterable[Metric]:
        return []  # the names are not known before the watches are set

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            gauges = sorted(self._gauges.items())
        for name, (documentation, labels, read) in gauges:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            try:
                values = read()
            except Exception as error:  # a broken source must not break the scrape
                log.warning("metrics.gauge_failed", metric=name, error=str(error)[:200])
                values = {}
            for label_values, value in sorted(values.items()):
                family.add_metric(list(label_values), value)
            yield family


class _ObservedSink:
    def __init__(self, inner: AuditSink, metrics: ServiceMetrics) -> None:
        self._inner, self._metrics = inner, metrics

    def record(self, event: AuditEvent) -> None:
        self._inner.record(event)
        self._metrics.observe_event(event)


class _MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times unary RPCs; put it first so it sees the final status code."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        rpc = str(handler_call_details.method).rsplit("/", 1)[-1]
        inner, metrics = handler.unary_unary, self._metrics
        requests = metrics.rpc_requests
        in_flight = metrics.rpc_in_flight.labels(rpc)
        duration = metrics.rpc_duration.labels(rpc)

        def measured(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "UNKNOWN"
            in_flight.inc()
            try:
                response = inner(request, context)
                code = _code_name(context, default="OK")
                return response
            except BaseException:
                code = _code_name(context, default="UNKNOWN")
                if code == "RESOURCE_EXHAUSTED" and _rate_limited(context):
                    metrics.rate_limited.labels(rpc).inc()
                raise
            finally:
                in_flight.dec()
                requests.labels(rpc, code).inc()
                duration.observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            measured, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _code_name(context: grpc.ServicerContext, *, default: str) -> str:
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else default


def _rate_limited(context: grpc.ServicerContext) -> bool:
    """The access interceptor's rate-limit refusal carries a retry-after-ms trailer."""
    trailers = context.trailing_metadata() if hasattr(context, "trailing_metadata") else None
    return any(key == RETRY_AFTER_TRAILER for key, _value in trailers or ())


class MetricsServer:
    """GET /metrics over plain HTTP, in a daemon thread; any other path is 404.

    Not prometheus_client's start_http_server: that one answers every path with the
    metrics; this one keeps /metrics the only page. The body and its content type are
    prometheus_client's own (the text format 0.0.4, or OpenMetrics when the scraper asks
    for it in Accept).
    """

    def __init__(self, metrics: ServiceMetrics, *, host: str, port: int) -> None:
        self._server = serve_registry(metrics.registry, host=host, port=port)
        self.port: int = self._server.server_address[1]

    @classmethod
    def start(cls, metrics: ServiceMetrics, *, listen: str) -> MetricsServer:
        host, _, port = listen.rpartition(":")
        return cls(metrics, host=host.strip("[]") or "127.0.0.1", port=int(port))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_registry(registry: CollectorRegistry, *, host: str, port: int
                   ) -> ThreadingHTTPServer:
    """GET /metrics of `registry` (text or OpenMetrics, as the scraper asks), served in a
    daemon thread; anything else is 404. The server's and a worker supervisor's."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(registry)
            except Exception:
                log.exception("metrics.scrape_failed")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not worth a log line

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="custody-metrics",
                     daemon=True).start()
    return server
