"""The attacks of the store review (2026-12-04) on the session's real server: links
spliced into another run (through AddLink or a database edit), a given key claiming a
service key's keyid, a stranger's link choosing the run the gate verifies, and the
coverage metric counting a stranger's link. Each is refused or has no effect."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from custody_api.v1 import custody_pb2 as pb
from custody_core.envelope import sign_metablock
from custody_core.link import build_link
from custody_core.software_signer import SoftwareSigner
from custody_server.store import NewRecord, sql

from .store_support import Clock, sqlite_store

# scan and build: no MATCH rule ties them, so each is a final step (a scan, an approval
# or a test step is usually of this kind).
LAYOUT = {
    "_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {}, "inspect": [],
    "steps": [
        {"_type": "step", "name": "scan", "threshold": 1, "pubkeys": ["alias:build"],
         "expected_command": [], "expected_materials": [],
         "expected_products": [["DISALLOW", "*"]]},
        {"_type": "step", "name": "build", "threshold": 1, "pubkeys": ["alias:build"],
         "expected_command": [], "expected_materials": [],
         "expected_products": [["CREATE", "dist/app.tgz"], ["DISALLOW", "*"]]}]}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_run() -> str:
    return f"adv:{uuid.uuid4().hex[:12]}"


def build_request(run: str, product: str, **fields: Any) -> pb.SignLinkRequest:
    return pb.SignLinkRequest(
        step_name="build", run_id=run, **fields,
        products=[pb.Artifact(path="dist/app.tgz", digest={"sha256": sha(product)})])


def stranger_link(signer: SoftwareSigner, step: str, product: str) -> bytes:
    """A link signed elsewhere (no custody.run-id), as in-toto-run would write it."""
    return sign_metablock(build_link(
        name=step, command=[], materials={},
        products={"dist/app.tgz": {"sha256": sha(product)}}, byproducts={},
        environment={}), [signer])


def given(key: dict[str, Any]) -> pb.TrustedKey:
    return pb.TrustedKey(public_key_json=json.dumps(key))


class Gate:
    """The release gate: the signed layout, and Verify with links from the store."""

    def __init__(self, custody: Any) -> None:
        self.custody = custody
        self.layout = custody.SignLayout(pb.SignLayoutRequest(
            layout=json.dumps(LAYOUT).encode(), key_alias="owner")).signed

    def verify(self, product: str = "", **fields: Any) -> Any:
        artifacts = ([pb.Artifact(path="app.tgz", digest={"sha256": sha(product)})]
                     if product else [])
        return self.custody.Verify(pb.VerifyRequest(
            layout=self.layout, layout_keys=[pb.TrustedKey(alias="owner")],
            stored_links=True, artifacts=artifacts, **fields))


@pytest.fixture
def gate(custody: Any) -> Gate:
    return Gate(custody)


def refused(call: Any, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    return str(caught.value.details())


def add_link_entries(service: Any, since: int) -> list[Any]:
    return [e for e in service.audit.events[since:] if e.action == "add-link"]


def test_a_link_of_another_run_cannot_be_added_to_a_run(custody: Any, service: Any,
                                                        gate: Gate) -> None:
    """Finding 1: r2's scan failed, so r2 has no scan link; r1's scan link, filed under
    r2 (as it is, or re-serialized: the signature covers only the canonical `signed`),
    would have made r2's release pass."""
    r1, r2 = new_run(), new_run()
    scan1 = custody.SignLink(pb.SignLinkRequest(step_name="scan", run_id=r1)).signed
    custody.SignLink(build_request(r1, f"app1 {r1}"))
    custody.SignLink(build_request(r2, f"app2 {r2}"))
    before = gate.verify(f"app2 {r2}")
    assert before.run_id == r2 and not before.passed
    assert "step 'scan' needs 1 link" in before.failures[0].reason
    events = len(service.audit.events)
    respaced = json.dumps(json.loads(scan1), indent=3).encode()
    for content in (scan1, respaced):
        message = refused(lambda c=content: custody.AddLink(pb.AddLinkRequest(
            link=c, run_id=r2)))
        assert "is not the run the link names in its signed environment" in message
        assert repr(r1) in message
    entries = add_link_entries(service, events)
    assert [e.outcome for e in entries] == ["failure", "failure"]
    assert all(e.details["run_id"] == r2 for e in entries)
    assert [link.step for link in custody.ListLinks(pb.ListLinksRequest(run_id=r2)).links
            ] == ["build"]  # nothing stored
    after = gate.verify(f"app2 {r2}")
    assert after.run_id == r2 and not after.passed
    assert "step 'scan' needs 1 link" in after.failures[0].reason
    # Under its own run, or with no run given, it is filed under the run it names.
    again = custody.AddLink(pb.AddLinkRequest(link=scan1, run_id=r1)).link
    assert again.run_id == r1 and again.origin == "signed"  # the same file: stored once
    moved = custody.AddLink(pb.AddLinkRequest(link=respaced)).link
    assert (moved.run_id, moved.origin, moved.step) == (r1, "added", "scan")


