"""A flood of links with one product digest (review 2026-12-04, finding 7): ListLinks by
digest looked only at the newest MAX_DIGEST_MATCHES links with it, whatever their step,
run or kind, so junk links (another step, no run) hid the real one: ListLinks(run_id=R,
artifact_digest=D) answered nothing, and no page token. Now every filter is judged in
SQL: given a run, the run's links drive; otherwise a page looks at most
MAX_DIGEST_MATCHES links and says where the next one goes on. The cap is made small
here (in-process); both databases."""

from __future__ import annotations

import hashlib

import pytest

from custody_server.store import AttestationStore, LinkQuery, NewRecord
from custody_server.store import sql as store_sql

from .server_support import STORE_NOW

pytestmark = pytest.mark.slow
FLOODED = hashlib.sha256(b"the release").hexdigest()
DIGEST = f"sha256:{FLOODED}"
KEYID = "ab" * 32


def link(step: str, run: str, n: int, *, keyid: str = KEYID) -> NewRecord:
    return NewRecord.link(content=f"{step} {run} {n}".encode(), step=step, keyid=keyid,
                          file_name=f"{step}.{keyid[:8]}.link",
                          products={"app.tgz": {"sha256": FLOODED}}, run_id=run,
                          origin="added", caller="test")


def all_pages(store: AttestationStore, query: LinkQuery) -> tuple[list[str], int]:
    """Every record of the query, page after page, and how many pages it took."""
    found: list[str] = []
    pages, before = 0, None
    while True:
        page = store.page(LinkQuery(**{**query.__dict__, "before_seq": before}))
        pages += 1
        found += [record.id for record in page.records]
        if page.next_before is None:
            return found, pages
        assert page.next_before != before, "a page token that does not move"
        before = page.next_before


def test_junk_with_the_digest_hides_no_run(store: AttestationStore,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_sql, "MAX_DIGEST_MATCHES", 5)
    monkeypatch.setattr(store_sql, "_DIGEST_CHUNK", 2)
    real = link("package", "release-1", 0)
    store.sql.insert([real], stored_at=STORE_NOW)
    junk = [link("scan", "", n, keyid="cd" * 32) for n in range(12)]  # newer, no run
    store.sql.insert(junk, stored_at=STORE_NOW)
    # the run's own links drive: found at once, whatever the flood
    assert [r.id for r in store.query(LinkQuery(run_id="release-1", digest=DIGEST))] == [
        real.id]
    assert store.page(LinkQuery(run_id="release-1", digest=DIGEST)).next_before is None
    # by step: the first pages look at the junk and say where to go on; the link comes
    found, pages = all_pages(store, LinkQuery(step="package", digest=DIGEST))
    assert found == [real.id] and pages == 3  # 5 junk looked at, 5 more, then 2 and it
    first = store.page(LinkQuery(step="package", digest=DIGEST))
    assert first.records == [] and first.next_before is not None
    # by digest alone: every link, newest first, none twice, none lost
    everything, _ = all_pages(store, LinkQuery(digest=DIGEST, limit=4))
    assert everything == [r.id for r in reversed([real, *junk])]
    # the gate's lookup judges step, key and run in SQL too (find_runs)
    assert store.find_runs([DIGEST], {"package": [KEYID]}) == ["release-1"]


def test_a_full_page_by_digest_goes_on_from_its_last_link(store: AttestationStore) -> None:
    records = [link("package", f"run-{n}", n) for n in range(7)]
    store.sql.insert(records, stored_at=STORE_NOW)
    first = store.page(LinkQuery(digest=DIGEST, limit=3))
    assert [r.id for r in first.records] == [r.id for r in reversed(records)][:3]
    assert first.next_before == first.records[-1].seq
    found, pages = all_pages(store, LinkQuery(digest=DIGEST, limit=3))
    assert found == [r.id for r in reversed(records)] and pages == 3
