"""The real `custody-server` process: disk full, kill -9, and no secret in any output.

Disk full is a file-size limit (RLIMIT_FSIZE) set on the running server with prlimit:
no root mount is needed, it hits exactly the files the server writes, and writes past
the limit fail with EFBIG the way they fail with ENOSPC on a full disk (short write,
then an error). Raising the limit again is "space freed". The server's stdout and
stderr are pipes, which the limit does not touch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import resource
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from custody_api.v1 import custody_pb2 as pb
from custody_server.softhsm import init_token

from .audit_support import (
    ServerProcess,
    SigningLoad,
    audit_key_file,
    audit_log,
    custody_stub,
    eventually,
    signed_digests,
    verify_state,
    wait_for_health,
)

USER_PIN = "audit-test-user-pin-4711"
SO_PIN = "audit-test-so-pin-0815"
OUTPUTS: list[bytes] = []  # everything every server of this module wrote: scanned last


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state dir whose embedded token has PINs this module knows (to search for them)."""
    directory = tmp_path / "state"
    init_token(directory / "hsm", label="custody", pin=USER_PIN, so_pin=SO_PIN)
    return directory


def test_disk_full_during_load(state: Path) -> None:
    server = ServerProcess(state)
    key = audit_key_file(state, server)
    load = SigningLoad(server.address)
    try:
        with grpc.insecure_channel(server.address) as channel:
            eventually(lambda: load.ok() > 200)
            size = (state / "audit" / "audit.log").stat().st_size
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE,
                             (size, resource.RLIM_INFINITY))  # full: no byte more fits
            wait_for_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
            # No signature while the disk is full (responses whose entries were written
            # just before the limit may still be on their way: the audit check below
            # holds every returned signature to its entry).
            with pytest.raises(grpc.RpcError) as refused:
                custody_stub(channel).SignLink(pb.SignLinkRequest(step_name="full"),
                                               timeout=30)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            wait_for_health(channel, health_pb2.HealthCheckResponse.SERVING)
            freed = load.ok()
            eventually(lambda: load.ok() > freed + 200)  # signing resumed by itself
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
                metrics = response.read().decode()
    finally:
        load.stop()
        assert server.terminate() == 0
        OUTPUTS.append(server.output())
    assert load.codes["UNAVAILABLE"] > 0
    assert set(load.codes) == {"OK", "UNAVAILABLE"}
    # The file-size limit also stops the attestation store's writes: both withhold.
    assert "audit log unavailable: signature withheld" in load.details
    assert load.details <= {"audit log unavailable: signature withheld",
                            "attestation store unavailable: link withheld"}
    logged = signed_digests(audit_log(state))
    # Every returned signature is in the trail, once. A link the attestation store could
    # not keep (it writes after the audit) is withheld with its entry already written:
    # the trail may hold a few signatures nobody received, never one missing.
    assert set(logged) >= {r.sha256 for r in load.returned}
    assert all(logged[r.sha256] == 1 for r in load.returned)
    from prometheus_client.parser import text_string_to_metric_families

    [failures] = [s.value for family in text_string_to_metric_families(metrics)
                  for s in family.samples
                  if s.name == "custody_audit_failures_total" and s.labels == {"kind": "write"}]
    assert failures >= 1
    assert "sealed" in verify_state(state, key)


def test_kill_9_during_load_then_restart(state: Path) -> None:
    first = ServerProcess(state)
    key = audit_key_file(state, first)
    load = SigningLoad(first.address)
    eventually(lambda: load.ok() > 500)
    first.kill()
    load.stop()
    OUTPUTS.append(first.output())
    received = list(load.returned)
    second = ServerProcess(state)
    with grpc.insecure_channel(second.address) as channel:
        after = custody_stub(channel).SignLink(pb.SignLinkRequest(step_name="after-restart"))
    assert second.terminate() == 0
    OUTPUTS.append(second.output())

    entries = [json.loads(line) for line in audit_log(state).splitlines()]
    reopened = [e for e in entries if e["event"]["action"] == "audit-open"][-1]
    assert reopened["custody"]["continued_from"] >= len(received)
    logged = signed_digests(audit_log(state))
    # Every signature a client received is there, once. Entries for signatures that
    # were in flight at the kill may be there too: written, never returned.
    assert all(logged[r.sha256] == 1 for r in received)
    assert logged[after.sha256] == 1
    assert all(count == 1 for count in logged.values())
    assert "sealed" in verify_state(state, key)


def test_no_pin_or_private_key_in_any_output(state: Path, tmp_path: Path) -> None:
    """Runs every RPC (and its failures) with debug logging, then scans the output of
    every server this module ran, their audit trails and stdout copies, for the PINs
    and for private key material."""
    server = ServerProcess(state)
    try:
        exercise_every_rpc(server.address)
    finally:
        assert server.terminate() == 0
        OUTPUTS.append(server.output())
    OUTPUTS.append(audit_log(state))
    everything = b"\n".join(OUTPUTS)
    assert len(OUTPUTS) >= 5 and b'"sign-link"' in everything  # the scan saw real output
    assert leaks(everything) == []
    planted = everything + b"\n" + base64.b64encode(USER_PIN.encode())
    assert leaks(planted) != []  # and the scan would see a leak


def leaks(output: bytes) -> list[str]:
    found = []
    for name, pin in (("user PIN", USER_PIN), ("SO PIN", SO_PIN)):
        for form in (pin.encode(), pin.encode().hex().encode(), base64.b64encode(pin.encode()),
                     hashlib.sha256(pin.encode()).hexdigest().encode()):
            if form in output:
                found.append(f"{name} as {form[:12]!r}")
    for marker in (b"PRIVATE KEY", b"CKA_VALUE", b'"private"', b"private_exponent"):
        if marker in output:
            found.append(f"private key marker {marker!r}")
    return found


def exercise_every_rpc(address: str) -> None:
    from custody_api.v1 import custody_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        custody = custody_stub(channel)
        admin: Any = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
        signed = custody.SignLink(pb.SignLinkRequest(
            step_name="build", command=["make"],
            products=[pb.Artifact(path="app", digest={"sha256": "cd" * 32})]))
        layout = {"_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "",
                  "keys": {}, "inspect": [],
                  "steps": [{"_type": "step", "name": "build", "threshold": 1,
                             "pubkeys": ["alias:build"], "expected_command": ["make"],
                             "expected_materials": [], "expected_products": []}]}
        signed_layout = custody.SignLayout(pb.SignLayoutRequest(
            layout=json.dumps(layout).encode(), key_alias="owner")).signed
        custody.Verify(pb.VerifyRequest(
            layout=signed_layout, layout_keys=[pb.TrustedKey(alias="owner")],
            links=[pb.MetadataFile(path=signed.file_name, content=signed.signed)]))
        admin.CreateKey(pb.CreateKeyRequest(alias="scan-extra"))
        admin.ListKeys(pb.ListKeysRequest())
        admin.GetPublicKey(pb.GetPublicKeyRequest(alias="scan-extra"))
        failing: list[tuple[Any, Any]] = [
            (custody.SignLink, pb.SignLinkRequest(step_name="x", key_alias="nope")),
            (custody.SignLink, pb.SignLinkRequest()),
            (custody.SignLayout, pb.SignLayoutRequest(layout=b"{", key_alias="owner")),
            (custody.Verify, pb.VerifyRequest(layout=b"[]")),
            (admin.GetPublicKey, pb.GetPublicKeyRequest(alias="Bad Alias")),
        ]
        for method, request in failing:
            with pytest.raises(grpc.RpcError):
                method(request)
