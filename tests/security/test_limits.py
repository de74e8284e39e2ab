"""Limits: per-identity rate limits with retry information, layout size and nesting,
deadlines that pass while a call waits, and the bound on concurrent calls."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc
import pytest
from policy_support import grant, policy
from security_support import (
    GatedAuditSink,
    Pki,
    StartServer,
)

from custody_api.v1 import custody_pb2 as pb
from custody_server.config import Limits
from custody_server.errors import LimitExceededError
from custody_server.policy import RateLimit, RateLimiter, RequestLimits
from custody_server.policy.refusal_sampler import RefusalSampler
from custody_server.policy.rpcs import READS_WITHOUT_AUDIT, RPCS_BY_NAME
from custody_server.transport.authz import RETRY_AFTER_TRAILER

LIMITED = "spiffe://example.test/limited"
FREE = "spiffe://example.test/free"
POLICY = policy(grant([LIMITED, FREE], ["SignLink", "SignLayout", "Verify", "ListKeys"],
                      link_keys=["build"], steps=["*"], layout_keys=["owner"]),
                rate=(100000.0, 100000), rates={LIMITED: (4.0, 3)})


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, max_identities=2)
    limit = RateLimit(per_second=2.0, burst=3)
    assert [limiter.acquire("a", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a", limit) == pytest.approx(0.5)  # one token in 1/2 s
    assert limiter.acquire("b", limit) == 0.0  # buckets are per identity
    clock.now += 0.25
    assert limiter.acquire("a", limit) == pytest.approx(0.25)
    clock.now += 10  # refills, but never beyond the burst
    assert [limiter.acquire("a", limit) for _ in range(4)][-1] == pytest.approx(0.5)
    # A reloaded policy applies at once; the level carries over, capped at the new burst.
    assert limiter.acquire("a", RateLimit(per_second=1.0, burst=1)) == pytest.approx(1.0)
    limiter.acquire("c", limit)  # a third identity evicts the least recently used ("b")
    assert len(limiter) == 2
    clock.now += 0.001
    assert limiter.acquire("a", limit) > 0  # "a" was kept: still empty


@pytest.fixture
def limited(start_server: StartServer, pki: Pki) -> Iterator[Any]:
    yield start_server(POLICY, limits=Limits(max_layout_bytes=2_000, max_json_depth=5))


def test_rate_limit_refuses_with_retry_information(limited: Any, pki: Pki) -> None:
    stub = limited.custody(pki.client(uri=(LIMITED,)))
    request = pb.SignLinkRequest(step_name="build")
    for _ in range(3):
        stub.SignLink(request, timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        stub.SignLink(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = {str(k): str(v) for k, v in cast(Any, caught.value.trailing_metadata())}
    retry_ms = int(trailers[RETRY_AFTER_TRAILER])
    assert 1 <= retry_ms <= 250
    assert "x-request-id" in trailers
    assert f"retry in {retry_ms} ms" in str(caught.value.details())
    # Another identity is not affected; after the advertised wait, the limited one may.
    free = limited.custody(pki.client(uri=(FREE,)))
    for _ in range(10):
        free.SignLink(request, timeout=10)
    time.sleep(retry_ms / 1000 + 0.01)
    stub.SignLink(request, timeout=10)
    # Refusals for rate are not denials; they are audited, sampled (RefusalSampler).
    assert limited.denials() == []
    [entry] = [e for e in limited.audit.events if e.action == "rate-limit"]
    assert entry.outcome == "failure"
    assert entry.details["caller"] == LIMITED
    assert entry.details["refusals"] == 1
    assert entry.details["rpc"] == "SignLink"


def test_a_flood_of_refusals_is_audited_once_per_interval_with_its_count(
        limited: Any, pki: Pki) -> None:
    stub = limited.custody(pki.client(uri=(LIMITED,)))
    request = pb.SignLinkRequest(step_name="build")
    codes = []
    for _ in range(30):
        try:
            stub.SignLink(request, timeout=10)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert refused >= 20  # 4 per second, burst 3: most of a quick loop is refused
    entries = [e for e in limited.audit.events if e.action == "rate-limit"]
    assert [e.details["refusals"] for e in entries] == [1]  # the rest wait for the next
    # ... or for the shutdown (custody-server does this after the last call finished):
    # every refusal is in the trail, counted once.
    limited.running.access.report_pending_refusals()
    entries = [e for e in limited.audit.events if e.action == "rate-limit"]
    assert [e.details["refusals"] for e in entries] == [1, refused - 1]
    assert entries[1].details["caller"] == LIMITED
    limited.running.access.report_pending_refusals()  # nothing left to report
    assert len([e for e in limited.audit.events if e.action == "rate-limit"]) == 2


def test_refusal_sampler_counts_what_it_does_not_audit() -> None:
    clock = FakeClock()
    sampler = RefusalSampler(interval_seconds=60.0, clock=clock, max_identities=2)
    assert sampler.refused("a") == 1  # the first: audited at once
    assert [sampler.refused("a") for _ in range(5)] == [0] * 5  # counted
    assert sampler.refused("b") == 1  # per identity
    clock.now += 59.9
    assert sampler.refused("a") == 0
    clock.now += 0.2  # the interval since a's entry is over: 6 since it, this one too
    assert sampler.refused("a") == 7
    assert sampler.refused("a") == 0
    clock.now += 60
    assert sampler.refused("a") == 2
    # At most max_identities are remembered: a third one evicts the longest quiet one,
    # which then counts afresh (its entry comes at once).
    sampler = RefusalSampler(interval_seconds=60.0, clock=clock, max_identities=2)
    assert [sampler.refused(x) for x in ("a", "b", "a", "b")] == [1, 1, 0, 0]
    assert [sampler.refused(x) for x in ("a", "c", "a", "b")] == [0, 1, 0, 1]
    assert sampler.refused("b") == 0
    assert sampler.drain() == {"a": 3, "b": 1}  # counted, not yet reported
    assert sampler.drain() == {}
    assert sampler.refused("a") == 1  # afresh after a drain


def _layout(depth: int = 1, padding: int = 0) -> bytes:
    """A valid layout whose JSON nests `depth` levels (in a field the models ignore)."""
    nested: Any = "x"
    for _ in range(depth - 1):
        nested = [nested]
    return json.dumps({"_type": "layout", "expires": "2030-01-01T00:00:00Z", "keys": {},
                       "steps": [], "inspect": [], "readme": "x" * padding,
                       "x-nested": nested}).encode()


@pytest.mark.parametrize(("layout", "message"), [
    (_layout(padding=3_000), "over the limit of 2000 (limits.max_layout_bytes)"),
    (_layout(depth=6), "nested deeper than 5 levels (limits.max_json_depth)"),
])
def test_layout_size_and_depth(limited: Any, pki: Pki, layout: bytes, message: str) -> None:
    stub = limited.custody(pki.client(uri=(FREE,)))
    requests = [("SignLayout", pb.SignLayoutRequest(layout=layout)),
                ("Verify", pb.VerifyRequest(layout=layout,
                                            layout_keys=[pb.TrustedKey(alias="owner")]))]
    for rpc, request in requests:
        before = len(limited.audit.events)
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, rpc)(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in str(caught.value.details())
        [entry] = limited.audit.events[before:]  # audited, and nothing else happened
        assert (entry.action, entry.outcome) == ("request-limit", "failure")
        assert message in entry.reason and entry.details["rpc"] == rpc
    response = stub.SignLayout(pb.SignLayoutRequest(layout=_layout(depth=5)), timeout=10)
    assert response.signed


def test_request_limits_are_checked_before_parsing() -> None:
    limits = RequestLimits(max_layout_bytes=100, max_json_depth=2)
    limits.check_layout(b'{"a": ["[[[[", "\\"]]]"]}')  # brackets in strings do not count
    with pytest.raises(LimitExceededError):
        limits.check_layout(b'{"a": [[1]]}')
    with pytest.raises(ValueError, match="max_json_depth"):
        RequestLimits(max_json_depth=65)


def _held_call_in_flight(stub: Any, gate: GatedAuditSink) -> Callable[[], None]:
    """Start a SignLink that holds a worker until the returned function is called.

    The call blocks in the audit sink (after signing, before answering), so the
    worker is surely busy: no guess at how long a large request takes to arrive.
    """
    thread = threading.Thread(target=lambda: stub.SignLink(
        pb.SignLinkRequest(step_name=gate.step), timeout=60))
    thread.start()
    assert gate.entered.wait(timeout=30), "the held call never reached the audit sink"

    def finish() -> None:
        gate.release.set()
        thread.join()
    return finish


def test_a_call_whose_deadline_passes_while_queued_signs_nothing(start_server: StartServer,
                                                                 pki: Pki) -> None:
    gate = GatedAuditSink(step="held")
    server = start_server(POLICY, limits=Limits(max_workers=1), audit=gate)
    stub = server.custody(pki.client(uri=(FREE,)))
    finish_held_call = _held_call_in_flight(stub, gate)
    with pytest.raises(grpc.RpcError) as caught:
        stub.SignLink(pb.SignLinkRequest(step_name="late"), timeout=0.1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finish_held_call()
    # The worker is free: a new call is answered, so the queued late call has been
    # dispatched (and refused) before it.
    stub.SignLink(pb.SignLinkRequest(step_name="after"), timeout=10)
    steps = [e.details.get("step") for e in server.audit.events if e.action == "sign-link"]
    assert steps == ["held", "after"]  # the late call never reached the signing service


def test_calls_beyond_the_concurrency_bound_are_refused_at_once(start_server: StartServer,
                                                               pki: Pki) -> None:
    gate = GatedAuditSink(step="held")
    server = start_server(POLICY, limits=Limits(max_workers=1, max_concurrent_rpcs=1),
                          audit=gate)
    stub = server.custody(pki.client(uri=(FREE,)))
    finish_held_call = _held_call_in_flight(stub, gate)
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        stub.SignLink(pb.SignLinkRequest(step_name="extra"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.perf_counter() - started < 0.5
    finish_held_call()


def test_calls_in_progress_are_counted_until_they_return(start_server: StartServer,
                                                         pki: Pki) -> None:
    """The count the audit trail's group commit waits by (AuditTrail.expect_entries_from)."""
    gate = GatedAuditSink(step="held")
    server = start_server(POLICY, audit=gate)
    counted = server.running.calls_in_progress
    stub = server.custody(pki.client(uri=(FREE,)))
    finish_held_call = _held_call_in_flight(stub, gate)
    assert counted() == 1
    with pytest.raises(grpc.RpcError):  # a refused call is counted only while it runs
        server.custody(pki.client(uri=("spiffe://ci/stranger",))).SignLink(
            pb.SignLinkRequest(step_name="denied"), timeout=10)
    assert counted() == 1
    finish_held_call()
    assert counted() == 0


def test_reads_not_counted_as_in_progress_write_no_audit_entry(start_server: StartServer,
                                                                pki: Pki) -> None:
    """A call counted in progress that never records makes a group commit wait in vain
    (up to the commit delay): the reads left out of the count must really not audit."""
    assert set(RPCS_BY_NAME) >= READS_WITHOUT_AUDIT
    grants = ", ".join(f'"{name}"' for name in sorted(READS_WITHOUT_AUDIT))
    server = start_server(f"""
version = 1
[[grant]]
identities = ["{FREE}"]
rpcs = [{grants}]
admin_keys = ["build"]
""")
    admin = server.key_admin(pki.client(uri=(FREE,)))
    before = len(server.audit.events)
    admin.ListKeys(pb.ListKeysRequest(), timeout=10)
    admin.GetPublicKey(pb.GetPublicKeyRequest(alias="build"), timeout=10)
    assert server.audit.events[before:] == []
