"""Request text the database cannot take (review 2026-12-04, finding 5): a NUL or another
control character in a step filter, a digest algorithm, a keyid or a layout's step name,
a digest too long to index. On PostgreSQL (whose text cannot hold a NUL) each one was
reported as a store outage: UNAVAILABLE with the database's message, health NOT_SERVING
for an instant, and for SignLink a signature made and audited, then withheld.

Now each is INVALID_ARGUMENT before any query and before the HSM signs, on SQLite and
PostgreSQL alike; health never changes; nothing is signed or withheld. Free text a link
may carry (paths) is stored, escaped in its column, the file kept exactly. And a value
the database refuses as data past those checks is a request error, not an outage."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from custody_api.v1 import custody_pb2 as pb
from custody_core.envelope import sign_metablock
from custody_core.software_signer import SoftwareSigner
from custody_server.audit_events import MemoryAuditSink
from custody_server.errors import RequestError
from custody_server.store import StoreConfig, open_store

from .postgres_support import PostgresCluster
from .server_support import DIALECTS, StoreServer

pytestmark = pytest.mark.slow
NUL_ALGORITHM = "sha\x00256"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def refused(call: Any) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    details = str(caught.value.details())
    assert "attestation store error" not in details and "PostgreSQL" not in details
    return details


def still_serving(server: StoreServer) -> None:
    assert server.health_changes == [], "the store's health changed"
    assert server.serving()


def run_id() -> str:
    return f"bad:{uuid.uuid4().hex[:12]}"


def test_lookups_with_text_the_store_cannot_hold(server: StoreServer) -> None:
    custody = server.custody
    found = pb.ListLinksRequest
    for request, needle in [
        (found(step="a\x00b"), "U+0000"),
        (found(step="build\u202e"), "U+202E"),
        (found(artifact_digest=f"{NUL_ALGORITHM}:abcd"), "digest algorithm"),
        (found(artifact_digest="sha256:" + "ab" * 2000), "hex"),
        (found(artifact_digest="sha256:abc"), "hex"),  # odd: not a digest's bytes
        (found(run_id="r\x00"), "run_id"),
    ]:
        assert needle in refused(lambda r=request: custody.ListLinks(r)), request
    refused(lambda: custody.GetLink(pb.GetLinkRequest(id="abcdef01\x00")))
    still_serving(server)


def test_sign_link_refuses_a_digest_the_store_cannot_hold_before_signing(
        server: StoreServer) -> None:
    custody, before = server.custody, len(server.audit.events)
    bad = [pb.Artifact(path="a", digest={NUL_ALGORITHM: sha("a")}),
           pb.Artifact(path="a", digest={"sha256": "ab" * 2000})]  # a PostgreSQL index row
    requests = [pb.SignLinkRequest(step_name="build", run_id=run_id(), products=[a])
                for a in bad]
    # a material's algorithm too (not indexed: a long digest there is in-toto's business)
    requests.append(pb.SignLinkRequest(step_name="build", run_id=run_id(), materials=bad[:1]))
    for request in requests:
        refused(lambda r=request: custody.SignLink(r))
    batch = custody.SignLinks(pb.SignLinksRequest(links=[
        pb.SignLinkRequest(step_name="build", run_id=run_id(), products=[artifact])
        for artifact in bad]))
    assert [r.error.code for r in batch.results] == [
        grpc.StatusCode.INVALID_ARGUMENT.value[0]] * 2
    signed = server.events(before, "sign-link")
    assert len(signed) == 5 and all(e.outcome == "failure" for e in signed)
    assert not any("signed_sha256" in e.details for e in signed)  # nothing was signed
    assert server.events(before, "store-link") == []  # nor withheld
    still_serving(server)


def test_paths_the_database_cannot_hold_are_stored_escaped(server: StoreServer) -> None:
    """A path is free text in a link (in-toto takes any string): kept exactly in the
    file, escaped and cut in the product index."""
    custody, run = server.custody, run_id()
    products = {"nul\x00name": sha(f"{run} nul"), "x" * 5000: sha(f"{run} long"),
                "caf\u00e9": sha(f"{run} cafe"), "\u20ac" * 2000: sha(f"{run} wide")}
    signed = custody.SignLink(pb.SignLinkRequest(step_name="build", run_id=run, products=[
        pb.Artifact(path=path, digest={"sha256": digest})
        for path, digest in products.items()]))
    (stored,) = custody.ListLinks(pb.ListLinksRequest(run_id=run, include_content=True)).links
    assert stored.content == signed.signed
    payload = json.loads(signed.signed)["signed"]
    assert set(payload["products"]) == set(products)
    for digest in products.values():
        (by_digest,) = custody.ListLinks(pb.ListLinksRequest(
            artifact_digest=f"sha256:{digest}")).links
        assert by_digest.id == stored.id
    still_serving(server)


def test_add_link_refuses_text_the_store_cannot_hold(server: StoreServer) -> None:
    custody, before = server.custody, len(server.audit.events)
    alice = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    key = pb.TrustedKey(public_key_json=json.dumps(alice.public_key.to_dict()))

    def link(products: dict[str, dict[str, str]]) -> bytes:
        return sign_metablock({
            "_type": "link", "name": "test", "command": [], "materials": {},
            "products": products, "byproducts": {}, "environment": {}}, [alice])

    refused(lambda: custody.AddLink(pb.AddLinkRequest(
        link=link({"a": {NUL_ALGORITHM: sha("a")}}), run_id=run_id(), keys=[key])))
    refused(lambda: custody.AddLink(pb.AddLinkRequest(
        link=link({"a": {"sha256": "ab" * 2000}}), run_id=run_id(), keys=[key])))
    # a given key that claims a keyid with a NUL in it (a link signed under that keyid)
    claimed = {**alice.public_key.to_dict(), "keyid": "k\x00"}
    envelope = json.loads(link({"a": {"sha256": sha("a")}}))
    envelope["signatures"][0]["keyid"] = "k\x00"
    refused(lambda: custody.AddLink(pb.AddLinkRequest(
        link=json.dumps(envelope).encode(), run_id=run_id(),
        keys=[pb.TrustedKey(public_key_json=json.dumps(claimed))])))
    entries = server.events(before, "add-link")
    assert [e.outcome for e in entries] == ["failure"] * 3
    run = run_id()  # a path with a NUL is stored (escaped in the index)
    stored = custody.AddLink(pb.AddLinkRequest(
        link=link({"a\x00b": {"sha256": sha("nul path")}}), run_id=run, keys=[key])).link
    assert stored.run_id == run
    still_serving(server)


def test_a_layout_step_name_the_store_cannot_hold(server: StoreServer) -> None:
    """Verify from the store looks the layout's step names up: one with a NUL is
    refused before the lookup (the layout verifies: signed by the key given)."""
    custody, run = server.custody, run_id()
    keyid = custody.SignLink(pb.SignLinkRequest(step_name="build", run_id=run, products=[
        pb.Artifact(path="app", digest={"sha256": sha(run)})])).keyid
    owner = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    layout = sign_metablock({
        "_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {}, "inspect": [],
        "steps": [{"_type": "step", "name": "bu\x00ild", "threshold": 1, "pubkeys": [keyid],
                   "expected_command": [], "expected_materials": [],
                   "expected_products": []}]}, [owner])
    message = refused(lambda: custody.Verify(pb.VerifyRequest(
        layout=layout, stored_links=True,
        layout_keys=[pb.TrustedKey(public_key_json=json.dumps(owner.public_key.to_dict()))],
        artifacts=[pb.Artifact(path="app", digest={"sha256": sha(run)})])))
    assert "the layout's step name" in message
    still_serving(server)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_value_the_database_refuses_is_a_request_error(
        dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Past the checks, the database's own refusal of a value (psycopg's DataError, an
    index row too long; SQLite's integer overflow, a lone surrogate) is the request's
    fault: RequestError, not StoreUnavailableError, and the connection is used again."""
    if dialect == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        config, mark = StoreConfig(postgres_url=cluster.url), "%s"
        values: list[Any] = ["a\x00b", "a\ud800"]
    else:
        config, mark = StoreConfig(), "?"
        values = [2**63, "a\ud800"]
    store = open_store(config, state_dir=tmp_path, audit=MemoryAuditSink(),
                       clock=lambda: datetime.now(UTC))
    try:
        for value in values:
            with pytest.raises(RequestError, match="cannot take a value of this request"), \
                    store.sql.source.transaction(write=False) as cursor:
                cursor.execute(f"SELECT {mark}", (value,))
        if dialect == "postgresql":
            with pytest.raises(RequestError, match="too long to index"), \
                    store.sql.source.transaction(write=True) as cursor:
                cursor.execute("CREATE TEMPORARY TABLE wide (a TEXT PRIMARY KEY)")
                # random: PostgreSQL cannot compress it under the B-tree's 2704 bytes
                cursor.execute("INSERT INTO wide VALUES (%s)", (os.urandom(3000).hex(),))
        assert store.probe() and store.healthy
    finally:
        store.sql.source.close()


