"""Prometheus metrics: what the on-call and the security team watch.

A small text exposition (format 0.0.4) served over http.server at /metrics, so the
server needs no extra dependency. `ServiceMetrics` holds Custody's metrics and is
fed by an interceptor (requests by RPC and status code, latency), by the audit sink
it wraps (signatures, verification results by failure stage), by the audit trail
(write latency and failures) and by callables read at scrape time (key versions,
seconds until each overlap window ends, whether the audit trail can be written).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import structlog

from custody_server.audit_events import AuditEvent, AuditSink

log = structlog.get_logger("custody.metrics")

Labels = tuple[str, ...]
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metric:
    def __init__(self, name: str, help_text: str, kind: str, labels: Labels = ()) -> None:
        self.name, self.help, self.kind, self.label_names = name, help_text, kind, labels
        self._lock = threading.Lock()

    def samples(self) -> Iterable[tuple[str, Labels, float]]:
        """(name suffix, label values, value) for each series."""
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for suffix, values, value in self.samples():
            names = self.label_names + (("le",) if suffix == "_bucket" else ())
            pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
            lines.append(f"{self.name}{suffix}{{{pairs}}} {_number(value)}" if pairs
                         else f"{self.name}{suffix} {_number(value)}")
        return "\n".join(lines) + "\n"


class Counter(Metric):
    def __init__(self, name: str, help_text: str, labels: Labels = ()) -> None:
        super().__init__(name, help_text, "counter", labels)
        self._values: dict[Labels, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def samples(self) -> Iterable[tuple[str, Labels, float]]:
        with self._lock:
            return [("", labels, value) for labels, value in sorted(self._values.items())]


class Gauge(Metric):
    """A gauge read from a callable at scrape time: {label values: value}."""

    def __init__(self, name: str, help_text: str, labels: Labels = (),
                 read: Callable[[], Mapping[Labels, float]] | None = None) -> None:
        super().__init__(name, help_text, "gauge", labels)
        self.read = read

    def samples(self) -> Iterable[tuple[str, Labels, float]]:
        if self.read is None:
            return []
        try:
            values = self.read()
        except Exception as error:  # a broken source must not break the scrape
            log.warning("metrics.gauge_failed", metric=self.name, error=str(error)[:200])
            return []
        return [("", labels, value) for labels, value in sorted(values.items())]


class Histogram(Metric):
    def __init__(self, name: str, help_text: str, labels: Labels = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, "histogram", labels)
        self._buckets = buckets
        # Per series: the count of each bucket alone (the last: above every bound), then
        # the total count and the sum. Cumulated at scrape time, so an observation (one
        # per RPC) touches one bucket.
        self._series: dict[Labels, list[float]] = {}

    def observe(self, value: float, *labels: str) -> None:
        index = bisect.bisect_left(self._buckets, value)  # the first bound >= value
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [0.0] * (len(self._buckets) + 3)
            series[index] += 1
            series[-2] += 1
            series[-1] += value

    def count(self, *labels: str) -> float:
        with self._lock:
            return self._series.get(labels, [0.0, 0.0])[-2]

    def samples(self) -> Iterable[tuple[str, Labels, float]]:
        result: list[tuple[str, Labels, float]] = []
        with self._lock:
            for labels, series in sorted(self._series.items()):
                cumulative = 0.0
                for bound, count in zip(self._buckets, series, strict=False):
                    cumulative += count
                    result.append(("_bucket", (*labels, _number(bound)), cumulative))
                result.append(("_bucket", (*labels, "+Inf"), series[-2]))
                result.append(("_count", labels, series[-2]))
                result.append(("_sum", labels, series[-1]))
        return result


class ServiceMetrics:
    """Custody's metrics; implements the audit trail's AuditObserver."""

    def __init__(self) -> None:
        self.rpc_requests = Counter("custody_rpc_requests_total",
                                    "RPCs by method and gRPC status code", ("rpc", "code"))
        self._in_flight: dict[str, int] = {}  # by RPC, changed under _in_flight_lock
        self._in_flight_lock = threading.Lock()
        self.rpc_in_flight = Gauge("custody_rpc_in_flight",
                                   "RPCs being handled now, by method (refusals included)",
                                   ("rpc",), read=self._rpcs_in_flight)
        self.rpc_duration = Histogram("custody_rpc_duration_seconds",
                                      "RPC latency by method (SignLink and SignLayout: "
                                      "signing latency, audit included)", ("rpc",))
        self.signatures = Counter("custody_signatures_total",
                                  "Signing requests by action, key alias and outcome",
                                  ("action", "key_alias", "outcome"))
        self.verifications = Counter("custody_verifications_total",
                                     "Verify verdicts by result and first failure stage",
                                     ("result", "stage"))
        self.audit_write = Histogram("custody_audit_write_seconds",
                                     "Append and fsync of one group commit of the audit trail")
        self.audit_entries = Counter("custody_audit_entries_total",
                                     "Entries written to the audit trail")
        self.audit_failures = Counter("custody_audit_failures_total",
                                      "Audit trail failures: write, checkpoint (signature)",
                                      ("kind",))
        self.audit_writable = Gauge("custody_audit_writable",
                                    "1 when the audit trail can be written, else 0")
        self.key_versions = Gauge("custody_key_versions", "Versions of each key alias",
                                  ("alias",))
        self.overlap_remaining = Gauge("custody_key_overlap_remaining_seconds",
                                       "Seconds until the overlap window of a key version "
                                       "ends", ("alias", "version"))
        self.next_rotation = Gauge("custody_key_next_rotation_seconds",
                                   "Seconds until the scheduled rotation of a key alias "
                                   "(negative: overdue)", ("alias",))
        self.all: tuple[Metric, ...] = (
            self.rpc_requests, self.rpc_in_flight, self.rpc_duration, self.signatures,
            self.verifications,
            self.audit_write, self.audit_entries, self.audit_failures, self.audit_writable,
            self.key_versions, self.overlap_remaining, self.next_rotation,
        )

    def render(self) -> str:
        return "".join(metric.render() for metric in self.all)

    # Feeds

    def rpc_started(self, rpc: str) -> None:
        with self._in_flight_lock:
            self._in_flight[rpc] = self._in_flight.get(rpc, 0) + 1

    def rpc_ended(self, rpc: str) -> None:
        with self._in_flight_lock:
            self._in_flight[rpc] -= 1

    def _rpcs_in_flight(self) -> dict[Labels, float]:
        with self._in_flight_lock:
            return {(rpc,): float(count) for rpc, count in self._in_flight.items()}

    def audit_written(self, *, seconds: float, entries: int) -> None:
        self.audit_write.observe(seconds)
        self.audit_entries.inc(amount=entries)

    def audit_failed(self, *, kind: str) -> None:
        self.audit_failures.inc(kind)

    def watch_audit(self, writable: Callable[[], bool]) -> None:
        self.audit_writable.read = lambda: {(): 1.0 if writable() else 0.0}

    def watch_keys(self, versions: Callable[[], Mapping[str, int]]) -> None:
        """`versions`: alias -> number of versions (e.g. from the KeyRing)."""
        self.key_versions.read = lambda: {(a,): float(n) for a, n in versions().items()}

    def watch_overlap(self, remaining: Callable[[], Mapping[tuple[str, int], float]]) -> None:
        """`remaining`: (alias, version) -> seconds until its overlap window ends."""
        self.overlap_remaining.read = lambda: {
            (alias, str(version)): seconds for (alias, version), seconds in remaining().items()
        }

    def watch_next_rotation(self, remaining: Callable[[], Mapping[str, float]]) -> None:
        """`remaining`: alias -> seconds until its next scheduled rotation."""
        self.next_rotation.read = lambda: {(alias,): s for alias, s in remaining().items()}

    def observe_event(self, event: AuditEvent) -> None:
        details = event.details
        if event.action in ("sign-link", "sign-layout"):
            self.signatures.inc(event.action, str(details.get("key_alias", "")), event.outcome)
        elif event.action == "verify":
            if "passed" not in details:
                result, stage = "error", "request"
            else:
                result = "passed" if details["passed"] else "failed"
                stage = str(details.get("failure_stage") or "")
            self.verifications.inc(result, stage)

    def observed(self, sink: AuditSink) -> AuditSink:
        return _ObservedSink(sink, self)

    def interceptor(self) -> grpc.ServerInterceptor:  # type: ignore[type-arg]
        return _MetricsInterceptor(self)


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

        def measured(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "UNKNOWN"
            metrics.rpc_started(rpc)
            try:
                response = inner(request, context)
                code = _code_name(context, default="OK")
                return response
            except BaseException:
                code = _code_name(context, default="UNKNOWN")
                raise
            finally:
                metrics.rpc_ended(rpc)
                metrics.rpc_requests.inc(rpc, code)
                metrics.rpc_duration.observe(time.perf_counter() - started, rpc)

        return grpc.unary_unary_rpc_method_handler(
            measured, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _code_name(context: grpc.ServicerContext, *, default: str) -> str:
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else default


class MetricsServer:
    """GET /metrics over plain HTTP, in a daemon thread."""

    def __init__(self, metrics: ServiceMetrics, *, host: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = metrics.render().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes are not worth a log line

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="custody-metrics",
                         daemon=True).start()

    @classmethod
    def start(cls, metrics: ServiceMetrics, *, listen: str) -> MetricsServer:
        host, _, port = listen.rpartition(":")
        return cls(metrics, host=host.strip("[]") or "127.0.0.1", port=int(port))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