def test_a_statement_names_its_run_too(custody: Any) -> None:
    r1, r2 = new_run(), new_run()
    statement = custody.SignLink(pb.SignLinkRequest(step_name="scan", run_id=r1,
                                                    envelope=pb.ENVELOPE_STATEMENT)).signed
    respaced = json.dumps(json.loads(statement), indent=3).encode()
    refused(lambda: custody.AddLink(pb.AddLinkRequest(link=respaced, run_id=r2)))
    assert custody.AddLink(pb.AddLinkRequest(link=respaced, run_id=r1)).link.run_id == r1


def test_a_database_edit_of_the_run_column_splices_nothing(custody: Any, service: Any,
                                                           gate: Gate) -> None:
    """Finding 1, at the database: the run column of r1's scan link set to r2. The gate
    reads the run the link names in its signed environment, and passes it over."""
    r1, r2 = new_run(), new_run()
    scan1 = custody.SignLink(pb.SignLinkRequest(step_name="scan", run_id=r1)).signed
    custody.SignLink(build_request(r2, f"app2 {r2}"))
    with service.running.store.sql.source.transaction(write=True) as cursor:
        cursor.execute("UPDATE attestations SET run_id = ? WHERE id = ?",
                       (r2, hashlib.sha256(scan1).hexdigest()))
        assert cursor.rowcount == 1
    listed = custody.ListLinks(pb.ListLinksRequest(run_id=r2)).links
    assert sorted(link.step for link in listed) == ["build", "scan"]  # the edit is there
    verdict = gate.verify(f"app2 {r2}")
    assert verdict.run_id == r2 and not verdict.passed
    assert "step 'scan' needs 1 link" in verdict.failures[0].reason
    assert not gate.verify(run_id=r2).passed


def test_the_same_file_belongs_to_one_run(custody: Any, service: Any) -> None:
    """Finding 11: a file stored already is not answered with another run's record."""
    alice = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    key = given(alice.public_key.to_dict())
    link = stranger_link(alice, "test", f"report {uuid.uuid4()}")
    first, other = new_run(), new_run()
    stored = custody.AddLink(pb.AddLinkRequest(link=link, run_id=first, keys=[key])).link
    assert stored.run_id == first
    again = custody.AddLink(pb.AddLinkRequest(link=link, run_id=first, keys=[key])).link
    assert again.id == stored.id and again.run_id == first  # idempotent
    events = len(service.audit.events)
    message = refused(lambda: custody.AddLink(pb.AddLinkRequest(link=link, run_id=other,
                                                                keys=[key])))
    assert f"stored already, under run {first!r}" in message and repr(other) in message
    assert [e.outcome for e in add_link_entries(service, events)] == ["failure"]
    assert custody.ListLinks(pb.ListLinksRequest(run_id=other)).links == []
    refused(lambda: custody.AddLink(pb.AddLinkRequest(link=link, keys=[key])))


def test_a_given_key_cannot_claim_a_service_keyid(custody: Any, service: Any,
                                                  gate: Gate) -> None:
    """Finding 2: mallory's key given under the build key's keyid, her link signed with
    it under that keyid, would be filed as build.<K8>.link, where the layout looks for
    the service's link, and displace it (newest wins)."""
    run, product = new_run(), f"app {uuid.uuid4()}"
    service_keyid = custody.SignLink(build_request(run, product)).keyid
    assert gate.verify(run_id=run).passed is False  # no scan yet
    custody.SignLink(pb.SignLinkRequest(step_name="scan", run_id=run))
    assert gate.verify(product).passed
    mallory = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    forged = json.loads(stranger_link(mallory, "build", product))
    forged["signatures"][0]["keyid"] = service_keyid
    forged_link = json.dumps(forged).encode()
    events = len(service.audit.events)
    for claimed in (service_keyid, "ff" * 32):
        key = given({**mallory.public_key.to_dict(), "keyid": claimed})
        message = refused(lambda k=key: custody.AddLink(pb.AddLinkRequest(
            link=forged_link, run_id=run, keys=[k])))
        assert repr(claimed) in message
    assert [e.outcome for e in add_link_entries(service, events)] == ["failure"] * 2
    assert [link.origin for link in custody.ListLinks(pb.ListLinksRequest(run_id=run)).links
            ] == ["signed", "signed"]
    assert gate.verify(product).passed
    # The build key itself, given as a key dict under its own keyid, is taken as a key
    # (the link then still needs its signature).
    build = service.keys.get("build").active.public_key
    assert build.keyid == service_keyid
    other = new_run()
    link = stranger_link(mallory, "test", "x")  # a stranger's link: still refused
    refused(lambda: custody.AddLink(pb.AddLinkRequest(
        link=link, run_id=other, keys=[given(build.to_dict())])),
        grpc.StatusCode.FAILED_PRECONDITION)


