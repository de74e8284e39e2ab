"""The SLIs that need the attestation store, as metrics of a real server: the layout's
steps with and without a link in what was verified, and the artifacts a gate asked about,
by verdict, with and without their links retained."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from policy_support import open_policy

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server.app import build_server
from custody_server.audit_events import MemoryAuditSink
from custody_server.config import PolicyConfig, ServerConfig, TlsConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.lifecycle.settings import LifecycleSettings
from custody_server.metrics import ServiceMetrics

LAYOUT = {
    "_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {}, "inspect": [],
    "steps": [
        {"_type": "step", "name": "build", "threshold": 1, "pubkeys": ["alias:build"],
         "expected_command": [], "expected_materials": [],
         "expected_products": [["CREATE", "app"], ["DISALLOW", "*"]]},
        {"_type": "step", "name": "package", "threshold": 1, "pubkeys": ["alias:build"],
         "expected_command": [],
         "expected_materials": [["MATCH", "app", "WITH", "PRODUCTS", "FROM", "build"],
                                ["DISALLOW", "*"]],
         "expected_products": [["CREATE", "app.tgz"], ["DISALLOW", "*"]]}]}


def digest(text: str) -> dict[str, str]:
    return {"sha256": hashlib.sha256(text.encode()).hexdigest()}


@pytest.fixture
def server(keystore: Pkcs11KeyStore, tmp_path: Path) -> Iterator[tuple[Any, ServiceMetrics]]:
    keys = KeyRing(keystore)
    for alias in ("build", "owner"):
        if not keys.exists(alias):
            keys.create(alias, KeyAlgorithm.ECDSA_P256)
    (tmp_path / "policy.toml").write_text(open_policy("anonymous"))
    config = ServerConfig(listen="127.0.0.1:0", state_dir=tmp_path,
                          tls=TlsConfig(insecure=True),
                          policy=PolicyConfig(file=tmp_path / "policy.toml"),
                          lifecycle=LifecycleSettings(scheduler=False))
    metrics = ServiceMetrics(process=False)
    running = build_server(config=config, keys=keys, audit=MemoryAuditSink(), metrics=metrics)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield custody_pb2_grpc.CustodyStub(channel), metrics  # type: ignore[no-untyped-call]
    finally:
        channel.close()
        running.stop(grace=1).wait()


def counts(metrics: ServiceMetrics) -> dict[str, float]:
    values = {f"steps {links}": metrics.sample("custody_verified_steps_total", links=links)
              for links in ("present", "missing")}
    for result in ("passed", "failed"):
        for links in ("retained", "missing"):
            values[f"{result} {links}"] = metrics.sample(
                "custody_verified_artifacts_total", result=result, links=links)
    return {name: value or 0.0 for name, value in values.items()}


def test_steps_and_artifacts_are_counted_at_each_recorded_verdict(
        server: tuple[Any, ServiceMetrics]) -> None:
    custody, metrics = server
    assert set(counts(metrics).values()) == {0.0}  # every series from zero
    assert metrics.sample("custody_store_available") == 1
    layout = custody.SignLayout(pb.SignLayoutRequest(layout=json.dumps(LAYOUT).encode(),
                                                     key_alias="owner")).signed

    def sign(step: str, run: str, products: dict[str, str], materials: dict[str, str]
             ) -> None:
        custody.SignLink(pb.SignLinkRequest(
            step_name=step, run_id=run,
            materials=[pb.Artifact(path=p, digest=digest(d)) for p, d in materials.items()],
            products=[pb.Artifact(path=p, digest=digest(d)) for p, d in products.items()]))

    def verify(artifact: str, **fields: Any) -> Any:
        return custody.Verify(pb.VerifyRequest(
            layout=layout, layout_keys=[pb.TrustedKey(alias="owner")],
            artifacts=[pb.Artifact(path="app.tgz", digest=digest(artifact))], **fields))

    sign("build", "whole", {"app": "app 1"}, {})
    sign("package", "whole", {"app.tgz": "tgz 1"}, {"app": "app 1"})
    assert verify("tgz 1", stored_links=True, plan=True).passed  # a plan: not counted
    assert counts(metrics)["steps present"] == 0
    assert verify("tgz 1", stored_links=True).passed
    assert counts(metrics) == {"steps present": 2, "steps missing": 0, "passed retained": 1,
                               "passed missing": 0, "failed retained": 0,
                               "failed missing": 0}
    sign("package", "partial", {"app.tgz": "tgz 2"}, {"app": "app 2"})  # build not recorded
    assert not verify("tgz 2", stored_links=True).passed
    assert not verify("never built").passed  # no links sent, none stored
    assert counts(metrics) == {"steps present": 3, "steps missing": 3, "passed retained": 1,
                               "passed missing": 0, "failed retained": 1,
                               "failed missing": 1}
