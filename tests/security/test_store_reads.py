"""Who may read the attestation store, and that every read of it is audited
(docs/STORE.md, "Who may read the store"; docs/SECURITY.md).

Servers with real mTLS, a real SoftHSM token and a policy file. The two attacks of the
review are replayed as they were reported: a gate granted only Verify reading another
run's links through Verify with `stored_links` (plans unaudited), and a layout that does
not verify still naming the run that made a digest. Reads of the store (GetLink,
ListLinks, Verify's stored links, plans included) write `store-read` (or `verify`)
entries, and a read whose entry cannot be written is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from policy_support import UNLIMITED, grant, policy
from security_support import REPO, AccessServer, ClientCert, Pki, StartServer

from custody_api.v1 import custody_pb2 as pb
from custody_core.envelope import sign_metablock
from custody_core.software_signer import SoftwareSigner
from custody_server.audit_events import AuditEvent, MemoryAuditSink
from custody_server.policy import AccessRequest, load_policy, parse_policy
from custody_server.policy.defaults import LOCAL_POLICY

GATE = "spiffe://example.test/gate"  # Verify only: the gate that verifies link files
READER = "spiffe://example.test/release-gate"  # Verify and the store's reads
BUILDER = "spiffe://example.test/ci/builder"
OWNER = "dns:release.example.test"
POLICY = policy(
    grant([GATE], ["Verify"]),
    grant([READER], ["Verify", "ListLinks", "GetLink"]),
    grant([BUILDER], ["SignLink"], link_keys=["build"], steps=["build"]),
    grant([OWNER], ["SignLayout"], layout_keys=["owner"]),
    rate=UNLIMITED)
SECRET_PATH = "secret/name.tgz"
SECRET_COMMAND = ["make", "--token=abc"]
EXPIRES = "2099-01-01T00:00:00Z"


class RefusingAuditSink(MemoryAuditSink):
    """Refuses to write the entries of the actions in `refused` (a full disk, for them)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: set[str] = set()

    def record(self, event: AuditEvent) -> None:
        if event.action in self.refused:
            raise OSError("no space left on device")
        super().record(event)


class Store:
    """One server with the victim's run recorded in its store, and its callers."""

    def __init__(self, server: AccessServer, pki: Pki) -> None:
        self.server = server
        self.certs: dict[str, ClientCert] = {}
        self.stubs = {identity: server.custody(self.cert(identity, pki))
                      for identity in (GATE, READER, BUILDER, OWNER)}
        self.run = f"victim:{uuid.uuid4().hex[:12]}"
        self.product = f"secret release {uuid.uuid4()}".encode()
        self.digest = hashlib.sha256(self.product).hexdigest()
        self.link = self.stubs[BUILDER].SignLink(pb.SignLinkRequest(
            step_name="build", key_alias="build", command=SECRET_COMMAND, run_id=self.run,
            products=[pb.Artifact(path=SECRET_PATH, digest={"sha256": self.digest})]))
        self.artifact = pb.Artifact(path="app.tgz", digest={"sha256": self.digest})

    def cert(self, identity: str, pki: Pki) -> ClientCert:
        if identity not in self.certs:
            self.certs[identity] = (pki.client(dns=(identity[4:],))
                                    if identity.startswith("dns:") else
                                    pki.client(uri=(identity,)))
        return self.certs[identity]

    def call(self, identity: str) -> Any:
        return self.stubs[identity]

    def service_key(self, alias: str) -> dict[str, Any]:
        key: dict[str, Any] = self.server.keys.get(alias).active.public_key.to_dict()
        return key

    def events(self, action: str, since: int = 0) -> list[AuditEvent]:
        return [e for e in self.server.audit.events[since:] if e.action == action]

    def owner_layout(self, **changes: Any) -> bytes:
        """The security team's layout, signed by the owner key through the service."""
        signed: bytes = self.call(OWNER).SignLayout(pb.SignLayoutRequest(
            layout=json.dumps(build_layout("alias:build", **changes)).encode(),
            key_alias="owner")).signed
        return signed


def build_layout(functionary: str, *, keys: dict[str, Any] | None = None,
                 expires: str = EXPIRES, inspect: list[Any] | None = None) -> dict[str, Any]:
    """One step `build` whose products may be nothing: any stored build link fails its
    rules, and the verdict then names its products and (warning) its command."""
    return {"_type": "layout", "expires": expires, "readme": "", "keys": keys or {},
            "steps": [{"_type": "step", "name": "build", "threshold": 1,
                       "pubkeys": [functionary], "expected_command": [],
                       "expected_materials": [],
                       "expected_products": [["CREATE", "app.tgz"], ["DISALLOW", "*"]]}],
            "inspect": inspect or []}


