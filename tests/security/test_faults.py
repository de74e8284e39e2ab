"""Faults under load: the token disappears and comes back, clients disconnect mid-call,
the server process gets SIGTERM. In each case every signature a client receives has its
audit entry, errors are only the documented ones, and the service recovers."""

from __future__ import annotations

import itertools
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from policy_support import UNLIMITED, grant, policy
from security_support import (
    GatedAuditSink,
    Pki,
    ServerProcess,
    StartServer,
)

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_client.errors import ClientError
from custody_client.settings import ConnectionSettings
from custody_client.signing_client import SigningClient
from custody_server.softhsm import SoftHsmToken

AGENT = "spiffe://example.test/agent"
POLICY = policy(grant([AGENT], ["SignLink", "ListKeys"], link_keys=["build"], steps=["*"]),
                rate=UNLIMITED)


@dataclass
class Outcome:
    started: float
    ended: float
    code: grpc.StatusCode
    sha256: str = ""
    details: str = ""


class Load:
    """`clients` threads calling `call(n)` back to back until `stop()`; every outcome.

    Tests wait for what they need to see in the outcomes so far (`wait_until`), never
    for a guessed time.
    """

    def __init__(self, call: Callable[[int], Any], *, clients: int,
                 until_refused: bool = False) -> None:
        self._call = call
        self._until_refused = until_refused  # each client stops at its first error
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._counter = itertools.count()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                response = self._call(next(self._counter))
                outcome = Outcome(started, time.monotonic(), grpc.StatusCode.OK,
                                  response.sha256)
            except grpc.RpcError as error:
                assert isinstance(error, grpc.Call)
                outcome = Outcome(started, time.monotonic(), error.code(),
                                  details=error.details() or "")
            with self._lock:
                self._outcomes.append(outcome)
            if self._until_refused and outcome.code != grpc.StatusCode.OK:
                return

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return sorted(self._outcomes, key=lambda o: o.started)

    def wait_until(self, condition: Callable[[list[Outcome]], bool], what: str, *,
                   timeout: float = 30.0) -> float:
        """Poll the outcomes so far until `condition` holds; when it was seen."""
        deadline = time.monotonic() + timeout
        while not condition(self.outcomes):
            assert time.monotonic() < deadline, f"not seen within {timeout:g} s: {what}"
            time.sleep(0.01)
        return time.monotonic()

    def stop(self) -> list[Outcome]:
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        return self.outcomes


