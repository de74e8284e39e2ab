"""Assemble the service: key store, key ring, services, servicers, gRPC server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from custody_api.v1 import custody_pb2, custody_pb2_grpc
from custody_server.attestations import Attestations
from custody_server.audit_events import AuditSink
from custody_server.batch_signing import BatchSigning
from custody_server.bootstrap import prepare_access
from custody_server.config import ServerConfig
from custody_server.errors import ConfigError
from custody_server.lifecycle.keyring import KeyRing
from custody_server.lifecycle.manager import KeyLifecycle
from custody_server.lifecycle.model import next_rotation_remaining, overlap_remaining
from custody_server.lifecycle.scheduler import LifecycleScheduler
from custody_server.metrics import ServiceMetrics
from custody_server.policy import PolicyStore, RequestLimits
from custody_server.policy.revocation import RevocationStore
from custody_server.serving import OPERATOR, ServingHealth
from custody_server.signing import SigningLimits, SigningService
from custody_server.store import STORE_UNAVAILABLE, AttestationStore, StoreWatch, open_store
from custody_server.tls_bootstrap import LocalTls, local_tls_dir
from custody_server.transport.authz import AccessControl, AccessInterceptor, KeyDefaults
from custody_server.transport.in_progress import CallCounter
from custody_server.transport.interceptor import RpcInterceptor
from custody_server.transport.key_admin import KeyAdminServicer
from custody_server.transport.servicer import CustodyServicer
from custody_server.transport.shutdown import ShutdownGate
from custody_server.verification import VerificationService

log = structlog.get_logger("custody.server")

SERVICE_NAMES = (
    custody_pb2.DESCRIPTOR.services_by_name["Custody"].full_name,
    custody_pb2.DESCRIPTOR.services_by_name["KeyAdmin"].full_name,
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    keys: KeyRing
    access: AccessControl | None = None  # policy reload (SIGHUP) goes through it
    scheduler: LifecycleScheduler | None = None  # scheduled key rotation and destruction
    # calls being handled that write audit entries (for AuditTrail.expect_entries_from)
    calls_in_progress: CallCounter = field(default_factory=CallCounter)
    serving: ServingHealth = field(init=False)  # NOT_SERVING while any reason holds
    gate: ShutdownGate | None = None  # closed by stop: new calls get UNAVAILABLE
    store: AttestationStore | None = None  # links and layouts (custody_server.store)
    store_watch: StoreWatch | None = None  # its health probe and retention sweep

    def __post_init__(self) -> None:
        self.serving = ServingHealth(self._publish)

    def _publish(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    def set_serving(self, serving: bool, *, reason: str = OPERATOR) -> None:
        """Hold (False) or release (True) one reason for NOT_SERVING; health is SERVING
        only when no reason holds, and never again once `stop` was called."""
        self.serving.set(reason, holds=not serving)

    def health_listener(self, reason: str) -> Callable[[bool], None]:
        """A listener for a source that reports healthy or not (the audit trail's)."""
        return self.serving.listener(reason)

    def stop(self, grace: float | None) -> threading.Event:
        """Refuse new calls (UNAVAILABLE "the server is shutting down"), let the calls
        admitted before finish within `grace` seconds, then stop gRPC once no call comes
        (gRPC's stop would drop a call arriving during its grace: transport/shutdown.py).
        The event is set once stopped."""
        if self.gate is not None:  # first: once health says NOT_SERVING, calls are refused
            self.gate.close()
        self.serving.shut_down()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.store_watch is not None:
            self.store_watch.close()
        gate = self.gate
        if grace is None or gate is None:
            event: threading.Event = self.server.stop(grace)
            if grace is None:
                self._close_store()
            return event
        deadline = time.monotonic() + grace
        stopped = threading.Event()

        def drain_then_stop() -> None:
            gate.wait_drained(grace)
            self.server.stop(max(0.0, deadline - time.monotonic())).wait()
            self._close_store()
            stopped.set()

        threading.Thread(target=drain_then_stop, name="custody-drain", daemon=True).start()
        return stopped

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.sql.source.close()


def build_server(*, config: ServerConfig, keys: KeyRing, audit: AuditSink,
                 clock: Callable[[], datetime] = utc_now,
                 metrics: ServiceMetrics | None = None) -> RunningServer:
    """Create and start the gRPC server on config.listen (port 0 picks a free port)."""
    limits = config.limits
    prepare_access(config)  # local mTLS files and default policy where none are configured
    interceptors: list[Any] = [RpcInterceptor()]
    if metrics is not None:  # outermost, so that it sees the final status code
        interceptors.insert(0, metrics.interceptor())
        audit = metrics.observed(audit)
        # read at scrape time: the key ring's cached view, at the lifecycle's clock
        metrics.watch_overlap(lambda: overlap_remaining(keys.all(), now=clock()))
        periods = {alias: s.period for alias, s in config.lifecycle.schedules.items()}
        metrics.watch_next_rotation(
            lambda: next_rotation_remaining(keys.all(), periods=periods, now=clock()))
        metrics.watch_keys(lambda: {key.alias: len(key.versions) for key in keys.all()})
        metrics.add_aliases(key.alias for key in keys.all())  # their signing series at 0
        metrics.set_certificate_expiry(_certificate_expiry(config))
    # Whatever the policy file says, no SignLink or SignLayout may use the audit key.
    policy = PolicyStore.from_file(config.policy_file, reserved_signing_keys={
        config.audit.key_alias: "the audit trail's checkpoints (audit.key_alias)"})
    access = AccessControl(  # after the metrics wrap: denials' audit writes are observed too
        policy=policy, audit=audit, revocation=_revocation(config),
        limits=RequestLimits(max_layout_bytes=limits.max_layout_bytes,
                             max_json_depth=limits.max_json_depth),
        defaults=KeyDefaults(link_key=config.default_link_key,
                             layout_key=config.default_layout_key),
    )
    if metrics is not None and access.revocation is not None:
        revocation = access.revocation
        metrics.watch_crl(lambda: revocation.current.next_update)
    calls_in_progress = CallCounter()
    # inside: request id and log line first; refusals at shutdown touch no rate or audit
    gate = ShutdownGate(SERVICE_NAMES)
    interceptors.append(gate)
    interceptors.append(AccessInterceptor(access, in_progress=calls_in_progress))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.max_workers,
                                   thread_name_prefix="custody-rpc"),
        interceptors=interceptors,
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            # Workers share the port (the kernel spreads connections over them); one
            # process alone does not, so that a second server on its port fails to start.
            ("grpc.so_reuseport", int(config.worker_count > 1)),
        ],
    )
    # Before the first signature: a link that cannot be stored is not returned.
    store = open_store(config.store, state_dir=config.state_dir, audit=audit, clock=clock,
                       max_reply_bytes=limits.max_message_bytes)
    attestations = Attestations(store=store, keys=keys)
    if metrics is not None:
        metrics.watch_store(lambda: store.healthy)
    lifecycle = KeyLifecycle(keys=keys, audit=audit, clock=clock, settings=config.lifecycle)
    # pre-rotation: aliases made before it get their next version now (docs/KEYS.md)
    lifecycle.prepare_all(trigger="start")
    signing = SigningService(
        keys=keys, audit=audit, limits=SigningLimits(
            max_artifacts=limits.max_artifacts_per_link,
            max_byproducts_bytes=limits.max_byproducts_bytes,
            max_response_bytes=limits.max_message_bytes),  # nothing signed that cannot go
        settings=config.lifecycle,
        prepare_next=lambda alias: lifecycle.ensure_next(alias, trigger="sign-layout",
                                                         caller="lifecycle"),
        store=store)
    verification = VerificationService(keys=keys, audit=audit, clock=clock,
                                       attestations=attestations)
    batch = BatchSigning(signing=signing, audit=audit, max_links=limits.max_links_per_batch,
                         max_response_bytes=limits.max_message_bytes)
    custody_pb2_grpc.add_CustodyServicer_to_server(  # type: ignore[no-untyped-call]
        CustodyServicer(signing=signing, verification=verification,
                        default_link_key=config.default_link_key,
                        default_layout_key=config.default_layout_key, audit=audit,
                        batch=batch, check_link=access.check_link,
                        attestations=attestations),
        server,
    )
    custody_pb2_grpc.add_KeyAdminServicer_to_server(  # type: ignore[no-untyped-call]
        KeyAdminServicer(lifecycle=lifecycle), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = _bind(server, config)
    server.start()
    scheduler = (LifecycleScheduler(lifecycle, interval=config.lifecycle.check_interval_seconds)
                 if config.lifecycle.scheduler else None)
    running = RunningServer(server=server, port=port, health=health_servicer, keys=keys,
                            scheduler=scheduler, access=access,
                            calls_in_progress=calls_in_progress, gate=gate, store=store)
    if scheduler is not None:
        scheduler.start()
    # NOT_SERVING while the store cannot be written; probed until it can again
    store.set_health_listener(running.health_listener(STORE_UNAVAILABLE))
    running.store_watch = StoreWatch(
        store, retention=config.store.retention,
        sweep_interval=config.store.sweep_interval.total_seconds()).start()
    running.serving.announce()  # SERVING, for every service name
    return running


def _tls_files(config: ServerConfig) -> tuple[Path, Path, Path]:
    """The server's certificate chain, its key and the client CA file."""
    tls = config.tls
    if tls.local:
        local = LocalTls(local_tls_dir(config.state_dir))
        return local.server_cert, local.server_key, local.ca_cert
    if tls.cert and tls.key and tls.client_ca:
        return tls.cert, tls.key, tls.client_ca
    raise ConfigError("tls needs cert, key and client_ca")  # TlsConfig refuses this


def _certificate_expiry(config: ServerConfig) -> dict[str, datetime]:
    """The notAfter of the server's certificate (the chain's first) and of the client CA
    (the earliest, when the file holds several), as the server loads them at start."""
    if config.tls.insecure:
        return {}
    chain, _key, client_ca = _tls_files(config)
    expiry: dict[str, datetime] = {}
    for name, path, certificates in (("server", chain, 1), ("client-ca", client_ca, None)):
        try:
            loaded = x509.load_pem_x509_certificates(path.read_bytes())[:certificates]
        except (OSError, ValueError) as error:  # _bind says what is wrong with the files
            log.warning("metrics.certificate_unreadable", file=str(path), error=str(error))
            continue
        expiry[name] = min(certificate.not_valid_after_utc for certificate in loaded)
    return expiry


def _revocation(config: ServerConfig) -> RevocationStore | None:
    """The CRL of `[tls] crl_file`, checked against the client CA; a bad one stops the
    server (RevocationError, a ConfigError)."""
    if config.tls.crl_file is None or config.tls.insecure:
        return None
    store = RevocationStore.from_files(config.tls.crl_file,
                                       client_ca_file=_tls_files(config)[2])
    if store.current.expired(utc_now()):
        log.warning("crl.expired", crl_file=str(store.path),
                    next_update=str(store.current.next_update))
    return store


def _bind(server: grpc.Server, config: ServerConfig) -> int:
    """mTLS (client certificates required) unless tls.insecure; see config.TlsConfig."""
    tls = config.tls
    if tls.insecure:
        port = server.add_insecure_port(config.listen)
    else:
        files = _tls_files(config)
        try:
            chain, key, client_ca = (path.read_bytes() for path in files)
        except OSError as error:
            raise ConfigError(f"cannot read TLS material: {error}") from None
        credentials = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=True,
        )
        port = server.add_secure_port(config.listen, credentials)
    if port == 0:
        raise ConfigError(f"cannot listen on {config.listen}")
    return port
