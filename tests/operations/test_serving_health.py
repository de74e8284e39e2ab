"""Health from several reasons: NOT_SERVING while any holds, and shutdown is final, so the
audit trail recovering never announces SERVING over another reason or over a shutdown."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from custody_server.app import SERVICE_NAMES, RunningServer, build_server
from custody_server.audit import AuditSettings, AuditTrail, AuditWriteError, open_audit_trail
from custody_server.audit_events import AuditEvent
from custody_server.config import PolicyConfig, ServerConfig, TlsConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.serving import AUDIT_UNWRITABLE, OPERATOR, SHUTDOWN, ServingHealth

from .test_overlap_gauge import OPEN_POLICY

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_not_serving_while_any_reason_holds_and_shutdown_is_final() -> None:
    heard: list[bool] = []
    health = ServingHealth(heard.append)
    health.announce()
    audit = health.listener(AUDIT_UNWRITABLE)
    audit(False)
    health.set(OPERATOR, holds=True)
    audit(True)  # the trail recovered, but the operator still holds
    assert (heard, health.serving, health.reasons) == ([True, False], False, frozenset({OPERATOR}))
    health.set(OPERATOR, holds=False)
    assert heard == [True, False, True] and health.serving
    audit(True)  # a repeated report changes nothing and publishes nothing
    assert heard == [True, False, True]

    health.shut_down()
    audit(False)
    audit(True)
    health.set(OPERATOR, holds=False)
    health.set(SHUTDOWN, holds=False)
    assert heard == [True, False, True, False]
    assert not health.serving and SHUTDOWN in health.reasons


@dataclass
class Server:
    running: RunningServer
    trail: AuditTrail
    channel: grpc.Channel
    heard: list[bool]  # what the trail told the server's listener, once it was handled

    def status(self) -> int:
        """Over gRPC, as a load balancer sees it."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)

    def servicer_statuses(self) -> set[int]:
        """Straight from the health servicer, for every name (also after stop)."""
        no_context = cast(grpc.ServicerContext, None)  # only used for unknown names
        return {self.running.health.Check(health_pb2.HealthCheckRequest(service=name),
                                          no_context).status
                for name in ("", *SERVICE_NAMES)}


@pytest.fixture
def server(keystore: Pkcs11KeyStore, tmp_path: Path) -> Iterator[Server]:
    keys = KeyRing(keystore)
    for alias in ("build", "owner"):
        keys.ensure(alias, KeyAlgorithm.ECDSA_P256)
    trail = open_audit_trail(AuditSettings(directory=tmp_path / "audit",
                                           retry_interval_seconds=0.05), keys=keys,
                             store=keystore, node=f"test-{uuid.uuid4().hex[:12]}")
    (tmp_path / "policy.toml").write_text(OPEN_POLICY)
    running = build_server(config=ServerConfig(
        listen="127.0.0.1:0", state_dir=tmp_path, tls=TlsConfig(insecure=True),
        policy=PolicyConfig(file=tmp_path / "policy.toml")), keys=keys, audit=trail)
    listener = running.health_listener(AUDIT_UNWRITABLE)  # as main wires it
    heard: list[bool] = []

    def heard_and_handled(healthy: bool) -> None:
        listener(healthy)
        heard.append(healthy)

    trail.set_health_listener(heard_and_handled)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Server(running=running, trail=trail, channel=channel, heard=heard)
    finally:
        channel.close()
        running.stop(grace=1).wait()
        trail.close()


def _eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _break(trail: AuditTrail) -> Path:
    """Put a directory where the active file is: nothing can be written there."""
    path = trail.path
    path.rename(path.with_name("audit.before"))
    path.mkdir()
    with pytest.raises(AuditWriteError):
        trail.record(AuditEvent(action="probe", category="process", outcome="success"))
    return path


def _mend(server: Server, path: Path) -> None:
    """Remove the directory; write until the trail has recovered and said so."""
    path.rmdir()

    def written() -> bool:
        try:
            server.trail.record(AuditEvent(action="probe", category="process",
                                           outcome="success"))
        except AuditWriteError:
            return False
        return True

    _eventually(lambda: written() and server.heard[-1:] == [True])
    assert False in server.heard  # it did fail, and the server heard of it


def test_audit_failure_and_recovery_while_running(server: Server) -> None:
    assert server.status() == SERVING and server.servicer_statuses() == {SERVING}
    broken = _break(server.trail)
    _eventually(lambda: server.status() == NOT_SERVING)
    assert server.servicer_statuses() == {NOT_SERVING}
    _mend(server, broken)
    _eventually(lambda: server.status() == SERVING)
    assert server.servicer_statuses() == {SERVING}


def test_audit_recovery_does_not_override_another_reason(server: Server) -> None:
    server.running.set_serving(False)  # e.g. an operator drains this replica
    broken = _break(server.trail)
    _mend(server, broken)
    assert server.running.serving.reasons == frozenset({OPERATOR})
    assert server.status() == NOT_SERVING
    server.running.set_serving(True)
    assert server.status() == SERVING


def test_audit_recovery_during_shutdown_stays_not_serving(server: Server) -> None:
    broken = _break(server.trail)
    _eventually(lambda: server.status() == NOT_SERVING)
    server.running.stop(grace=1).wait()
    _mend(server, broken)  # the trail's listener hears True now
    assert server.servicer_statuses() == {NOT_SERVING}
    server.running.set_serving(True)
    assert server.servicer_statuses() == {NOT_SERVING}
    assert server.running.serving.reasons >= {SHUTDOWN}
