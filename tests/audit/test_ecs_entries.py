"""Audit entries are valid ECS 8.11: the check itself, every action's category and type, and
a server session's trail read back line by line. (tests/conftest.py runs the same check on
every entry the whole suite makes.)"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecs_support import expected_types, problems, schema
from google.protobuf.duration_pb2 import Duration
from policy_support import grant, policy

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server import __version__
from custody_server.app import build_server
from custody_server.audit import AuditSettings, open_audit_trail
from custody_server.audit.entry import CATEGORIZATION, HOST_NAME, categorization, ecs_entry
from custody_server.audit_events import AuditEvent
from custody_server.config import PolicyConfig, ServerConfig, TlsConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.lifecycle.settings import LifecycleSettings

from .audit_support import custody_stub, link_request

# Every action the server records (docs/AUDIT.md, event.action).
ACTIONS = ("sign-link", "sign-layout", "verify", "key-create", "key-rotate", "key-retire",
           "key-prepare", "key-destroy", "authenticate", "authorize", "decode-request",
           "request-limit", "rate-limit", "policy-reload", "crl-reload", "server-start",
           "server-stop", "audit-open", "audit-recovered", "audit-checkpoint",
           "audit-new-segment", "store-link", "add-link", "store-retention", "store-read")


def entry(action: str, outcome: str = "success", category: str = "api") -> dict[str, Any]:
    event = AuditEvent(action=action, category=category, outcome=outcome,
                       details={"caller": "spiffe://ci/agent", "key_alias": "build",
                                "key_version": 2, "step": "build"})
    return ecs_entry(event, event_id="0" * 32,
                     request={"peer": "ipv4:10.0.0.7:5000", "request_id": "ab" * 16})


def test_the_schema_is_ecs_8_11() -> None:
    assert schema()["ecs_version"] == "8.11.0"
    assert expected_types()["authentication"] == {"start", "end", "info"}
    assert "custody" not in schema()["top_level_names"]


@pytest.mark.parametrize(("category", "event_type"), [
    ("process", "creation"), ("authentication", "denied"), ("iam", "denied"),
    ("file", "start")])
def test_the_check_refuses_the_pairs_ecs_does_not_expect(category: str, event_type: str
                                                         ) -> None:
    """The pairs entries used to carry (issue 17)."""
    bad = entry("sign-link")
    bad["event"].update(category=[category], type=[event_type])
    assert problems(bad) == [f"event.type {event_type!r} is not expected with event.category "
                             f"{category!r} (ECS expects "
                             f"{sorted(expected_types()[category])})"]


def test_the_check_refuses_wrong_types_unknown_fields_and_missing_ones() -> None:
    good = entry("sign-link")
    assert problems(good) == []
    cases = {
        "event.sequence is a string": ("event", "sequence", "7"),
        "event.category not an array": ("event", "category", "api"),
        "an outcome ECS does not know": ("event", "outcome", "partial"),
        "source.ip not an address": ("source", "ip", "not-an-ip"),
        "a field outside ECS and custody.*": ("extra", "field", "x"),
    }
    for why, (top, name, value) in cases.items():
        bad = copy.deepcopy(good)
        bad.setdefault(top, {})[name] = value
        assert problems(bad), why
    missing = copy.deepcopy(good)
    del missing["message"]
    assert problems(missing) == ["message: missing"]
    assert "service.node.name: missing" in problems(good, written=True)


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_has_a_category_and_type_ecs_expects(action: str) -> None:
    for outcome in ("success", "failure"):
        category, event_type = categorization(AuditEvent(action=action, category="process",
                                                         outcome=outcome))
        assert event_type in expected_types()[category], (action, outcome)
        assert problems(entry(action, outcome)) == []


def test_the_table_names_every_action_and_an_unknown_one_stays_valid() -> None:
    assert set(CATEGORIZATION) == set(ACTIONS)
    assert categorization(AuditEvent(action="new-thing", category="iam",
                                     outcome="success")) == ("iam", "info")
    assert categorization(AuditEvent(action="new-thing", category="threat",
                                     outcome="success")) == ("api", "info")


def test_an_entry_says_what_happened_in_one_line() -> None:
    made = entry("sign-link")
    assert made["message"] == "sign-link success: key build v2, step build, by spiffe://ci/agent"
    assert made["host"] == {"name": HOST_NAME}
    assert made["service"] == {"name": "custody", "version": __version__}
    assert made["event"]["kind"] == "event"
    refused = ecs_entry(AuditEvent(action="authorize", category="iam", outcome="failure",
                                   reason="permission denied: key 'owner'",
                                   details={"caller": "spiffe://ci/agent"}),
                        event_id="1" * 32, request={})
    assert refused["event"]["category"] == ["api"] and refused["event"]["type"] == ["denied"]
    assert refused["message"] == ("authorize failure: by spiffe://ci/agent "
                                  "(permission denied: key 'owner')")


def test_a_server_session_writes_valid_ecs_for_every_kind_of_entry(
        keystore: Pkcs11KeyStore, tmp_path: Path) -> None:
    """Signatures, verdicts, key changes, refusals, a reload, checkpoints, start and stop:
    every line of the trail as written, with its chain fields and node."""
    keys = KeyRing(keystore)
    for alias in ("build", "owner"):
        if not keys.exists(alias):
            keys.create(alias, KeyAlgorithm.ECDSA_P256)
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy(grant(["anonymous"], ["*"], link_keys=["build"], steps=["*"],
                                        layout_keys=["owner"], admin_keys=["*"])))
    node = f"test-{uuid.uuid4().hex[:12]}"
    trail = open_audit_trail(AuditSettings(directory=tmp_path / "audit"), keys=keys,
                             store=keystore, node=node)
    running = build_server(
        config=ServerConfig(listen="127.0.0.1:0", state_dir=tmp_path,
                            tls=TlsConfig(insecure=True), policy=PolicyConfig(file=policy_file),
                            lifecycle=LifecycleSettings(scheduler=False)),
        keys=keys, audit=trail)
    alias = f"ecs-{uuid.uuid4().hex[:8]}"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            custody = custody_stub(channel)
            raw_sign_link = channel.unary_unary(
                "/custody.v1.Custody/SignLink", request_serializer=bytes,
                response_deserializer=pb.SignLinkResponse.FromString)
            admin: Any = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
            custody.SignLink(link_request(1))
            layout = custody.SignLayout(pb.SignLayoutRequest(layout=json.dumps({
                "_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "",
                "keys": {}, "steps": [{"_type": "step", "name": "build", "threshold": 1,
                                       "pubkeys": ["alias:build"], "expected_command": [],
                                       "expected_materials": [], "expected_products": []}],
                "inspect": []}).encode(), key_alias="owner")).signed
            custody.Verify(pb.VerifyRequest(layout=layout,
                                            layout_keys=[pb.TrustedKey(alias="owner")]))
            refusals: list[Callable[[], Any]] = [  # authorize, a verify error, bad bytes
                lambda: custody.SignLink(pb.SignLinkRequest(step_name="s", key_alias="owner")),
                lambda: custody.Verify(pb.VerifyRequest(
                    layout=b"{}", layout_keys=[pb.TrustedKey(alias="owner")])),
                lambda: raw_sign_link(b"\xff\xff"),
            ]
            for refused in refusals:
                with pytest.raises(grpc.RpcError):
                    refused()
            admin.CreateKey(pb.CreateKeyRequest(alias=alias))
            admin.RotateKey(pb.RotateKeyRequest(alias=alias, overlap=Duration(seconds=60)))
            admin.RetireKey(pb.RetireKeyRequest(alias=alias, version=1))
        assert running.access is not None
        running.access.reload_policy()
    finally:
        running.stop(grace=1).wait()
        trail.close()
    written = [json.loads(line) for line in (tmp_path / "audit" / "audit.log").read_bytes()
               .splitlines()]
    found = {(e["event"]["action"], e["event"]["outcome"]): problems(e, written=True)
             for e in written}
    assert {key: found_ for key, found_ in found.items() if found_} == {}
    assert {action for action, _ in found} >= {
        "audit-open", "sign-link", "sign-layout", "verify", "authorize", "decode-request",
        "key-create", "key-rotate", "key-retire", "policy-reload", "audit-checkpoint"}
    assert all(e["service"]["node"]["name"] == node for e in written)
    assert all(e["service"]["version"] == __version__ for e in written)
