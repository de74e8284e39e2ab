"""Faults under load: the token disappears and comes back, clients disconnect mid-call,
the server process gets SIGTERM. In each case every signature a client receives has its
audit entry, errors are only the documented ones, and the service recovers."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from security_support import (
    AccessServer,
    GatedAuditSink,
    Pki,
    ServerProcess,
    StartServer,
)

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server.softhsm import SoftHsmToken

AGENT = "spiffe://example.test/agent"
POLICY = f"""
version = 1
[rate_limit]
per_second = 1000000.0
burst = 1000000
[[grant]]
identities = ["{AGENT}"]
rpcs = ["SignLink", "ListKeys"]
link_keys = ["build"]
steps = ["*"]
"""


@dataclass
class Outcome:
    started: float
    ended: float
    code: grpc.StatusCode
    sha256: str = ""


def _load(call: Callable[[int], Any], *, clients: int, seconds: float,
          stop: threading.Event | None = None) -> list[Outcome]:
    """`clients` threads calling `call(n)` back to back for `seconds` (or until `stop` is
    set); every outcome."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    def client() -> None:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            started = time.monotonic()
            try:
                response = call(next(counter))
                outcome = Outcome(started, time.monotonic(), grpc.StatusCode.OK,
                                  response.sha256)
            except grpc.RpcError as error:
                outcome = Outcome(started, time.monotonic(), error.code())
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes, key=lambda o: o.started)


def test_token_unavailable_mid_load_and_back(start_server: StartServer, pki: Pki,
                                             softhsm_token: SoftHsmToken) -> None:
    server = start_server(POLICY)
    stubs = [server.custody(pki.client(uri=(AGENT,))) for _ in range(8)]
    token_dir = next(p for p in (softhsm_token.directory / "tokens").iterdir() if p.is_dir())
    parked = softhsm_token.directory / "parked-by-fault-test"
    began = time.monotonic()
    outage: list[float] = []

    def pull_the_token() -> None:
        time.sleep(0.5)
        shutil.move(token_dir, parked)  # the volume holding the token goes away...
        outage.append(time.monotonic())
        time.sleep(0.6)
        shutil.move(parked, token_dir)  # ... and comes back
        outage.append(time.monotonic())

    fault = threading.Thread(target=pull_the_token)
    fault.start()
    try:
        outcomes = _load(lambda n: stubs[n % 8].SignLink(pb.SignLinkRequest(
            step_name=f"fault-{n}"), timeout=20), clients=8, seconds=3.5)
    finally:
        fault.join()
        if parked.exists():
            shutil.move(parked, token_dir)

    codes = {o.code for o in outcomes}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    refused = [o for o in outcomes if o.code == grpc.StatusCode.UNAVAILABLE]
    assert refused, "the outage was not noticed"
    assert all(outage[0] - 0.05 <= o.ended for o in refused)  # only during or after it
    late = [o for o in outcomes if o.started > outage[1] + 1.5]
    assert late and all(o.code == grpc.StatusCode.OK for o in late)  # recovered
    assert sum(o.started < outage[0] for o in outcomes) > 20 and began < outage[0]

    audited = {e.details.get("signed_sha256") for e in server.audit.events
               if e.action == "sign-link" and e.outcome == "success"}
    signed = [o.sha256 for o in outcomes if o.code == grpc.StatusCode.OK]
    assert set(signed) <= audited and len(set(signed)) == len(signed)
    failures = [e for e in server.audit.events if e.action == "sign-link"
                and e.outcome == "failure"]
    assert len(failures) == len(refused)  # every refused call is audited as a failure too


def _signed_steps(server: AccessServer, prefix: str) -> list[str]:
    return [str(e.details.get("step")) for e in server.audit.events if e.action == "sign-link"
            and e.outcome == "success" and str(e.details.get("step", "")).startswith(prefix)]


