"""SignLinks end to end on a real server and SoftHSM token: each link decided, signed and
audited on its own, each with its own result; the batch's limits; `custody sign-links`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc
from custody_client.client import CustodyClient
from custody_client.errors import ClientError
from custody_client.link_draft import LinkDraft
from custody_client.settings import ConnectionSettings
from custody_core.envelope import parse_envelope
from custody_core.keys import PublicKey
from custody_server.audit_events import AuditEvent, MemoryAuditSink
from custody_server.config import Limits, PolicyConfig, ServerConfig, TlsConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
version = 1

[rate_limit.identities."anonymous"]
per_second = {rate}
burst = {burst}

[[grant]]
identities = ["anonymous"]
rpcs = ["SignLinks", "SignLink", "GetPublicKey"]
link_keys = ["build", "missing-key", "audit"]
steps = ["build-*", "test-*"]
admin_keys = ["build"]
"""
OPEN = POLICY.format(rate=10000.0, burst=20000)


class FlakySink(MemoryAuditSink):
    """Records, except the entries of the steps named in `refuse` (their write fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse: set[str] = set()
        self.threads: set[str] = set()

    def record(self, event: AuditEvent) -> None:
        self.threads.add(threading.current_thread().name)
        if event.details.get("step") in self.refuse:
            raise OSError("disk full")
        super().record(event)


@dataclass
class Server:
    running: Any
    audit: FlakySink
    channel: grpc.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def custody(self) -> Any:
        return pb_grpc.CustodyStub(self.channel)  # type: ignore[no-untyped-call]

    def events(self, action: str) -> list[AuditEvent]:
        return [e for e in self.audit.events if e.action == action]


def start(keystore: Pkcs11KeyStore, state: Path, *, policy: str = OPEN,
          limits: Limits | None = None) -> Server:
    from custody_server.app import build_server

    keys = KeyRing(keystore)
    keys.ensure("build", KeyAlgorithm.ECDSA_P256)
    (state / "policy.toml").write_text(policy)
    audit = FlakySink()
    running = build_server(config=ServerConfig(
        listen="127.0.0.1:0", state_dir=state, tls=TlsConfig(insecure=True),
        policy=PolicyConfig(file=state / "policy.toml"), limits=limits or Limits()),
        keys=keys, audit=audit)
    return Server(running, audit, grpc.insecure_channel(f"127.0.0.1:{running.port}"))


@pytest.fixture
def server(keystore: Pkcs11KeyStore, tmp_path: Path) -> Iterator[Server]:
    started = start(keystore, tmp_path)
    yield started
    started.channel.close()
    started.running.stop(grace=1).wait()


def link(step: str, index: int = 0, **fields: Any) -> pb.SignLinkRequest:
    return pb.SignLinkRequest(
        step_name=step, command=["make", str(index)],
        products=[pb.Artifact(path=f"out/{index}", digest={"sha256": f"{index:064x}"})],
        **fields)


def build_key(server: Server) -> PublicKey:
    admin = pb_grpc.KeyAdminStub(server.channel)  # type: ignore[no-untyped-call]
    key = admin.GetPublicKey(pb.GetPublicKeyRequest(alias="build")).key
    return PublicKey.from_dict(json.loads(key.public_key_json))


def test_every_link_is_signed_and_audited_on_its_own(server: Server) -> None:
    envelopes = (pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE, pb.ENVELOPE_STATEMENT)
    request = pb.SignLinksRequest(links=[link(f"build-{n}", n, envelope=envelopes[n % 3])
                                         for n in range(30)])
    response = server.custody.SignLinks(request)
    assert len(response.results) == 30
    key = build_key(server)
    audited = {e.details["signed_sha256"]: e for e in server.events("sign-link")}
    for n, result in enumerate(response.results):
        assert result.WhichOneof("result") == "signed", result
        signed = result.signed
        assert signed.file_name == f"build-{n}.{signed.keyid[:8]}.link"
        assert signed.envelope == envelopes[n % 3]
        envelope = parse_envelope(signed.signed)
        assert envelope.verified_keyids({"build": key}) == {"build"}
        assert hashlib.sha256(envelope.signed_bytes).hexdigest() == signed.sha256
        event = audited[signed.sha256]
        assert event.outcome == "success" and event.details["step"] == f"build-{n}"
        assert event.details["caller"] == "anonymous"
    assert len(audited) == 30
    # recorded from the batch's recording threads, so that the trail writes them together
    assert any(name.startswith("custody-batch-audit") for name in server.audit.threads)


def test_a_refused_link_fails_alone(server: Server) -> None:
    links = [
        link("build-ok", 0),
        link("deploy", 1),  # no grant names the step
        link("build-x", 2, key_alias="audit"),  # the audit key signs no link
        link("build-y", 3, key_alias="missing-key"),  # granted, but no such key
        pb.SignLinkRequest(step_name="build-dup", products=[  # one path twice
            pb.Artifact(path="a", digest={"sha256": "a" * 64}),
            pb.Artifact(path="a", digest={"sha256": "b" * 64})]),
        link("build-\nx", 5),  # not a step name
        link("build-ok2", 6),
    ]
    response = server.custody.SignLinks(pb.SignLinksRequest(links=links))
    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["signed", "error", "error", "error", "error", "error", "signed"]
    codes = [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED,
             grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT,
             grpc.StatusCode.INVALID_ARGUMENT]
    for result, code in zip(response.results[1:6], codes, strict=True):
        assert result.error.code == code.value[0], result.error
    assert "may not sign step 'deploy'" in response.results[1].error.message
    assert "reserved for the audit trail" in response.results[2].error.message
    assert "duplicate artifact path 'a'" in response.results[4].error.message
    # each refusal is audited, like its SignLink's would be
    denials = [e for e in server.audit.events if e.action == "authorize"]
    assert sorted(e.details["step"] for e in denials) == ["build-x", "deploy"]
    assert all(e.details["rpc"] == "SignLinks" for e in denials)
    failures = {e.details.get("step"): e.reason for e in server.events("sign-link")
                if e.outcome == "failure"}
    assert set(failures) >= {"build-y", "build-dup"}
    assert any("step_sha256" in e.details for e in server.events("sign-link")
               if e.outcome == "failure")  # the bad name, recorded as its digest
    assert [e.details["step"] for e in server.events("sign-link")
            if e.outcome == "success"] == ["build-ok", "build-ok2"]


def test_an_entry_that_cannot_be_written_withholds_only_its_link(server: Server) -> None:
    server.audit.refuse = {"build-1", "build-3"}
    response = server.custody.SignLinks(pb.SignLinksRequest(
        links=[link(f"build-{n}", n) for n in range(5)]))
    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["signed", "error", "signed", "error", "signed"]
    for n in (1, 3):
        assert response.results[n].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert "signature withheld" in response.results[n].error.message
    assert sorted(e.details["step"] for e in server.events("sign-link")) == [
        "build-0", "build-2", "build-4"]


def test_a_batch_over_the_limit_is_refused_whole(keystore: Pkcs11KeyStore,
                                                 tmp_path: Path) -> None:
    server = start(keystore, tmp_path, limits=Limits(max_links_per_batch=3))
    try:
        with pytest.raises(grpc.RpcError) as raised:
            server.custody.SignLinks(pb.SignLinksRequest(
                links=[link(f"build-{n}", n) for n in range(4)]))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limits.max_links_per_batch" in (raised.value.details() or "")
        assert server.events("sign-link") == []
        assert [e.details["links"] for e in server.events("request-limit")] == [4]
        assert len(server.custody.SignLinks(pb.SignLinksRequest(
            links=[link(f"build-{n}", n) for n in range(3)])).results) == 3
    finally:
        server.channel.close()
        server.running.stop(grace=1).wait()


def test_links_that_would_not_fit_the_response_are_not_signed(keystore: Pkcs11KeyStore,
                                                               tmp_path: Path) -> None:
    """max_message_bytes bounds the whole response: a link that would not fit is refused
    before it is signed, as a SignLink's would be."""
    server = start(keystore, tmp_path, limits=Limits(max_message_bytes=64 * 1024))
    try:
        output = "x" * 10_000  # about 10 kB a link
        response = server.custody.SignLinks(pb.SignLinksRequest(links=[
            link(f"build-{n}", n, byproducts=pb.Byproducts(stdout=output))
            for n in range(5)]))
        kinds = [r.WhichOneof("result") for r in response.results]
        signed = kinds.count("signed")
        assert 1 < signed < 5 and kinds == ["signed"] * signed + ["error"] * (5 - signed)
        assert response.results[-1].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "nothing was signed" in response.results[-1].error.message
        assert response.ByteSize() <= 64 * 1024
        assert len([e for e in server.events("sign-link") if e.outcome == "success"]) == signed
    finally:
        server.channel.close()
        server.running.stop(grace=1).wait()