class HealthWatch:
    """A Health/Watch stream read in a thread: every status the server announces, in order.

    Cancelled by `close()`: an open stream would hold the server's shutdown for its grace.
    """

    def __init__(self, channel: grpc.Channel, service: str) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        self._call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self._statuses: list[int] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._changed:
                    self._statuses.append(int(response.status))
                    self._changed.notify_all()
        except grpc.RpcError:
            pass  # cancelled by close(), or the server went away

    def wait_for(self, status: int, *, after: int = 0, timeout: float = 60.0) -> int:
        """Wait until `status` is announced at position `after` or later; its position."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: status in self._statuses[after:], timeout=timeout)
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            assert found, f"health never said {name} within {timeout:g} s: {self._statuses}"
            return self._statuses.index(status, after)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(timeout=10)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_follows_the_token(tmp_path: Path) -> None:
    """NOT_SERVING while the token is gone (for Custody and the server as a whole), SERVING
    again once it is back: the outage noticed by a call, the recovery by the server's own
    probe, with no call made meanwhile."""
    server = ServerProcess(tmp_path / "state")
    tokens = tmp_path / "state" / "hsm" / "tokens"
    (token_dir,) = (p for p in tokens.iterdir() if p.is_dir())
    parked = tmp_path / "parked-token"
    channel = server.channel()
    custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
    health = health_pb2_grpc.HealthStub(channel)

    def statuses() -> set[int]:
        return {health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
                for name in ("", "custody.v1.Custody", "custody.v1.KeyAdmin")}

    watch = HealthWatch(channel, "custody.v1.Custody")
    try:
        first = watch.wait_for(SERVING)
        custody.SignLink(pb.SignLinkRequest(step_name="before"), timeout=20)
        shutil.move(token_dir, parked)  # the volume holding the token goes away
        with pytest.raises(grpc.RpcError) as refused:
            custody.SignLink(pb.SignLinkRequest(step_name="during"), timeout=20)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        down = watch.wait_for(NOT_SERVING, after=first)
        assert statuses() == {NOT_SERVING}
        # what `custody run` checks before a build: it is told, and why it may be
        settings = ConnectionSettings.from_options(
            server=server.address, environ={"CUSTODY_STATE_DIR": str(tmp_path / "state")})
        with SigningClient(settings) as agent, pytest.raises(ClientError) as preflight:
            agent.check_server()
        assert "not serving (its token or audit trail is unavailable" in str(preflight.value)
        shutil.move(parked, token_dir)  # ... and comes back
        watch.wait_for(SERVING, after=down)
        assert statuses() == {SERVING}
        signed = custody.SignLink(pb.SignLinkRequest(step_name="after"), timeout=20)
    finally:
        watch.close()
        if parked.exists():
            shutil.move(parked, token_dir)
        channel.close()
        assert server.stop() == 0
    assert signed.sha256
    log = server.stderr
    assert b"token.unavailable" in log and b"token.available" in log


def _ok(outcomes: list[Outcome], *, started_after: float = 0.0) -> list[Outcome]:
    return [o for o in outcomes if o.code == grpc.StatusCode.OK and o.started > started_after]


def test_token_unavailable_mid_load_and_back(start_server: StartServer, pki: Pki,
                                             softhsm_token: SoftHsmToken) -> None:
    server = start_server(POLICY)
    stubs = [server.custody(pki.client(uri=(AGENT,))) for _ in range(8)]
    token_dir = next(p for p in (softhsm_token.directory / "tokens").iterdir() if p.is_dir())
    parked = softhsm_token.directory / "parked-by-fault-test"
    unavailable = grpc.StatusCode.UNAVAILABLE

    def refused(outcomes: list[Outcome], *, started_after: float = 0.0) -> list[Outcome]:
        return [o for o in outcomes if o.code == unavailable and o.started > started_after]

    load = Load(lambda n: stubs[n % 8].SignLink(pb.SignLinkRequest(step_name=f"fault-{n}"),
                                                timeout=20), clients=8)
    try:
        load.wait_until(lambda o: len(_ok(o)) >= 20, "20 calls answered before the outage")
        pulled = time.monotonic()
        shutil.move(token_dir, parked)  # the volume holding the token goes away...
        noticed = load.wait_until(lambda o: bool(refused(o)), "the outage noticed")
        # ... and stays away until calls made after the first refusal are refused too.
        load.wait_until(lambda o: bool(refused(o, started_after=noticed)),
                        "a call made during the outage refused")
        restored = time.monotonic()
        shutil.move(parked, token_dir)  # ... and comes back
        recovered = load.wait_until(lambda o: bool(_ok(o, started_after=restored)),
                                    "a call made after the outage answered")
        load.wait_until(lambda o: len([x for x in o if x.started > recovered]) >= 20,
                        "20 calls made after the recovery")
    finally:
        outcomes = load.stop()
        if parked.exists():
            shutil.move(parked, token_dir)

    assert {o.code for o in outcomes} <= {grpc.StatusCode.OK, unavailable}
    assert all(pulled < o.ended for o in refused(outcomes))  # only during or after it
    late = [o for o in outcomes if o.started > recovered]
    assert {o.code for o in late} == {grpc.StatusCode.OK}  # recovered, for good

    audited = {e.details.get("signed_sha256") for e in server.audit.events
               if e.action == "sign-link" and e.outcome == "success"}
    signed = [o.sha256 for o in _ok(outcomes)]
    assert set(signed) <= audited and len(set(signed)) == len(signed)
    failures = [e for e in server.audit.events if e.action == "sign-link"
                and e.outcome == "failure"]
    # every refused call is audited as a failure too
    assert len(failures) == len(refused(outcomes))


@pytest.mark.parametrize("disconnect", ["cancel", "close"])
def test_clients_that_disconnect_mid_call(start_server: StartServer, pki: Pki,
                                          disconnect: str) -> None:
    # The call is held after signing, before its audit entry is written and its answer
    # sent: the client goes away at the moment a signature exists that nobody will receive.
    gate = GatedAuditSink(step="held")
    server = start_server(POLICY, audit=gate)
    agent = pki.client(uri=(AGENT,))
    load = Load(lambda n: server.custody(agent).SignLink(
        pb.SignLinkRequest(step_name=f"bg-{n}"), timeout=20), clients=4)
    try:
        channel = server.channel(agent)
        stub = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
        future = stub.SignLink.future(pb.SignLinkRequest(step_name="held"), timeout=30)
        assert gate.entered.wait(timeout=30), "the held call never reached the audit sink"
        if disconnect == "cancel":
            assert future.cancel(), "the held call was answered before the cancel"
        else:
            channel.close()  # the connection itself goes away
            error = future.exception(timeout=10)
            assert isinstance(error, grpc.RpcError)
            assert error.code() == grpc.StatusCode.CANCELLED
        gone = time.monotonic()
        load.wait_until(lambda o: bool(_ok(o, started_after=gone)),
                        "another client served while the held call is held")
        gate.release.set()
        assert gate.recorded.wait(timeout=30), "the held call's entry was never written"
    finally:
        gate.release.set()
        background = load.stop()
    # The client got nothing, even now that the server has finished the call.
    with pytest.raises((grpc.FutureCancelledError, grpc.RpcError)):
        future.result(timeout=10)
    assert {o.code for o in background} == {grpc.StatusCode.OK}
    # The service still answers at once, and what it signed for nobody is still audited.
    response = server.custody(agent).SignLink(pb.SignLinkRequest(step_name="after"), timeout=5)
    events = [e for e in server.audit.events if e.action == "sign-link"]
    assert all(e.outcome == "success" for e in events)
    held = [e for e in events if e.details.get("step") == "held"]
    assert len(held) == 1 and held[0].details["signed_sha256"]
    after = [e for e in events if e.details.get("step") == "after"]
    assert [e.details["signed_sha256"] for e in after] == [response.sha256]
    assert {o.sha256 for o in background} <= {e.details["signed_sha256"] for e in events}


def test_calls_arriving_during_the_grace_get_unavailable(start_server: StartServer,
                                                         pki: Pki) -> None:
    """RunningServer.stop (what SIGTERM calls): a call admitted before finishes; every call
    after it is refused by the server with UNAVAILABLE "shutting down" (not dropped by
    gRPC as CANCELLED), unaudited and without using the token; health still answers."""
    gate = GatedAuditSink(step="held")
    server = start_server(POLICY, audit=gate)
    agent = pki.client(uri=(AGENT,))
    channel = server.channel(agent)
    custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
    key_admin = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
    held = custody.SignLink.future(pb.SignLinkRequest(step_name="held"), timeout=60)
    try:
        assert gate.entered.wait(timeout=30), "the held call never reached the audit sink"
        stopped = server.running.stop(grace=60)
        refusals = []
        late_calls: list[Callable[[], Any]] = [
            lambda: custody.SignLink(pb.SignLinkRequest(step_name="late"), timeout=20),
            lambda: key_admin.ListKeys(pb.ListKeysRequest(), timeout=20)]
        for call in late_calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            refusals.append(refused.value)
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=20).status
        assert not stopped.is_set()  # still draining: the held call is in flight
        gate.release.set()
        assert held.result(timeout=30).sha256  # the call admitted before SIGTERM finished
        assert stopped.wait(timeout=30)
    finally:
        gate.release.set()
    assert status == NOT_SERVING
    for error in refusals:
        assert isinstance(error, grpc.Call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (error.details() or "")
        assert dict(error.trailing_metadata() or ()).get("x-request-id")
    steps = [e.details.get("step") for e in gate.events if e.action == "sign-link"]
    assert steps == ["held"]  # the refused calls signed nothing and wrote nothing


def _metric(port: int, series: str) -> float:
    """One sample of the server's /metrics (0 when the series is not there yet)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
    return 0.0