@pytest.mark.parametrize("disconnect", ["cancel", "close"])
def test_clients_that_disconnect_mid_call(start_server: StartServer, pki: Pki,
                                          disconnect: str) -> None:
    # The call is held after signing, before its audit entry is written and its answer
    # sent: the client goes away at the moment a signature exists that nobody will receive.
    gate = GatedAuditSink(step="held")
    server = start_server(POLICY, audit=gate)
    agent = pki.client(uri=(AGENT,))
    background: list[Outcome] = []
    stop = threading.Event()
    load = threading.Thread(target=lambda: background.extend(_load(
        lambda n: server.custody(agent).SignLink(pb.SignLinkRequest(step_name=f"bg-{n}"),
                                                 timeout=20),
        clients=4, seconds=60, stop=stop)))
    load.start()
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
        # Other clients are served while the disconnected call is still held.
        served = len(_signed_steps(server, "bg-"))
        deadline = time.monotonic() + 30
        while len(_signed_steps(server, "bg-")) <= served:
            assert time.monotonic() < deadline, "no other call was served meanwhile"
            time.sleep(0.01)
        gate.release.set()
        assert gate.recorded.wait(timeout=30), "the held call's entry was never written"
    finally:
        gate.release.set()
        stop.set()
        load.join()
    # The client got nothing, even now that the server has finished the call.
    with pytest.raises((grpc.FutureCancelledError, grpc.RpcError)):
        future.result(timeout=10)
    assert background and {o.code for o in background} == {grpc.StatusCode.OK}
    # The service still answers at once, and what it signed for nobody is still audited.
    response = server.custody(agent).SignLink(pb.SignLinkRequest(step_name="after"), timeout=5)
    events = [e for e in server.audit.events if e.action == "sign-link"]
    assert all(e.outcome == "success" for e in events)
    held = [e for e in events if e.details.get("step") == "held"]
    assert len(held) == 1 and held[0].details["signed_sha256"]
    after = [e for e in events if e.details.get("step") == "after"]
    assert [e.details["signed_sha256"] for e in after] == [response.sha256]
    audited = {e.details["signed_sha256"] for e in events}
    assert {o.sha256 for o in background} <= audited


def test_sigterm_under_load_finishes_calls_in_flight(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "state")
    channels = [server.channel() for _ in range(8)]
    # Large enough that each call takes a good part of a second at 8 in flight: some
    # surely started well before the signal and are still running at it.
    request = pb.SignLinkRequest(step_name="term", products=[
        pb.Artifact(path=f"out/{i}", digest={"sha256": "ef" * 32}) for i in range(12_000)])
    signalled: list[float] = []

    def terminate() -> None:
        time.sleep(1.0)
        signalled.append(time.monotonic())
        server.signal(signal.SIGTERM)

    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        outcomes = _load(lambda n: custody_pb2_grpc.CustodyStub(  # type: ignore[no-untyped-call]
            channels[n % 8]).SignLink(request, timeout=20), clients=8, seconds=2.5)
        killer.join()
        assert server.stop(timeout=20) == 0
    finally:
        for channel in channels:
            channel.close()
        server.stop()
    sigterm = signalled[0]
    before = [o for o in outcomes if o.started < sigterm - 0.1]  # surely at the server
    assert {o.code for o in before} == {grpc.StatusCode.OK}
    in_flight = [o for o in before if o.ended > sigterm]
    assert in_flight, "no call was in flight at SIGTERM"  # ... and they finished, not dropped
    # Calls that race with the shutdown are refused (UNAVAILABLE, or CANCELLED when the
    # connection's GOAWAY overtakes them); none fails in any other way.
    refused = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert {o.code for o in outcomes} <= {grpc.StatusCode.OK} | refused
    assert any(o.code in refused for o in outcomes if o.started > sigterm)
    audit_text = "\n".join(p.read_text(errors="replace")
                           for p in (tmp_path / "state" / "audit").rglob("*") if p.is_file())
    signed = [o.sha256 for o in outcomes if o.code == grpc.StatusCode.OK]
    assert signed and all(sha in audit_text for sha in signed)
    assert b"server.stop" in server.stderr
