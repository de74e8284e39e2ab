"""custody_key_overlap_remaining_seconds: seconds until each verify-only version's overlap
window ends, read from the key ring at scrape time, scraped from a real /metrics endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from policy_support import open_policy

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server.app import build_server
from custody_server.audit_events import MemoryAuditSink
from custody_server.config import PolicyConfig, ServerConfig, TlsConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.lifecycle.model import overlap_remaining
from custody_server.lifecycle.settings import LifecycleSettings
from custody_server.metrics import MetricsServer, ServiceMetrics

from .ops_support import scrape

OPEN_POLICY = open_policy("anonymous")
GAUGE = "custody_key_overlap_remaining_seconds"


class Clock:
    """The server's and the key ring's time, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Observed:
    admin: Any  # KeyAdminStub
    keys: KeyRing
    clock: Clock
    metrics_port: int

    def gauge(self, alias: str) -> dict[int, float]:
        """version -> seconds, for `alias` (the token holds other tests' keys too)."""
        prefix = f'{GAUGE}{{alias="{alias}",version="'
        return {int(series[len(prefix):-2]): value
                for series, value in scrape(self.metrics_port).items()
                if series.startswith(prefix)}


@pytest.fixture
def observed(keystore: Pkcs11KeyStore, tmp_path: Path) -> Iterator[Observed]:
    clock = Clock()
    keys = KeyRing(keystore, clock=clock)
    for alias in ("build", "owner"):
        if not keys.exists(alias):
            keys.create(alias, KeyAlgorithm.ECDSA_P256)
    (tmp_path / "policy.toml").write_text(OPEN_POLICY)
    config = ServerConfig(listen="127.0.0.1:0", state_dir=tmp_path,
                          tls=TlsConfig(insecure=True),
                          policy=PolicyConfig(file=tmp_path / "policy.toml"),
                          lifecycle=LifecycleSettings(scheduler=False))
    metrics = ServiceMetrics()
    running = build_server(config=config, keys=keys, audit=MemoryAuditSink(), clock=clock,
                           metrics=metrics)
    metrics_server = MetricsServer.start(metrics, listen="127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Observed(admin=custody_pb2_grpc.KeyAdminStub(channel),  # type: ignore[no-untyped-call]
                       keys=keys, clock=clock, metrics_port=metrics_server.port)
    finally:
        channel.close()
        metrics_server.close()
        running.stop(grace=1).wait()


def test_gauge_follows_rotation_time_and_retirement(observed: Observed) -> None:
    alias = f"gauge-{uuid.uuid4().hex[:8]}"
    observed.admin.CreateKey(pb.CreateKeyRequest(alias=alias))
    assert observed.gauge(alias) == {}  # one active version: no window

    observed.admin.RotateKey(pb.RotateKeyRequest(alias=alias, overlap=Duration(seconds=3600)))
    assert observed.gauge(alias) == {1: 3600}

    observed.clock.now += timedelta(seconds=600)
    assert observed.gauge(alias) == {1: 3000}

    observed.admin.RotateKey(pb.RotateKeyRequest(alias=alias, overlap=Duration(seconds=7200)))
    assert observed.gauge(alias) == {1: 3000, 2: 7200}  # v3 signs; v1 and v2 verify

    observed.admin.RetireKey(pb.RetireKeyRequest(alias=alias, version=2))
    assert observed.gauge(alias) == {1: 3000}

    observed.clock.now += timedelta(seconds=3000)  # v1's window ends now
    assert observed.gauge(alias) == {}


def test_overlap_remaining_is_read_from_versions(observed: Observed) -> None:
    """The pure function behind the gauge, against the same key ring."""
    alias = f"gauge-{uuid.uuid4().hex[:8]}"
    observed.admin.CreateKey(pb.CreateKeyRequest(alias=alias))
    observed.admin.RotateKey(pb.RotateKeyRequest(alias=alias, overlap=Duration(seconds=90)))
    key = observed.keys.get(alias)
    now = observed.clock.now
    assert overlap_remaining([key], now=now) == {(alias, 1): 90.0}
    assert overlap_remaining([key], now=now + timedelta(seconds=89.5)) == {(alias, 1): 0.5}
    assert overlap_remaining([key], now=now + timedelta(seconds=90)) == {}
