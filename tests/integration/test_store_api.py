"""The attestation store through the API, on the session's real server (SQLite): what
SignLink and SignLayout return is what is stored, AddLink checks what comes in, Verify
takes a run's links from the store, and a link that cannot be stored is not returned."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from custody_api.v1 import custody_pb2 as pb
from custody_core.envelope import parse_envelope, sign_metablock
from custody_core.link import build_link
from custody_core.software_signer import SoftwareSigner
from custody_server.store.sql import SqlStore


def run_id() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def link_request(step: str, run: str, product: str, **fields: Any) -> pb.SignLinkRequest:
    return pb.SignLinkRequest(
        step_name=step, command=["make"], run_id=run,
        products=[pb.Artifact(path="dist/app.tgz", digest={"sha256": digest(product)})],
        **fields)


def test_a_signed_link_is_stored_as_returned_with_its_run(custody: Any) -> None:
    run = run_id()
    signed = custody.SignLink(link_request("build", run, "app"))
    environment = parse_envelope(signed.signed).payload["environment"]
    assert environment["custody.run-id"] == run  # the signed link says which run
    (stored,) = custody.ListLinks(pb.ListLinksRequest(run_id=run, include_content=True)).links
    assert stored.content == signed.signed and stored.file_name == signed.file_name
    assert (stored.step, stored.origin, stored.keyid) == ("build", "signed", signed.keyid)
    assert stored.id == hashlib.sha256(signed.signed).hexdigest()
    by_digest = custody.ListLinks(pb.ListLinksRequest(artifact_digest=f"sha256:{digest('app')}"))
    assert stored.id in [link.id for link in by_digest.links]
    got = custody.GetLink(pb.GetLinkRequest(id=stored.id[:8])).link
    assert got.content == signed.signed and not by_digest.links[0].content


@pytest.mark.parametrize(("request_fields", "message"), [
    ({"run_id": "has space"}, "run_id"),
    ({"run_id": "x" * 201}, "run_id"),
    ({"environment": {"custody.run-id": "forged"}}, "custody.run-id"),
])
def test_a_bad_run_id_is_refused_before_signing(custody: Any, service: Any,
                                                request_fields: dict[str, Any],
                                                message: str) -> None:
    fields = {"step_name": "build", "command": ["make"], **request_fields}
    before = len(service.audit.events)
    with pytest.raises(grpc.RpcError) as caught:
        custody.SignLink(pb.SignLinkRequest(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(caught.value.details())
    (entry,) = [e for e in service.audit.events[before:] if e.action == "sign-link"]
    assert entry.outcome == "failure" and "signed_sha256" not in entry.details


def test_signed_layouts_are_stored(custody: Any) -> None:
    layout = {"_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": run_id(),
              "keys": {}, "steps": [], "inspect": []}
    signed = custody.SignLayout(pb.SignLayoutRequest(layout=json.dumps(layout).encode(),
                                                     key_alias="owner"))
    layouts = custody.ListLinks(pb.ListLinksRequest(kind="layout", include_content=True))
    assert signed.signed in [stored.content for stored in layouts.links]


def test_add_link_checks_the_signature(custody: Any) -> None:
    alice = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    link = sign_metablock(build_link(
        name="test", command=["pytest"], materials={},
        products={"report.xml": {"sha256": digest("report")}}, byproducts={},
        environment={}), [alice])
    key = pb.TrustedKey(public_key_json=json.dumps(alice.public_key.to_dict()))
    with pytest.raises(grpc.RpcError) as caught:  # a key nobody vouched for
        custody.AddLink(pb.AddLinkRequest(link=link, run_id="elsewhere"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stored = custody.AddLink(pb.AddLinkRequest(link=link, run_id="elsewhere", keys=[key])).link
    assert (stored.origin, stored.step, stored.run_id) == ("added", "test", "elsewhere")
    with pytest.raises(grpc.RpcError) as caught:
        custody.AddLink(pb.AddLinkRequest(link=link.replace(b"pytest", b"pytestx"),
                                          keys=[key]))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_verify_takes_a_runs_links_from_the_store(custody: Any) -> None:
    layout = {"_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {},
              "steps": [{"_type": "step", "name": "build", "threshold": 1,
                         "pubkeys": ["alias:build"], "expected_command": ["make"],
                         "expected_materials": [],
                         "expected_products": [["CREATE", "dist/app.tgz"],
                                               ["DISALLOW", "*"]]}],
              "inspect": []}
    signed_layout = custody.SignLayout(pb.SignLayoutRequest(
        layout=json.dumps(layout).encode(), key_alias="owner")).signed
    run, product = run_id(), f"app {uuid.uuid4()}"
    custody.SignLink(link_request("build", run, product))

    def verify(**fields: Any) -> Any:
        return custody.Verify(pb.VerifyRequest(
            layout=signed_layout, layout_keys=[pb.TrustedKey(alias="owner")],
            stored_links=True, **fields))

    artifact = pb.Artifact(path="app.tgz", digest={"sha256": digest(product)})
    found = verify(artifacts=[artifact])
    assert found.passed and found.run_id == run
    assert verify(run_id=run).passed
    other = pb.Artifact(path="app.tgz", digest={"sha256": digest("never built")})
    missing = verify(artifacts=[other])
    assert not missing.passed and missing.run_id == ""
    assert missing.failures[0].stage == "artifact"
    assert "no run in the attestation store has app.tgz" in missing.failures[0].reason
    with pytest.raises(grpc.RpcError) as caught:
        verify()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class _Failing:
    """The session server's store, made to fail while the test says so."""

    def __init__(self, store: Any) -> None:
        from store.store_support import FailingSource

        self.store = store
        self.original = store.sql
        self.source = FailingSource(store.sql.source)
        store.sql = SqlStore(self.source)

    def restore(self) -> None:
        self.store.sql = self.original


def _serving(channel: grpc.Channel) -> int:
    health = health_pb2_grpc.HealthStub(channel)
    status: int = health.Check(health_pb2.HealthCheckRequest(service="")).status
    return status


def _wait_for(condition: Any, *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_link_that_cannot_be_stored_is_not_returned(custody: Any, service: Any,
                                                      channel: grpc.Channel) -> None:
    failing = _Failing(service.running.store)
    try:
        failing.source.failing.set()
        run = run_id()
        before = len(service.audit.events)
        with pytest.raises(grpc.RpcError) as caught:
            custody.SignLink(link_request("build", run, "withheld"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "attestation store unavailable: link withheld" in str(caught.value.details())
        batch = custody.SignLinks(pb.SignLinksRequest(links=[
            link_request("build", run, "one"), link_request("test", run, "two")]))
        assert [r.error.code for r in batch.results] == [grpc.StatusCode.UNAVAILABLE.value[0]] * 2
        actions = [(e.action, e.outcome) for e in service.audit.events[before:]]
        assert actions.count(("sign-link", "success")) == 3  # the key was used, audited
        assert actions.count(("store-link", "failure")) == 3  # and the link withheld
        assert _serving(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        failing.source.failing.clear()  # the database is back: no restart, no call needed
        _wait_for(lambda: _serving(channel) == health_pb2.HealthCheckResponse.SERVING)
        custody.SignLink(link_request("build", run, "stored"))
        stored = custody.ListLinks(pb.ListLinksRequest(run_id=run)).links
        assert len(stored) == 1  # only the link that was returned
    finally:
        failing.source.failing.clear()
        failing.restore()