def test_sigterm_under_load_finishes_calls_in_flight(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "state", args=("--metrics-listen", "127.0.0.1:0"))
    metrics_port = int(server.wait_for(rb"metrics on port (\d+)").group(1))
    channels = [server.channel() for _ in range(8)]
    # Large enough that each call takes a good part of a second at 8 in flight: those in
    # flight at the signal are still running when the late calls arrive.
    request = pb.SignLinkRequest(step_name="term", products=[
        pb.Artifact(path=f"out/{i}", digest={"sha256": "ef" * 32}) for i in range(12_000)])
    # Each client stops at its first refusal, as a client that backs off does.
    load = Load(lambda n: custody_pb2_grpc.CustodyStub(  # type: ignore[no-untyped-call]
        channels[n % 8]).SignLink(request, timeout=20), clients=8, until_refused=True)
    try:
        # All 8 clients have a call in the server's hands: none is on its way.
        # A call that started before the scrape that saw 8 in flight was answered, or is
        # one of those 8 (one call per client): it must end OK. (A call that starts after
        # that scrape may still be on its way at the signal.)
        deadline = time.monotonic() + 60
        while True:
            reached = time.monotonic()
            if _metric(metrics_port, 'custody_rpc_in_flight{rpc="SignLink"}') >= 8:
                break
            assert time.monotonic() < deadline, "8 calls were never in flight at once"
        sigterm = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.stop(timeout=20) == 0
    finally:
        outcomes = load.stop()
        for channel in channels:
            channel.close()
        server.stop()
    before = [o for o in outcomes if o.started < reached]  # at the server, or answered
    assert {o.code for o in before} == {grpc.StatusCode.OK}
    in_flight = [o for o in before if o.ended > sigterm]
    assert in_flight, "no call was in flight at SIGTERM"  # ... and they finished, not dropped
    # Calls after the signal: answered (before the server saw it) or refused by the server,
    # UNAVAILABLE, which clients retry; never CANCELLED, which they do not.
    # The server keeps refusing until its callers are quiet: every client (each stops at
    # its first refusal) was refused by the server itself, none by a closed socket.
    refused = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    assert {o.code for o in refused} == {grpc.StatusCode.UNAVAILABLE}
    assert all("shutting down" in o.details for o in refused), refused
    assert len(refused) == 8
    audit_text = "\n".join(p.read_text(errors="replace")
                           for p in (tmp_path / "state" / "audit").rglob("*") if p.is_file())
    signed = [o.sha256 for o in outcomes if o.code == grpc.StatusCode.OK]
    assert signed and all(sha in audit_text for sha in signed)
    assert b"server.stop" in server.stderr