def test_each_link_takes_a_token_of_the_rate(keystore: Pkcs11KeyStore,
                                            tmp_path: Path) -> None:
    server = start(keystore, tmp_path, policy=POLICY.format(rate=0.001, burst=5))
    try:
        response = server.custody.SignLinks(pb.SignLinksRequest(
            links=[link(f"build-{n}", n) for n in range(8)]))
        kinds = [r.WhichOneof("result") for r in response.results]
        assert kinds == ["signed"] * 4 + ["error"] * 4  # the call took the fifth token
        assert all(r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                   for r in response.results[4:])
        assert "retry in" in response.results[4].error.message
    finally:
        server.channel.close()
        server.running.stop(grace=1).wait()


def test_signlinks_needs_a_grant_of_its_own(keystore: Pkcs11KeyStore,
                                            tmp_path: Path) -> None:
    server = start(keystore, tmp_path, policy=OPEN.replace('"SignLinks", ', ""))
    try:
        with pytest.raises(grpc.RpcError) as raised:
            server.custody.SignLinks(pb.SignLinksRequest(links=[link("build-0")]))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert server.custody.SignLink(link("build-0")).file_name  # SignLink still works
    finally:
        server.channel.close()
        server.running.stop(grace=1).wait()


def test_client_batches_and_reports_each_link(server: Server) -> None:
    drafts = []
    for n in range(7):
        draft = LinkDraft(step_name="deploy" if n == 4 else f"test-{n}", command=["tox"])
        draft.add_products([(f"dist/{n}.whl", f"{n:064x}")])
        drafts.append(draft)
    with CustodyClient(ConnectionSettings(address=server.address)) as custody:
        results = custody.sign_links(drafts, batch_size=3)
    assert len(results) == 7
    assert isinstance(results[4], ClientError) and results[4].code == "PERMISSION_DENIED"
    for n, result in enumerate(results):
        if n != 4:
            assert not isinstance(result, ClientError), result
            assert result.file_name.startswith(f"test-{n}.")