def test_a_strangers_link_with_the_product_does_not_choose_the_run(
        custody: Any, gate: Gate) -> None:
    """Finding 3: a newer link of the final step with the artifact's digest, signed by a
    key of the caller's own and filed under a run of the caller's choosing, made the gate
    verify that run (and fail) instead of the real one."""
    run, product = new_run(), f"app {uuid.uuid4()}"
    custody.SignLink(pb.SignLinkRequest(step_name="scan", run_id=run))
    custody.SignLink(build_request(run, product))
    mallory = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    key = given(mallory.public_key.to_dict())
    planted = custody.AddLink(pb.AddLinkRequest(link=stranger_link(mallory, "build", product),
                                                run_id=f"evil:{run}", keys=[key])).link
    assert planted.run_id == f"evil:{run}"  # her own key, her own run: it is kept
    verdict = gate.verify(product)
    assert verdict.run_id == run and verdict.passed
    only_hers = f"only hers {uuid.uuid4()}"  # her link alone names no run for the gate
    custody.AddLink(pb.AddLinkRequest(link=stranger_link(mallory, "build", only_hers),
                                      run_id=new_run(), keys=[key]))
    missing = gate.verify(only_hers)
    assert missing.run_id == "" and not missing.passed
    assert "no run in the attestation store has app.tgz" in missing.failures[0].reason


def test_a_strangers_link_is_no_retained_link(custody: Any, service: Any,
                                              gate: Gate) -> None:
    """Finding 12: audit coverage counted an artifact as retained when any stored link of
    a run had it as a product, whoever signed it and whatever its step."""
    mallory = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    hers, ours = f"hers {uuid.uuid4()}", f"ours {uuid.uuid4()}"
    custody.AddLink(pb.AddLinkRequest(link=stranger_link(mallory, "build", hers),
                                      run_id=new_run(), keys=[given(
                                          mallory.public_key.to_dict())]))
    run = new_run()
    custody.SignLink(build_request(run, ours))
    custody.SignLink(pb.SignLinkRequest(  # a step the layout does not have, by a listed key
        step_name="notes", run_id=run,
        products=[pb.Artifact(path="dist/app.tgz", digest={"sha256": sha(hers)})]))
    events = len(service.audit.events)
    gate.verify(hers)
    gate.verify(ours)
    retained = [e.details.get("artifacts_retained") for e in service.audit.events[events:]
                if e.action == "verify"]
    assert retained == [0, 1]


def test_a_flood_of_other_links_with_the_digest_hides_no_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run is found among the links of its final step by listed keys, however many
    links of other steps, other keys or no run share the digest (read a page at a time:
    three links here)."""
    monkeypatch.setattr(sql, "_PAGE", 3)
    clock = Clock()
    store = sqlite_store(tmp_path, clock=clock)
    app, docs = sha("app"), sha("docs")
    listed, stranger = "ab" * 32, "cd" * 32

    def link(step: str, run: str, keyid: str, products: dict[str, str]) -> NewRecord:
        return NewRecord.link(content=uuid.uuid4().bytes, step=step, keyid=keyid,
                              file_name=f"{step}.{keyid[:8]}.link", run_id=run,
                              products={p: {"sha256": d} for p, d in products.items()},
                              origin="added", caller="x")

    store.keep_signed([(link("package", "real", listed, {"app.tgz": app}), "x"),
                       (link("package", "real", listed.upper(), {"docs.tgz": docs}), "x")])
    for number in range(10):
        clock.advance(timedelta(seconds=1))
        store.keep_signed([(link("package", f"evil-{number}", stranger, {"a": app}), "x"),
                           (link("build", f"other-{number}", listed, {"a": app}), "x"),
                           (link("package", "", listed, {"a": app, "d": docs}), "x")])
    package = {"package": [listed]}
    assert store.find_runs([f"sha256:{app}"], package) == ["real"]
    assert store.find_runs([f"sha256:{app}", f"sha256:{docs}"], package) == ["real"]
    assert store.find_runs([f"sha256:{app}"], {"package": [stranger]}) == ["evil-9"]
    assert store.has_product(f"sha256:{docs}", package)
    assert not store.has_product(f"sha256:{docs}", {"build": [listed]})