def test_page_tokens_and_times_out_of_range(server: StoreServer) -> None:
    """Finding 9: a page token beyond a 64-bit seq (SQLite's OverflowError) and a time
    outside the Timestamp's range (protobuf's ValueError) were INTERNAL, logged as
    rpc.crash. Both are INVALID_ARGUMENT now; the extremes themselves are taken."""
    custody = server.custody
    seconds = (-62135596800, 253402300799)  # 0001-01-01, 9999-12-31T23:59:59 UTC
    assert "page_token" in refused(lambda: custody.ListLinks(pb.ListLinksRequest(
        page_token="s9999999999999999999")))
    for stamp in (Timestamp(seconds=seconds[1] + 1), Timestamp(seconds=seconds[0] - 1),
                  Timestamp(seconds=0, nanos=-1), Timestamp(seconds=0, nanos=10**9)):
        for name in ("since", "until"):
            message = refused(lambda s=stamp, n=name: custody.ListLinks(
                pb.ListLinksRequest(**{n: s})))
            assert message.startswith(f"{name}: not a time from 0001-01-01"), message
    custody.ListLinks(pb.ListLinksRequest(page_token=f"s{2**63 - 1}"))
    custody.ListLinks(pb.ListLinksRequest(since=Timestamp(seconds=seconds[0]),
                                          until=Timestamp(seconds=seconds[1], nanos=10**9 - 1)))
    still_serving(server)
