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
from security_support import Pki, ServerProcess, StartServer  # type: ignore[import-not-found]

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


def _load(call: Callable[[int], Any], *, clients: int, seconds: float) -> list[Outcome]:
    """`clients` threads calling `call(n)` back to back for `seconds`; every outcome."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))

    def client() -> None:
        while time.monotonic() < stop:
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


_SLOW = pb.SignLinkRequest(step_name="slow", products=[
    pb.Artifact(path=f"out/{i}", digest={"sha256": "cd" * 32}) for i in range(40_000)])


def test_clients_that_disconnect_mid_call(start_server: StartServer, pki: Pki) -> None:
    server = start_server(POLICY)
    agent = pki.client(uri=(AGENT,))
    background: list[Outcome] = []
    thread = threading.Thread(target=lambda: background.extend(_load(
        lambda n: server.custody(agent).SignLink(pb.SignLinkRequest(step_name=f"bg-{n}"),
                                                 timeout=20), clients=4, seconds=2.5)))
    thread.start()
    for attempt in range(6):
        channel = server.channel(agent)
        stub = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
        future = stub.SignLink.future(_SLOW, timeout=30)
        time.sleep(0.05 + 0.03 * attempt)  # somewhere inside the call
        if attempt % 2:
            future.cancel()
        else:
            channel.close()  # the connection itself goes away
        assert future.cancelled() or future.exception() is not None
    thread.join()
    assert background and {o.code for o in background} == {grpc.StatusCode.OK}
    # The service still answers at once, and what it signed for nobody is still audited.
    response = server.custody(agent).SignLink(pb.SignLinkRequest(step_name="after"), timeout=5)
    events = [e for e in server.audit.events if e.action == "sign-link"]
    after = [e for e in events if e.details.get("step") == "after"]
    assert [e.details["signed_sha256"] for e in after] == [response.sha256]
    assert all(e.outcome == "success" for e in events)


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
