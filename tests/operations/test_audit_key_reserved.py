"""Defence in depth: SignLink and SignLayout never use the audit key, whatever the policy
file grants: PERMISSION_DENIED with a precise message, and the denial audited."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from policy_support import grant, policy

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server.app import build_server
from custody_server.audit_events import MemoryAuditSink
from custody_server.config import (
    AuditConfig,
    PolicyConfig,
    ServerConfig,
    TlsConfig,
    config_from_dict,
)
from custody_server.errors import ConfigError
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.policy import AccessRequest, PolicyStore, parse_policy
from custody_server.policy.rpcs import KeyScope

from .test_overlap_gauge import OPEN_POLICY

CI = "spiffe://ci.example/agent"
EXPLICIT_POLICY = policy(grant([CI], ["SignLink", "SignLayout", "RotateKey"],
                               link_keys=["audit", "build"], steps=["*"],
                               layout_keys=["audit"], admin_keys=["audit"]))
WHY = "the audit trail's checkpoints (audit.key_alias)"
LAYOUT = json.dumps({"_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "",
                     "keys": {}, "steps": [], "inspect": []}).encode()


def _request(rpc: str, scope: KeyScope, alias: str) -> AccessRequest:
    return AccessRequest(identity=CI, rpc=rpc, key_scope=scope, key_alias=alias,
                         step="build" if rpc == "SignLink" else None)


def _refusal(rpc: str, alias: str = "audit") -> str:
    return (f"key {alias!r} is reserved for {WHY}: {rpc} may never use it, "
            "whatever the policy grants")


def test_policy_refuses_reserved_signing_keys_even_when_granted_by_name() -> None:
    policy = parse_policy(EXPLICIT_POLICY.encode())
    assert policy.decide(_request("SignLink", KeyScope.LINK, "audit")).allowed  # unprotected
    store = PolicyStore(policy, reserved_signing_keys={"audit": WHY})
    current = store.current
    for rpc, scope in (("SignLink", KeyScope.LINK), ("SignLayout", KeyScope.LAYOUT)):
        decision = current.decide(_request(rpc, scope, "audit"))
        assert (decision.allowed, decision.known) == (False, True)
        assert decision.reason == _refusal(rpc)
    assert current.decide(_request("SignLink", KeyScope.LINK, "build")).allowed
    # Key administration of the audit key (rotation) stays with the policy.
    assert current.decide(_request("RotateKey", KeyScope.ADMIN, "audit")).allowed
    # An identity no grant names is still UNAUTHENTICATED, not "reserved".
    stranger = AccessRequest(identity="nobody", rpc="SignLink", key_scope=KeyScope.LINK,
                             key_alias="audit", step="build")
    assert not current.decide(stranger).known


def test_reservation_survives_reload_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(OPEN_POLICY)
    store = PolicyStore.from_file(path, reserved_signing_keys={"audit": WHY})
    anonymous_link = AccessRequest(identity="anonymous", rpc="SignLink",
                                   key_scope=KeyScope.LINK, key_alias="audit", step="x")
    assert not store.current.decide(anonymous_link).allowed
    path.write_text(OPEN_POLICY.replace('link_keys = ["*"]', 'link_keys = ["audit"]'))
    outcome = store.reload()
    assert outcome.loaded
    assert outcome.fingerprint == store.current.fingerprint  # the file's, unchanged
    assert store.current.decide(anonymous_link).reason == _refusal("SignLink")
    store.replace(parse_policy(OPEN_POLICY.encode()))
    assert store.current.decide(anonymous_link).reason == _refusal("SignLink")


def _denials(audit: MemoryAuditSink, alias: str) -> list[Any]:
    return [e for e in audit.events if e.action == "authorize" and e.outcome == "failure"
            and e.details.get("key_alias") == alias]


def test_the_running_server_refuses_and_audits(service: Any) -> None:
    """The session's server: mTLS, and a policy granting every key to its client."""
    service.keys.ensure("audit", KeyAlgorithm.ECDSA_P256)  # the key exists: still refused
    step = f"reserved-{uuid.uuid4().hex[:8]}"
    before = len(_denials(service.audit, "audit"))
    with service.open_channel() as channel:
        custody: Any = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as link:
            custody.SignLink(pb.SignLinkRequest(step_name=step, key_alias="audit"), timeout=10)
        with pytest.raises(grpc.RpcError) as layout:
            custody.SignLayout(pb.SignLayoutRequest(layout=LAYOUT, key_alias="audit"),
                               timeout=10)
        signed = custody.SignLink(pb.SignLinkRequest(step_name=step, key_alias="build"),
                                  timeout=10)
    for refused, rpc in ((link, "SignLink"), (layout, "SignLayout")):
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.details() == f"permission denied: {_refusal(rpc)}"
    assert signed.key_alias == "build"
    denials = _denials(service.audit, "audit")[before:]
    assert [(e.details["rpc"], e.reason) for e in denials] == [
        ("SignLink", f"permission denied: {_refusal('SignLink')}"),
        ("SignLayout", f"permission denied: {_refusal('SignLayout')}"),
    ]
    assert denials[0].details["step"] == step
    assert denials[0].details["caller"] == service.tls.identity


def test_a_configured_audit_alias_is_the_one_refused(keystore: Pkcs11KeyStore,
                                                     tmp_path: Path) -> None:
    alias = f"audit-{uuid.uuid4().hex[:8]}"
    keys = KeyRing(keystore)
    for name in ("build", "owner", alias):
        keys.ensure(name, KeyAlgorithm.ECDSA_P256)
    (tmp_path / "policy.toml").write_text(OPEN_POLICY)
    audit = MemoryAuditSink()
    running = build_server(config=ServerConfig(
        listen="127.0.0.1:0", state_dir=tmp_path, tls=TlsConfig(insecure=True),
        policy=PolicyConfig(file=tmp_path / "policy.toml"),
        audit=AuditConfig(key_alias=alias)), keys=keys, audit=audit)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            custody: Any = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as refused:
                custody.SignLayout(pb.SignLayoutRequest(layout=LAYOUT, key_alias=alias),
                                   timeout=10)
            assert custody.SignLayout(pb.SignLayoutRequest(layout=LAYOUT, key_alias="owner"),
                                      timeout=10).key_alias == "owner"
    finally:
        running.stop(grace=1).wait()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == f"permission denied: {_refusal('SignLayout', alias)}"
    assert len(_denials(audit, alias)) == 1


@pytest.mark.parametrize("toml", [
    '[audit]\nkey_alias = "build"',
    'default_layout_key = "audit"',
])
def test_a_default_signing_key_cannot_be_the_audit_key(tmp_path: Path, toml: str) -> None:
    import tomllib

    with pytest.raises(ConfigError, match="is the audit key"):
        config_from_dict(tomllib.loads(toml), base=tmp_path)
    with pytest.raises(ConfigError, match="default_link_key 'audit' is the audit key"):
        ServerConfig(default_link_key="audit")
