"""Memory the store's reads may take (review 2026-12-04, finding 6): ListLinks with
include_content built a whole page of files (1000 of up to 64 MB) before gRPC refused to
send it; a stored-links Verify read every file of the run (up to 10,000); AddLink took
links as large as a gRPC message. Now a page of files stops at its budget (16 MiB, or
half of limits.max_message_bytes when that is less) with a page token, a verification
reads the files it can use (the names its layout looks for, a few others), and AddLink
refuses a file over store.max_link_bytes before parsing it. SQLite and PostgreSQL, through
the API where the limit is the real one."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import grpc
import pytest

from custody_api.v1 import custody_pb2 as pb
from custody_core.envelope import sign_metablock
from custody_core.link import link_file_name
from custody_core.software_signer import SoftwareSigner
from custody_server.config import Limits
from custody_server.errors import ConfigError
from custody_server.keystore import Pkcs11KeyStore
from custody_server.store import AttestationStore, LinkQuery, NewRecord, StoreConfig
from custody_server.store import sql as store_sql
from custody_server.store.settings import DEFAULT_MAX_LINK_BYTES, store_config_from_table

from .server_support import STORE_NOW, StoreServer, start_store_server

pytestmark = pytest.mark.slow
MIB = 1024 * 1024


def big_link(signer: SoftwareSigner, step: str, size: int, run: str) -> bytes:
    """A link signed elsewhere of about `size` bytes (its stdout), filed under `run`."""
    return sign_metablock({
        "_type": "link", "name": step, "command": [], "materials": {}, "products": {},
        "byproducts": {"stdout": f"{run} " + "x" * size}, "environment": {}}, [signer])


def given(signer: SoftwareSigner) -> pb.TrustedKey:
    return pb.TrustedKey(public_key_json=json.dumps(signer.public_key.to_dict()))


def test_a_page_of_files_stops_at_its_budget(server: StoreServer) -> None:
    """Three files of 7 MiB: the first page holds two (14 MiB; a third would pass the 16
    MiB budget) and a token; the next the third. Without contents, one page holds all."""
    custody, run = server.custody, f"big:{uuid.uuid4().hex[:12]}"
    alice = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    added = [big_link(alice, f"step{n}", 7 * MIB, run) for n in range(3)]
    for content in added:
        custody.AddLink(pb.AddLinkRequest(link=content, run_id=run, keys=[given(alice)]))
    newest_first = list(reversed(added))
    first = custody.ListLinks(pb.ListLinksRequest(run_id=run, include_content=True))
    assert [link.content for link in first.links] == newest_first[:2]
    assert first.next_page_token
    rest = custody.ListLinks(pb.ListLinksRequest(run_id=run, include_content=True,
                                                 page_token=first.next_page_token))
    assert [link.content for link in rest.links] == newest_first[2:]
    assert not rest.next_page_token
    names = custody.ListLinks(pb.ListLinksRequest(run_id=run))
    assert len(names.links) == 3 and not names.next_page_token
    assert all(not link.content for link in names.links)


def test_a_page_of_files_fits_a_smaller_reply_limit(keystore: Pkcs11KeyStore,
                                                   tmp_path: Path) -> None:
    """With limits.max_message_bytes at 8 MiB, three files of 3 MiB came as one page of 9
    MiB that gRPC refused to send (RESOURCE_EXHAUSTED); the page budget is now half the
    reply limit: a page of one file each, and every file comes back."""
    server = start_store_server(keystore, tmp_path, StoreConfig(), dialect="sqlite",
                                limits=Limits(max_message_bytes=8 * MIB))
    try:
        custody, run = server.custody, f"small:{uuid.uuid4().hex[:12]}"
        alice = SoftwareSigner.generate("ecdsa-sha2-nistp256")
        added = [big_link(alice, f"step{n}", 3 * MIB, run) for n in range(3)]
        for content in added:
            custody.AddLink(pb.AddLinkRequest(link=content, run_id=run, keys=[given(alice)]))
        pages, token = [], ""
        while True:
            page = custody.ListLinks(pb.ListLinksRequest(run_id=run, include_content=True,
                                                         page_token=token))
            pages.append([link.content for link in page.links])
            token = page.next_page_token
            if not token:
                break
        assert pages == [[content] for content in reversed(added)]
    finally:
        server.stop()


def test_add_link_refuses_a_file_over_the_limit_unparsed(server: StoreServer) -> None:
    custody, before = server.custody, len(server.audit.events)
    too_big = b"{" * (DEFAULT_MAX_LINK_BYTES + 1)  # not JSON: the size is what is refused
    with pytest.raises(grpc.RpcError) as caught:
        custody.AddLink(pb.AddLinkRequest(link=too_big, run_id="big"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit of 16777216 (store.max_link_bytes)" in str(caught.value.details())
    (entry,) = server.events(before, "add-link")
    assert entry.outcome == "failure" and entry.details["bytes"] == DEFAULT_MAX_LINK_BYTES + 1
    assert server.health_changes == []


def test_max_link_bytes_is_a_store_setting(tmp_path: Path) -> None:
    assert store_config_from_table({}, base=tmp_path).max_link_bytes == 16 * MIB
    assert store_config_from_table({"max_link_bytes": 1024},
                                   base=tmp_path).max_link_bytes == 1024
    for bad in (0, -1, "1 MiB", 1.5, True):
        with pytest.raises(ConfigError, match=r"store\.max_link_bytes"):
            store_config_from_table({"max_link_bytes": bad}, base=tmp_path)


def record(step: str, keyid: str, content: bytes, *, run: str = "r1") -> NewRecord:
    return NewRecord.link(content=content, step=step, keyid=keyid,
                          file_name=link_file_name(step, keyid), products={}, run_id=run,
                          origin="added", caller="test")


LISTED = "ab12cd34" + "0" * 56
LOOKALIKE = "ab12cd34" + "f" * 56  # a stranger's key whose id begins the same way
STRANGER = "ef" * 32


def test_a_verification_reads_the_files_it_can_use(store: AttestationStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """For a layout of `build` (LISTED) and `test`: of each name the three newest, by the
    listed key and by any; of other names of the layout's steps, a few; nothing of other
    steps or runs. The newest listed and the newest of each name are always read; older
    ones and unlisted ones while they fit the budget."""
    rerun = [record("build", LISTED, f"build {n}".encode()) for n in range(5)]
    lookalikes = [record("build", LOOKALIKE, f"lookalike {n}".encode()) for n in range(4)]
    unlisted = [record("test", f"{n:02x}" * 32, f"unlisted {n}".encode()) for n in range(6)]
    elsewhere = [record("deploy", LISTED, b"another step"),
                 record("build", LISTED, b"another run", run="r2")]
    store.sql.insert([*rerun, *lookalikes, *unlisted, *elsewhere], stored_at=STORE_NOW)
    steps = {"build": [LISTED], "test": []}

    def read() -> list[bytes]:
        return [r.content or b"" for r in store.run_links("r1", steps=steps, unlisted=4)]

    assert read() == [b"build 2", b"build 3", b"build 4", b"lookalike 1", b"lookalike 2",
                      b"lookalike 3", b"unlisted 2", b"unlisted 3", b"unlisted 4",
                      b"unlisted 5"]
    # the newest listed and the newest of the name (18 bytes), then an older listed one
    monkeypatch.setattr(store_sql, "MAX_RUN_CONTENT_BYTES", 30)
    assert read() == [b"build 3", b"build 4", b"lookalike 3"]


def test_a_page_of_files_at_a_small_budget(store: AttestationStore) -> None:
    """Every kind of ListLinks page stops at the budget (made small here), the first file
    whatever its size, and goes on where it stopped."""
    digest = hashlib.sha256(b"shipped").hexdigest()
    records = [NewRecord.link(content=bytes([65 + n]) * size, step="build", keyid=LISTED,
                              file_name=link_file_name("build", LISTED),
                              products={"app": {"sha256": digest}}, run_id="r1",
                              origin="added", caller="test")
               for n, size in enumerate([50, 10, 10, 80, 10])]
    store.sql.insert(records, stored_at=STORE_NOW)
    store.sql.page_content_bytes = 60
    for query in (LinkQuery(include_content=True), LinkQuery(run_id="r1", include_content=True),
                  LinkQuery(digest=f"sha256:{digest}", include_content=True),
                  LinkQuery(run_id="r1", digest=f"sha256:{digest}", include_content=True)):
        pages: list[list[int]] = []
        before = None
        while True:
            page = store.page(LinkQuery(**{**query.__dict__, "before_seq": before}))
            pages.append([len(r.content or b"") for r in page.records])
            if page.next_before is None:
                break
            before = page.next_before
        assert pages == [[10], [80], [10, 10], [50]], query  # newest first