def test_cli_sign_links_writes_each_link(server: Server, tmp_path: Path) -> None:
    drafts = tmp_path / "drafts.jsonl"
    lines = [{"step_name": f"test-{n}", "command": ["pytest", f"-k{n}"],
              "materials": {"src/a.py": {"sha256": "a" * 64}},
              "products": {f"report-{n}.xml": {"sha256": "b" * 64}},
              "byproducts": {"stdout": "ok", "stderr": "", "return-value": 0},
              "environment": {"CI_JOB": str(n)}} for n in range(5)]
    lines[2]["step_name"] = "deploy"  # refused by the policy
    drafts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "links"
    out.mkdir()
    result = run_cli("sign-links", str(drafts), "-d", str(out), "--batch-size", "2",
                     "--server", server.address, "--plaintext", "--envelope", "dsse")
    assert result.returncode == 4, result.stderr  # refused: the server said no
    assert f"{drafts}:3 (deploy):" in result.stderr and "PERMISSION_DENIED" in result.stderr
    written = sorted(p.name.split(".")[0] for p in out.glob("*.link"))
    assert written == ["test-0", "test-1", "test-3", "test-4"]
    payload = json.loads(next(out.glob("test-1.*.link")).read_bytes())
    assert payload["payloadType"] == "application/vnd.in-toto+json"


@pytest.mark.parametrize(("line", "message"), [
    ('{"command": ["make"]}', "step_name (a string) is required"),
    ('{"step_name": "test-1", "step_name": "x"}', "duplicate"),
    ('{"step_name": "test-1", "products": {"a": {"md5": "00"}}}', '{"sha256"'),
    ('{"step_name": "test-1", "stdout": "x"}', "unknown field(s) stdout"),
    ('[1]', "a link draft is a JSON object"),
])
def test_cli_refuses_a_bad_draft_naming_its_line(tmp_path: Path, line: str,
                                                 message: str) -> None:
    drafts = tmp_path / "drafts.jsonl"
    drafts.write_text('{"step_name": "test-0"}\n' + line + "\n")
    result = run_cli("sign-links", str(drafts), "--server", "127.0.0.1:1", "--plaintext")
    assert result.returncode == 2, result.stderr
    assert f"{drafts}:2" in result.stderr and message in result.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("core", "client"))}
    return subprocess.run([sys.executable, "-m", "custody_client", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=ROOT)