def own_layout(store: Store, signer: SoftwareSigner, **changes: Any) -> bytes:
    """A layout signed by the caller's own key that lists the service's build key, as the
    review's gate wrote it."""
    build = store.service_key("build")
    return sign_metablock(build_layout(build["keyid"], keys={build["keyid"]: build},
                                       **changes), [signer])


def own_key(signer: SoftwareSigner) -> pb.TrustedKey:
    return pb.TrustedKey(public_key_json=json.dumps(signer.public_key.to_dict()))


def leaks(store: Store, answer: pb.VerifyResponse) -> list[str]:
    """What of the victim's run an answer gives away."""
    text = f"{answer.run_id} {answer.verdict_json} {answer.failures} {answer.warnings}"
    return [secret for secret in (store.run, SECRET_PATH, "--token=abc") if secret in text]


@pytest.fixture
def store(start_server: StartServer, pki: Pki) -> Store:
    return Store(start_server(POLICY, audit=RefusingAuditSink()), pki)


def test_a_gate_granted_only_verify_cannot_read_a_run_through_verify(store: Store) -> None:
    """Finding 4: the gate signs a layout with its own key naming the service's build key
    and asks Verify for the store's links of the run that made a digest. It was answered
    with the run id, the run's products and its command, plans unaudited. Now the call is
    PERMISSION_DENIED before the store is read, whatever the layout, and audited."""
    gate = store.call(GATE)
    with pytest.raises(grpc.RpcError) as caught:  # the gate may not list links...
        gate.ListLinks(pb.ListLinksRequest(run_id=store.run))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    signer = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    attack = own_layout(store, signer)
    owners = store.owner_layout()
    before = len(store.server.audit.events)
    # ...nor read them through Verify: by digest, by run, plan or not
    asks: list[dict[str, Any]] = [
        {"layout": attack, "layout_keys": [own_key(signer)], "artifacts": [store.artifact]},
        {"layout": attack, "layout_keys": [own_key(signer)], "run_id": store.run},
        {"layout": owners, "layout_keys": [pb.TrustedKey(alias="owner")],
         "artifacts": [store.artifact]},
    ]
    for ask in asks:
        for plan in (True, False):
            with pytest.raises(grpc.RpcError) as caught:
                gate.Verify(pb.VerifyRequest(stored_links=True, plan=plan, **ask))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "stored_links reads the attestation store, which needs a grant of " \
                   "ListLinks" in str(caught.value.details())
    denials = store.events("authorize", before)
    assert len(denials) == 6
    assert all(e.details["caller"] == GATE and e.details["rpc"] == "Verify"
               and e.details["stored_links"] is True for e in denials)
    assert store.events("verify", before) == store.events("store-read", before) == []
    # the gate still verifies link files it holds (the links of `custody verify -d`)
    held = gate.Verify(pb.VerifyRequest(layout=owners, layout_keys=[pb.TrustedKey(
        alias="owner")], links=[pb.MetadataFile(path=store.link.file_name,
                                                content=store.link.signed)]))
    assert not held.passed and held.failures[0].stage == "step-rules"


