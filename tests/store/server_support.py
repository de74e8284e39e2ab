"""A real Custody server, in-process on port 0, on the session's SoftHSM token, with its
attestation store on SQLite or on a real PostgreSQL (postgres_support): for the tests
that must show the same behaviour on both databases through the API.

Plaintext (every caller "anonymous", allowed everything): these tests are about the
store, not the transport. The store's health reports are recorded as they happen
(`health_changes`), so that a bad request that turned the server NOT_SERVING for an
instant is seen even if the store's probe turned it back at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from policy_support import open_policy

from custody_api.v1 import custody_pb2_grpc
from custody_server.audit_events import AuditEvent, MemoryAuditSink
from custody_server.config import Limits, PolicyConfig, ServerConfig, TlsConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.store import StoreConfig

from .postgres_support import PostgresCluster, PostgresMissing

DIALECTS = ("sqlite", "postgresql")
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024)]


@dataclass
class StoreServer:
    dialect: str
    running: Any  # custody_server.app.RunningServer
    audit: MemoryAuditSink
    channel: grpc.Channel
    health_changes: list[bool] = field(default_factory=list)

    @property
    def custody(self) -> Any:
        return custody_pb2_grpc.CustodyStub(self.channel)  # type: ignore[no-untyped-call]

    def serving(self) -> bool:
        status = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service="")).status
        return bool(status == health_pb2.HealthCheckResponse.SERVING)

    def events(self, since: int, action: str) -> list[AuditEvent]:
        return [e for e in self.audit.events[since:] if e.action == action]

    def stop(self) -> None:
        self.channel.close()
        self.running.stop(grace=1).wait()


STORE_NOW = datetime(2026, 5, 1, tzinfo=UTC)  # the clock of the `store` fixture


def postgres_cluster() -> Iterator[PostgresCluster]:
    """A cluster for a module's tests (skipped without PostgreSQL, except in CI)."""
    try:
        cluster = PostgresCluster.create()
    except PostgresMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {missing}", pytrace=False)
        pytest.skip(f"{missing}")
    yield cluster
    cluster.destroy()


def start_store_server(keystore: Pkcs11KeyStore, state: Path, store: StoreConfig,
                       *, dialect: str, limits: Limits | None = None) -> StoreServer:
    from custody_server.app import build_server
    from custody_server.lifecycle.keyring import KeyRing

    keys = KeyRing(keystore)
    for alias in ("build", "owner"):
        if not keys.exists(alias):
            keys.create(alias, KeyAlgorithm.ECDSA_P256)
    policy = state / "policy.toml"
    policy.write_text(open_policy("anonymous"))
    audit = MemoryAuditSink()
    config = ServerConfig(listen="127.0.0.1:0", state_dir=state, store=store,
                          tls=TlsConfig(insecure=True), policy=PolicyConfig(file=policy),
                          limits=limits or Limits())
    running = build_server(config=config, keys=keys, audit=audit)
    server = StoreServer(dialect=dialect, running=running, audit=audit,
                         channel=grpc.insecure_channel(f"127.0.0.1:{running.port}",
                                                       options=_CHANNEL_OPTIONS))
    kept = running.store
    assert kept is not None and kept._listener is not None
    report = kept._listener  # the server's health listener, and a record of it

    def recorded(healthy: bool) -> None:
        server.health_changes.append(healthy)
        report(healthy)

    kept.set_health_listener(recorded)
    server.health_changes.clear()  # set_health_listener reports the present state once
    return server
