"""Policy reload: a new file applies to the next call, a bad file is rejected with its
precise error while the old policy stays, calls in flight are never dropped, and SIGHUP
reloads a running server process. Every reload, good or bad, is audited."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
from policy_support import grant, policy
from security_support import (
    Pki,
    ServerProcess,
    StartServer,
)

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server.tls_bootstrap import LOCAL_CLIENT_IDENTITY

BUILDER = "spiffe://example.test/ci/builder"


def _policy(*steps: str) -> str:
    return policy(grant([BUILDER], ["SignLink"], link_keys=["build"], steps=steps),
                  rate=(100000.0, 100000))


def _sign(stub: object, step: str) -> grpc.StatusCode:
    try:
        stub.SignLink(pb.SignLinkRequest(step_name=step), timeout=20)  # type: ignore[attr-defined]
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


BAD_FILES = [
    (b"version = 1\n[[grant]\n", "not valid TOML: Expected ']]'"),
    (b'version = 1\n[[grant]]\nidentities = ["x"]\nrpcs = ["SignLink"]\n',
     "grant 1: identities: identity 'x' is not a URI"),
    (f'version = 1\n[[grant]]\nidentities = ["{BUILDER}"]\nrpcs = ["SignLnk"]\n'.encode(),
     "grant 1: rpcs: unknown RPC 'SignLnk'"),
    (f'version = 1\n[[grant]]\nidentities = ["{BUILDER}"]\nrpcs = ["SignLink"]\n'
     'link_keys = ["build"]\n'.encode(), "grants SignLink but 'steps' is empty or missing"),
    (b"[[grant]]\n", "'version = 1' is required"),
    (b"version = 1\n\xff\n", "not valid UTF-8"),
    (None, "cannot read policy file"),
]


def test_reload_applies_a_good_file_and_rejects_bad_ones(start_server: StartServer,
                                                         pki: Pki) -> None:
    server = start_server(_policy("build"))
    stub = server.custody(pki.client(uri=(BUILDER,)))
    assert _sign(stub, "deploy") == grpc.StatusCode.PERMISSION_DENIED

    server.policy_file.write_text(_policy("build", "deploy"))
    outcome = server.running.access.reload_policy()
    assert outcome.loaded and outcome.fingerprint != outcome.previous_fingerprint
    assert _sign(stub, "deploy") == grpc.StatusCode.OK

    for content, message in BAD_FILES:
        if content is None:
            server.policy_file.unlink()
        else:
            server.policy_file.write_bytes(content)
        outcome = server.running.access.reload_policy()
        assert not outcome.loaded
        assert str(server.policy_file) in outcome.error and message in outcome.error
        assert _sign(stub, "deploy") == grpc.StatusCode.OK  # the old policy stays
        assert _sign(stub, "release") == grpc.StatusCode.PERMISSION_DENIED

    reloads = [e for e in server.audit.events if e.action == "policy-reload"]
    assert [e.outcome for e in reloads] == ["success"] + ["failure"] * len(BAD_FILES)
    assert all(e.category == "configuration" for e in reloads)
    assert [m for _, m in BAD_FILES] == [
        next(m for _, m in BAD_FILES if m in e.reason) for e in reloads[1:]]
    assert reloads[-1].details["policy_sha256"] == reloads[0].details["policy_sha256"]


def test_reloads_under_load_drop_no_call(start_server: StartServer, pki: Pki) -> None:
    policy_a, policy_b = _policy("build", "a-*"), _policy("build", "b-*")
    server = start_server(policy_a)
    stubs = [server.custody(pki.client(uri=(BUILDER,))) for _ in range(6)]
    stop = threading.Event()
    unexpected: list[grpc.StatusCode] = []
    calls = [0] * len(stubs)

    def client(index: int) -> None:
        while not stop.is_set():
            code = _sign(stubs[index], "build")  # allowed by both policies
            calls[index] += 1
            if code != grpc.StatusCode.OK:
                unexpected.append(code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(stubs))]
    for thread in threads:
        thread.start()
    try:
        for round_number in range(40):
            content = (policy_a, policy_b, "version = 1\n[[grant]")[round_number % 3]
            server.policy_file.write_text(content)
            server.running.access.reload_policy()
            answered = list(calls)
            # Every client has a call answered after this reload before the next one.
            deadline = time.monotonic() + 30
            while any(now <= then for now, then in zip(calls, answered, strict=True)):
                assert time.monotonic() < deadline, "a client got no answer after a reload"
                time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert unexpected == []


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    """The embedded default end to end: mTLS with the local client certificate, the
    default policy it wrote, and SIGHUP with a good and then a bad file."""
    server = ServerProcess(tmp_path / "state")
    try:
        assert b"WARNING" not in server.stderr
        with server.channel() as channel:
            custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
            assert _sign(custody, "build") == grpc.StatusCode.OK

            policy = tmp_path / "state" / "policy.toml"
            policy.write_text(f'version = 1\n[[grant]]\nidentities = ["{LOCAL_CLIENT_IDENTITY}"]'
                              '\nrpcs = ["SignLink"]\nlink_keys = ["build"]\nsteps = ["test"]\n')
            mark = len(server.stderr)
            server.signal(signal.SIGHUP)
            server.wait_for(rb"policy reloaded \(sha256 [0-9a-f]{64}\)", after=mark)
            assert _sign(custody, "build") == grpc.StatusCode.PERMISSION_DENIED
            assert _sign(custody, "test") == grpc.StatusCode.OK

            policy.write_text("version = 1\n[[grant]\n")
            mark = len(server.stderr)
            server.signal(signal.SIGHUP)
            server.wait_for(rb"policy NOT reloaded, the old one stays: .*policy\.toml: "
                            rb"not valid TOML", after=mark)
            assert _sign(custody, "test") == grpc.StatusCode.OK
            assert _sign(custody, "build") == grpc.StatusCode.PERMISSION_DENIED
        assert server.stop() == 0
    finally:
        server.stop()


def test_plaintext_is_announced_loudly(tmp_path: Path) -> None:
    config = tmp_path / "custody.toml"
    config.write_text("[tls]\ninsecure = true\n")
    server = ServerProcess(tmp_path / "state", args=("--config", str(config)))
    try:
        assert b"(PLAINTEXT)" in server.stderr
        assert b"WARNING: tls.insecure = true" in server.stderr
        with grpc.insecure_channel(server.address) as channel:
            custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
            assert _sign(custody, "build") == grpc.StatusCode.OK  # "anonymous" may
        assert server.stop() == 0
    finally:
        server.stop()