def test_the_layout_must_verify_before_the_store_is_read(store: Store) -> None:
    """Finding 4's oracle: an unsigned layout, or one signed by a key other than those
    given, or an expired one, named the run that made a digest. Now such a layout is
    answered from its own stages: no run id, nothing of the run, and the entry says the
    store was not read. A caller granted the store gets the run once the layout verifies
    against the keys it gave (its own key included: the grant decides who reads the
    store, the layout what passes)."""
    reader = store.call(READER)
    signer = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    owner = [pb.TrustedKey(alias="owner")]
    build = store.service_key("build")
    unsigned = json.dumps({"signed": build_layout(build["keyid"], keys={build["keyid"]: build}),
                           "signatures": []}).encode()
    refused = {
        "layout-signature": [(unsigned, owner), (own_layout(store, signer), owner),
                             (store.owner_layout(), [own_key(signer)])],
        "expiry": [(store.owner_layout(expires="2001-01-01T00:00:00Z"), owner)],
    }
    for stage, cases in refused.items():
        for signed, keys in cases:
            for plan in (True, False):
                before = len(store.server.audit.events)
                answer = reader.Verify(pb.VerifyRequest(
                    layout=signed, layout_keys=keys, stored_links=True, plan=plan,
                    artifacts=[store.artifact]))
                assert not answer.passed and answer.failures[0].stage == stage
                assert answer.run_id == "" and leaks(store, answer) == []
                (entry,) = store.events("store-read" if plan else "verify", before)
                assert entry.outcome == "failure" and entry.details["store_read"] is False
                assert "run_id" not in entry.details
    with pytest.raises(grpc.RpcError) as caught:  # a malformed request stays one
        reader.Verify(pb.VerifyRequest(layout=unsigned, layout_keys=owner, stored_links=True,
                                       links=[pb.MetadataFile(path="build.link", content=b"{}")],
                                       artifacts=[store.artifact]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send no links" in str(caught.value.details())
    for keys, signed in ((owner, store.owner_layout()),
                         ([own_key(signer)], own_layout(store, signer))):
        answer = reader.Verify(pb.VerifyRequest(layout=signed, layout_keys=keys,
                                                stored_links=True,
                                                artifacts=[store.artifact]))
        assert answer.run_id == store.run and answer.failures[0].stage == "step-rules"


def test_every_read_of_the_store_is_audited(store: Store) -> None:
    """Finding 8: ListLinks (with and without contents), GetLink and a plan from the store
    wrote no entry. Each now writes one: what was asked, how many files of which runs and
    how many bytes were found, never a file's content; refused reads too."""
    reader = store.call(READER)
    size = len(store.link.signed)

    def read(call: Callable[[], Any]) -> AuditEvent:
        before = len(store.server.audit.events)
        call()
        (entry,) = store.server.audit.events[before:]
        assert entry.action == "store-read" and entry.details["caller"] == READER
        assert store.link.signed.decode() not in json.dumps(dict(entry.details))
        return entry

    listed = read(lambda: reader.ListLinks(pb.ListLinksRequest(run_id=store.run)))
    assert (listed.outcome, listed.details["run_id"], listed.details["count"]) == \
        ("success", store.run, 1)
    assert listed.details["run_ids"] == [store.run]
    assert (listed.details["include_content"], listed.details["content_bytes"]) == (False, 0)
    with_content = read(lambda: reader.ListLinks(pb.ListLinksRequest(
        artifact_digest=f"sha256:{store.digest}", step="build", include_content=True)))
    assert with_content.details["artifact_digest"] == f"sha256:{store.digest}"
    assert with_content.details["step"] == "build"
    assert (with_content.details["content_bytes"], with_content.details["run_ids"]) == \
        (size, [store.run])
    link_id = hashlib.sha256(store.link.signed).hexdigest()
    got = read(lambda: reader.GetLink(pb.GetLinkRequest(id=link_id[:8])))
    assert (got.details["requested_id"], got.details["id"], got.details["run_ids"],
            got.details["content_bytes"]) == (link_id[:8], link_id, [store.run], size)
    for call, code in ((lambda: reader.ListLinks(pb.ListLinksRequest(run_id="has space")),
                        grpc.StatusCode.INVALID_ARGUMENT),
                       (lambda: reader.GetLink(pb.GetLinkRequest(id="0" * 64)),
                        grpc.StatusCode.NOT_FOUND)):
        def refused(call: Callable[[], Any] = call, code: grpc.StatusCode = code) -> None:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == code
        entry = read(refused)
        assert entry.outcome == "failure" and entry.reason

    signed = store.owner_layout()
    ask: dict[str, Any] = {"layout": signed, "layout_keys": [pb.TrustedKey(alias="owner")],
           "stored_links": True, "artifacts": [store.artifact]}
    plan = read(lambda: reader.Verify(pb.VerifyRequest(plan=True, **ask)))
    assert (plan.outcome, plan.details["plan"], plan.details["store_read"]) == \
        ("success", True, True)
    assert (plan.details["run_id"], plan.details["links"]) == (store.run, 1)
    before = len(store.server.audit.events)
    reader.Verify(pb.VerifyRequest(**ask))  # the recorded verdict: its `verify` entry
    (verdict,) = store.server.audit.events[before:]
    assert verdict.action == "verify" and verdict.details["run_id"] == store.run
    assert verdict.details["store_read"] is True


def test_a_read_whose_entry_cannot_be_written_is_refused(store: Store) -> None:
    """Fail-closed, as a signature or a verdict: no entry, no answer (UNAVAILABLE)."""
    reader = store.call(READER)
    audit = store.server.audit
    assert isinstance(audit, RefusingAuditSink)
    signed = store.owner_layout()
    audit.refused.update({"store-read", "verify"})
    calls: dict[str, Callable[[], Any]] = {
        "ListLinks": lambda: reader.ListLinks(pb.ListLinksRequest(run_id=store.run,
                                                                  include_content=True)),
        "GetLink": lambda: reader.GetLink(pb.GetLinkRequest(
            id=hashlib.sha256(store.link.signed).hexdigest())),
        "a plan": lambda: reader.Verify(pb.VerifyRequest(
            layout=signed, layout_keys=[pb.TrustedKey(alias="owner")], stored_links=True,
            plan=True, artifacts=[store.artifact])),
        "a verdict": lambda: reader.Verify(pb.VerifyRequest(
            layout=signed, layout_keys=[pb.TrustedKey(alias="owner")], stored_links=True,
            artifacts=[store.artifact])),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name
        assert "audit log unavailable" in str(caught.value.details()), name
    audit.refused.clear()
    assert reader.ListLinks(pb.ListLinksRequest(run_id=store.run)).links


def _cli(cert: ClientCert, server: AccessServer, work: Path, *args: str
         ) -> subprocess.CompletedProcess[str]:
    (work / "client.pem").write_bytes(cert.cert_pem)
    (work / "client-key.pem").write_bytes(cert.key_pem)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
           "PYTHONPATH": f"{REPO}/core:{REPO}/client", "CUSTODY_SERVER": server.address,
           "CUSTODY_CA": str(server.pki.ca_cert), "CUSTODY_CERT": str(work / "client.pem"),
           "CUSTODY_KEY_FILE": str(work / "client-key.pem")}
    return subprocess.run([sys.executable, "-m", "custody_client", *args], cwd=work,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("identity", "exit_code"), [(READER, 0), (GATE, 4)])
def test_the_documented_gate_needs_a_grant_to_read_the_store(
        store: Store, tmp_path: Path, pki: Pki, identity: str, exit_code: int) -> None:
    """`custody verify --artifact X -l root.layout --layout-key-alias owner`, the gate of
    README and docs/STORE.md, with an inspection so that the CLI plans first: passes for
    an identity granted ListLinks (one `store-read` entry for the plan, one `verify`),
    exit 4 naming the grant for one granted only Verify."""
    (tmp_path / "app.tgz").write_bytes(store.product)
    layout = build_layout("alias:build", inspect=[{
        "_type": "inspection", "name": "look", "run": ["true"],
        "expected_materials": [], "expected_products": []}])
    layout["steps"][0]["expected_products"] = [["ALLOW", SECRET_PATH], ["DISALLOW", "*"]]
    layout["steps"][0]["expected_command"] = SECRET_COMMAND
    (tmp_path / "root.layout").write_bytes(store.call(OWNER).SignLayout(
        pb.SignLayoutRequest(layout=json.dumps(layout).encode(), key_alias="owner")).signed)
    before = len(store.server.audit.events)
    result = _cli(store.cert(identity, pki), store.server, tmp_path, "verify", "-l",
                  "root.layout", "--layout-key-alias", "owner", "--artifact", "app.tgz")
    assert result.returncode == exit_code, result.stdout + result.stderr
    if exit_code == 0:
        assert store.run in result.stdout
        actions = [(e.action, e.details.get("run_id"), e.details.get("plan"))
                   for e in store.server.audit.events[before:]]
        assert actions == [("store-read", store.run, True), ("verify", store.run, None)]
    else:
        assert "needs a grant of ListLinks" in result.stderr
        assert [e.action for e in store.server.audit.events[before:]] == ["authorize"]


def test_the_shipped_policies_keep_the_gate_flow() -> None:
    """The embedded default's policy and the compose deployment's: every identity they
    grant Verify may also read the store, so `custody verify --artifact` keeps working."""
    shipped = {"embedded default": parse_policy(LOCAL_POLICY.encode()),
               "deploy/policy.toml": load_policy(REPO / "deploy" / "policy.toml")}
    for name, shipped_policy in shipped.items():
        verifiers = [i for i in shipped_policy.identities
                     if shipped_policy.decide(AccessRequest(identity=i, rpc="Verify")).allowed]
        assert verifiers, name
        for identity in verifiers:
            assert shipped_policy.decide(AccessRequest(identity=identity,
                                                       rpc="ListLinks")).allowed, name
