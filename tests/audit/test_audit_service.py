"""The audit trail inside the real server (in-process, port 0, SoftHSM keys).

Exactly one entry per returned signature under concurrent load; fail-closed with
health NOT_SERVING while the file cannot be written, and recovery by itself.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from custody_api.v1 import custody_pb2 as pb
from custody_core.audit_check import AuditFile, AuditVerdict, verify_audit_trail
from custody_core.envelope import parse_envelope
from custody_server.app import RunningServer, build_server
from custody_server.audit import AuditSettings, AuditTrail, open_audit_trail
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.metrics import ServiceMetrics

from .audit_support import (
    custody_stub,
    eventually,
    health_status,
    link_request,
    plaintext_config,
    signed_digests,
)

SIGNATURES = 2_000
CLIENTS = 16


@dataclass
class Audited:
    running: RunningServer
    trail: AuditTrail
    keys: KeyRing
    metrics: ServiceMetrics
    address: str

    def verify(self, names: list[str]) -> AuditVerdict:
        directory = self.trail.path.parent
        audit_keys = {v.public_key.keyid: v.public_key
                      for v in self.keys.get("audit").versions}
        return verify_audit_trail(
            [AuditFile(name, (directory / name).read_bytes()) for name in names],
            trusted_keys=audit_keys)


@pytest.fixture
def audited(keystore: Pkcs11KeyStore, softhsm_token: Any, tmp_path: Path,
            capfd: pytest.CaptureFixture[str]) -> Iterator[Audited]:
    keys = KeyRing(keystore)
    for alias in ("build", "owner"):
        if not keys.exists(alias):
            keys.create(alias, KeyAlgorithm.ECDSA_P256)
    metrics = ServiceMetrics()
    trail = open_audit_trail(AuditSettings(directory=tmp_path / "audit",
                                           retry_interval_seconds=0.05,
                                           checkpoint_interval_seconds=0.2),
                             keys=keys, store=keystore, node=f"test-{uuid.uuid4().hex[:12]}",
                             observer=metrics)
    running = build_server(config=plaintext_config(tmp_path),
                           keys=keys, audit=trail, metrics=metrics)
    trail.set_health_listener(running.set_serving)
    yield Audited(running=running, trail=trail, keys=keys, metrics=metrics,
                  address=f"127.0.0.1:{running.port}")
    trail.set_health_listener(None)
    running.stop(grace=1).wait()
    trail.close()
    # Nothing this test made the server print or write holds the token's PIN.
    pin = softhsm_token.read_pin()
    captured = capfd.readouterr()
    written = b"".join(p.read_bytes() for p in (tmp_path / "audit").glob("audit*") if p.is_file())
    assert pin not in captured.out + captured.err
    assert pin.encode() not in written and b"PRIVATE KEY" not in written


def test_one_entry_per_returned_signature_under_concurrent_load(audited: Audited) -> None:
    channels = [grpc.insecure_channel(audited.address) for _ in range(CLIENTS)]

    def sign(index: int) -> pb.SignLinkResponse:
        stub = custody_stub(channels[index % CLIENTS])
        response: pb.SignLinkResponse = stub.SignLink(link_request(index), timeout=60)
        return response

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        responses = list(pool.map(sign, range(SIGNATURES)))
    for channel in channels:
        channel.close()
    audited.trail.close()

    logged = signed_digests(audited.trail.path.read_bytes())
    assert sum(logged.values()) == SIGNATURES
    for response in responses:
        digest = hashlib.sha256(parse_envelope(response.signed).signed_bytes).hexdigest()
        assert digest == response.sha256
        assert logged[digest] == 1
    verdict = audited.verify(["audit.log"])
    assert verdict.ok and verdict.sealed, verdict.problems
    assert verdict.checkpoints >= 2
    assert audited.metrics.sample("custody_audit_entries_total") == verdict.entries


def test_unwritable_audit_file_during_load(audited: Audited) -> None:
    """Every affected RPC gets UNAVAILABLE and no signature, health turns NOT_SERVING,
    signing resumes by itself once the file can be written, and the chain verifies."""
    trail_path = audited.trail.path
    moved = trail_path.with_name("audit.before")
    stop = threading.Event()
    returned: list[pb.SignLinkResponse] = []
    codes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def client(worker: int) -> None:
        with grpc.insecure_channel(audited.address) as channel:
            stub = custody_stub(channel)
            index = worker * 1_000_000
            while not stop.is_set():
                index += 1
                try:
                    response = stub.SignLink(link_request(index), timeout=30)
                except grpc.RpcError as error:
                    with lock:
                        codes[error.code().name] += 1
                    assert "signature withheld" in (error.details() or "")
                    continue
                with lock:
                    codes["OK"] += 1
                    returned.append(response)

    statuses = []
    with grpc.insecure_channel(audited.address) as health_channel, \
            ThreadPoolExecutor(max_workers=8) as pool:
        workers = [pool.submit(client, n) for n in range(8)]
        eventually(lambda: codes["OK"] >= 50)  # the load is under way
        trail_path.rename(moved)
        trail_path.mkdir()  # now nothing can be written at the trail's path
        deadline = time.monotonic() + 5
        while health_status(health_channel) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline
        statuses.append("NOT_SERVING")
        # Not one signature while it cannot write (a call answered just before the break
        # may still be on its way: the audit comparison below covers those).
        with pytest.raises(grpc.RpcError) as refused:
            custody_stub(health_channel).SignLink(link_request(10**9), timeout=30)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        trail_path.rmdir()
        deadline = time.monotonic() + 5
        while health_status(health_channel) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
        statuses.append("SERVING")
        resumed = codes["OK"]
        eventually(lambda: codes["OK"] > resumed + 20)  # signing resumed by itself
        stop.set()
        for worker in workers:
            worker.result()
    assert codes["OK"] > resumed  # signing resumed
    assert set(codes) == {"OK", "UNAVAILABLE"} and codes["UNAVAILABLE"] > 0
    audited.trail.close()
    logged = signed_digests(moved.read_bytes() + trail_path.read_bytes())
    assert sum(logged.values()) == len(returned)
    assert all(logged[response.sha256] == 1 for response in returned)
    verdict = audited.verify(["audit.before", "audit.log"])
    assert verdict.ok and verdict.sealed, verdict.problems
    assert (audited.metrics.sample("custody_audit_failures_total", kind="write")
            or 0) >= 1


def test_metrics_endpoint_reports_what_the_on_call_watches(audited: Audited) -> None:
    import urllib.request

    from custody_server.metrics import MetricsServer

    audited.metrics.watch_keys(lambda: {k.alias: len(k.versions) for k in audited.keys.all()})
    audited.metrics.watch_audit(lambda: audited.trail.healthy)
    audited.metrics.watch_overlap(lambda: {("build", 1): 3600.0})
    server = MetricsServer.start(audited.metrics, listen="127.0.0.1:0")
    try:
        with grpc.insecure_channel(audited.address) as channel:
            custody = custody_stub(channel)
            custody.SignLink(link_request(1))
            with pytest.raises(grpc.RpcError):
                custody.Verify(pb.VerifyRequest(layout=b"{}",
                                                layout_keys=[pb.TrustedKey(alias="owner")]))
            layout = custody.SignLayout(pb.SignLayoutRequest(layout=json.dumps({
                "_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "", "keys": {},
                "steps": [{"_type": "step", "name": "build", "threshold": 1,
                           "pubkeys": ["alias:build"], "expected_command": [],
                           "expected_materials": [], "expected_products": []}],
                "inspect": []}).encode(), key_alias="owner")).signed
            verdict = custody.Verify(pb.VerifyRequest(
                layout=layout, layout_keys=[pb.TrustedKey(alias="owner")]))
            assert not verdict.passed
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
    finally:
        server.close()
    samples = parse_exposition(text)
    assert samples["custody_rpc_requests_total", ("code", "OK"), ("rpc", "SignLink")] == 1
    assert samples["custody_rpc_requests_total", ("code", "INVALID_ARGUMENT"),
                   ("rpc", "Verify")] == 1
    assert samples["custody_rpc_duration_seconds_count", ("rpc", "SignLink")] == 1
    assert samples["custody_signatures_total", ("action", "sign-link"), ("key_alias", "build"),
                   ("outcome", "success")] == 1
    assert samples["custody_verifications_total", ("result", "error"),
                   ("stage", "request")] == 1
    stage = verdict.failures[0].stage
    assert stage == "threshold"  # no link for the step: the metrics name the cause
    assert samples["custody_verifications_total", ("result", "failed"),
                   ("stage", "missing-link")] == 1
    assert samples["custody_audit_write_duration_seconds_count",] >= 4
    assert samples["custody_audit_writable",] == 1
    assert samples["custody_key_versions", ("alias", "build")] >= 1
    assert samples["custody_key_overlap_remaining_seconds", ("alias", "build"),
                   ("version", "1")] == 3600


def parse_exposition(text: str) -> dict[tuple[Any, ...], float]:
    """(name, *sorted label pairs) -> value, read with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, *sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_signature_entry_names_key_version_and_caller(audited: Audited) -> None:
    with grpc.insecure_channel(audited.address) as channel:
        response = custody_stub(channel).SignLink(link_request(7))
    audited.trail.close()
    entries: list[dict[str, Any]] = [json.loads(line) for line in
                                     audited.trail.path.read_bytes().splitlines()]
    signed = [e for e in entries if e["event"]["action"] == "sign-link"]
    assert len(signed) == 1
    entry = signed[0]
    assert entry["custody"]["key"] == {"alias": "build", "version": response.key_version,
                                       "id": response.keyid}
    assert entry["custody"]["signed_sha256"] == response.sha256
    assert entry["custody"]["step"] == "step-7"
    assert entry["custody"]["rpc"] == "/custody.v1.Custody/SignLink"
    assert len(entry["custody"]["request_id"]) == 32
    assert entry["source"]["ip"] == "127.0.0.1"
    assert entry["event"]["id"] and entry["@timestamp"].endswith("Z")
