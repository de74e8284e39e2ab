"""The attestation store on a real SQLite file: versioned schema, finding runs by their
final product, pages, retention (audited, fail-closed), AddLink's checks, health."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from custody_core.errors import MetadataError, SignatureError
from custody_core.software_signer import SoftwareSigner
from custody_server.audit_events import AuditEvent, MemoryAuditSink
from custody_server.errors import ConfigError, RequestError, StoreUnavailableError
from custody_server.store import AttestationStore, LinkQuery, NewRecord, open_store
from custody_server.store.sql import SqlStore, migrations

from .store_support import Clock, FailingSource, signed_link, sqlite_store

ECDSA = "ecdsa-sha2-nistp256"
KEYID = "ab" * 32  # the key of record()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record(step: str, run: str, products: dict[str, str], *, content: bytes | None = None
           ) -> NewRecord:
    return NewRecord.link(content=content or f"{run}/{step}/{products}".encode(), step=step,
                          keyid=KEYID, file_name=f"{step}.abababab.link",
                          products={p: {"sha256": d} for p, d in products.items()},
                          run_id=run, origin="signed", caller="spiffe://ci/agent")


def test_the_schema_is_versioned_and_migrated_once(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    assert store.sql.schema_version() == len(migrations("sqlite")) == 2
    store.sql.source.close()
    again = sqlite_store(tmp_path)  # a second start applies nothing
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        rows = db.execute("SELECT version, description FROM schema_version").fetchall()
    assert rows == [(1, "attestations"), (2, "run_step_index")]
    assert again.sql.migrate(now=Clock()()) == (2, 2)
    again.sql.source.close()


def test_a_store_of_an_older_schema_is_migrated_in_place(tmp_path: Path) -> None:
    sqlite_store(tmp_path).sql.source.close()
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:  # as version 1 left it
        db.execute("DROP INDEX attestations_run_step")
        db.execute("DELETE FROM schema_version WHERE version = 2")
    store = sqlite_store(tmp_path)
    assert store.sql.schema_version() == 2
    store.sql.source.close()
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        indexes = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "attestations_run_step" in indexes


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    sqlite_store(tmp_path).sql.source.close()
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        db.execute("INSERT INTO schema_version VALUES (3, 'from the future', 'x')")
    with pytest.raises(ConfigError, match="version 3, newer than this server knows"):
        sqlite_store(tmp_path)


def test_the_migrations_of_both_dialects_make_the_same_tables() -> None:
    for dialect in ("sqlite", "postgresql"):
        statements = migrations(dialect)[0].statements()
        assert [s.split("(")[0].split()[-1] for s in statements if s.startswith("CREATE TABLE")
                ] == ["attestations", "products"]


def test_runs_are_found_by_their_final_products(tmp_path: Path) -> None:
    clock = Clock()
    store = sqlite_store(tmp_path, clock=clock)
    app, docs = sha("app v1"), sha("docs v1")
    store.keep_signed([(record("build", "run-1", {"app.o": sha("obj")}), "x"),
                       (record("package", "run-1", {"app.tgz": app, "docs.tgz": docs}), "x")])
    clock.advance(timedelta(minutes=5))
    store.keep_signed([(record("package", "run-2", {"dist/app.tgz": app}), "x")])
    key = f"sha256:{app}"
    package = {"package": [KEYID]}
    assert store.find_runs([key], package) == ["run-2"]  # the newest first
    assert store.find_runs([key, f"sha256:{docs}"], package) == ["run-1"]  # both
    assert store.find_runs([f"sha256:{sha('obj')}"], package) == []  # not a final step
    assert store.find_runs([key], {"package": ["cd" * 32]}) == []  # not a listed key
    assert [r.step for r in store.run_links("run-1", steps={
        "build": ["ab" * 32], "package": ["ab" * 32]}, unlisted=32)] == ["build", "package"]
    assert store.has_product(key, package)
    assert not store.has_product(f"sha256:{sha('nothing')}", package)


def test_the_same_file_is_stored_once(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    item = record("build", "run-1", {"a": sha("a")})
    assert store.sql.insert([item, item], stored_at=Clock()()) == 1
    assert len(store.query(LinkQuery())) == 1


def test_a_signed_link_the_store_refuses_for_any_reason_is_audited_as_withheld(
        tmp_path: Path) -> None:
    """Not only an outage: whatever keeps a signed link out of the store, its signature
    was made and audited, so its withholding is audited too (here: the same file already
    filed under another run, which the intake makes unreachable from SignLink)."""
    audit = MemoryAuditSink()
    store = sqlite_store(tmp_path, audit=audit)
    content = b"one signed file"
    store.keep_signed([(record("build", "run-1", {"a": sha("a")}, content=content), "x")])
    with pytest.raises(Exception, match="run-1"):
        store.keep_signed([(record("build", "run-2", {"a": sha("a")}, content=content),
                            "y")])
    (entry,) = [e for e in audit.events if e.action == "store-link"]
    assert entry.outcome == "failure" and entry.details["signed_sha256"] == "y"


def test_lists_page_newest_first_without_repeats(tmp_path: Path) -> None:
    clock = Clock()
    store = sqlite_store(tmp_path, clock=clock)
    for number in range(250):
        clock.advance(timedelta(seconds=1))
        store.keep_signed([(record("build", f"run-{number % 3}", {"a": sha(str(number))}),
                            "x")])
    seen, before = [], None
    while True:
        page = store.query(LinkQuery(limit=100, before_seq=before))
        seen += [r.id for r in page]
        if len(page) < 100:
            break
        before = page[-1].seq
    assert len(seen) == len(set(seen)) == 250
    run_0 = store.query(LinkQuery(run_id="run-0", limit=1000))
    assert len(run_0) == 84 and all(r.run_id == "run-0" for r in run_0)
    start = Clock().now
    window = store.query(LinkQuery(since=start + timedelta(seconds=11),
                                   until=start + timedelta(seconds=21)))
    assert len(window) == 10
    by_digest = store.query(LinkQuery(digest=f"sha256:{sha('7')}", include_content=True))
    assert [r.content for r in by_digest] == [f"run-1/build/{ {'a': sha('7')} }".encode()]


def test_retention_deletes_what_is_older_and_audits_it(tmp_path: Path) -> None:
    clock, audit = Clock(), MemoryAuditSink()
    store = sqlite_store(tmp_path, clock=clock, audit=audit)
    store.keep_signed([(record("build", "old", {"a": sha("old")}), "x")])
    clock.advance(timedelta(days=10))
    store.keep_signed([(record("build", "new", {"a": sha("new")}), "x")])
    assert store.sweep(retention=timedelta(days=5)) == 1
    assert [r.run_id for r in store.query(LinkQuery())] == ["new"]
    assert not store.has_product(f"sha256:{sha('old')}", {"build": [KEYID]})  # products too
    (entry,) = [e for e in audit.events if e.action == "store-retention"]
    assert entry.outcome == "success" and entry.details["deleted"] == 1
    assert entry.details["runs"] == ["old"]
    assert store.sweep(retention=timedelta(days=5)) == 0


class RefusingAudit:
    def record(self, event: AuditEvent) -> None:
        raise OSError("disk full")


def test_nothing_is_deleted_unless_the_deletion_is_audited(tmp_path: Path) -> None:
    clock = Clock()
    store = sqlite_store(tmp_path, clock=clock)
    store.keep_signed([(record("build", "old", {"a": sha("old")}), "x")])
    clock.advance(timedelta(days=10))
    refusing = AttestationStore(store.sql, audit=RefusingAudit(), clock=clock)
    with pytest.raises(Exception, match="audit log unavailable: nothing deleted"):
        refusing.sweep(retention=timedelta(days=5))
    assert [r.run_id for r in store.query(LinkQuery())] == ["old"]


@pytest.fixture(scope="module")
def alice() -> SoftwareSigner:
    return SoftwareSigner.generate(ECDSA)


def test_add_link_stores_a_link_signed_by_a_known_key(tmp_path: Path,
                                                      alice: SoftwareSigner) -> None:
    audit = MemoryAuditSink()
    store = sqlite_store(tmp_path, audit=audit)
    content = signed_link(alice, "build", {"app": sha("app")})
    keys = {alice.public_key.keyid: alice.public_key}
    stored = store.add_link(content, run_id="run-9", trusted=keys, known={}, caller="gate")
    assert (stored.origin, stored.step, stored.run_id) == ("added", "build", "run-9")
    assert stored.keyid == alice.public_key.keyid
    assert stored.file_name == f"build.{alice.public_key.keyid[:8]}.link"
    assert store.get(stored.id[:10]).content == content
    assert store.find_runs([f"sha256:{sha('app')}"],
                           {"build": [alice.public_key.keyid]}) == ["run-9"]
    (entry,) = [e for e in audit.events if e.action == "add-link"]
    assert entry.outcome == "success" and entry.details["id"] == stored.id


@pytest.mark.parametrize(("content", "error", "message"), [
    (b"not json", MetadataError, "JSON"),
    (b'{"signed": {"_type": "layout"}, "signatures": []}', RequestError, "AddLink takes links"),
])
def test_add_link_refuses_what_is_not_a_link(tmp_path: Path, content: bytes,
                                            error: type[Exception], message: str) -> None:
    audit = MemoryAuditSink()
    store = sqlite_store(tmp_path, audit=audit)
    with pytest.raises(error, match=message):
        store.add_link(content, run_id="", trusted={}, known={}, caller="gate")
    assert store.query(LinkQuery()) == []
    assert [e.outcome for e in audit.events if e.action == "add-link"] == ["failure"]


def test_add_link_refuses_a_stranger_or_a_changed_link(tmp_path: Path,
                                                      alice: SoftwareSigner) -> None:
    store = sqlite_store(tmp_path)
    mallory = SoftwareSigner.generate(ECDSA)
    keys = {alice.public_key.keyid: alice.public_key}
    strangers = signed_link(mallory, "build", {"app": sha("app")})
    with pytest.raises(SignatureError, match="no valid signature"):
        store.add_link(strangers, run_id="", trusted=keys, known={}, caller="gate")
    changed = signed_link(alice, "build", {"app": sha("app")}).replace(
        sha("app").encode(), sha("evil").encode())
    with pytest.raises(SignatureError):
        store.add_link(changed, run_id="", trusted=keys, known={}, caller="gate")
    with pytest.raises(RequestError, match="run_id"):
        store.add_link(signed_link(alice, "build", {}), run_id="a b", trusted=keys,
                       known={}, caller="gate")
    assert store.query(LinkQuery()) == []


def test_a_failing_store_withholds_audits_and_recovers(tmp_path: Path) -> None:
    audit = MemoryAuditSink()
    store = sqlite_store(tmp_path, audit=audit)
    failing = FailingSource(store.sql.source)
    store = AttestationStore(SqlStore(failing), audit=audit, clock=Clock())
    health: list[bool] = []
    store.set_health_listener(health.append)
    failing.failing.set()
    with pytest.raises(StoreUnavailableError, match="link withheld"):
        store.keep_signed([(record("build", "r", {"a": sha("a")}), "signed-digest")])
    (entry,) = [e for e in audit.events if e.action == "store-link"]
    assert entry.outcome == "failure" and entry.details["signed_sha256"] == "signed-digest"
    assert health == [True, False] and not store.healthy
    assert not store.probe()  # still down
    failing.failing.clear()
    assert store.probe() and health == [True, False, True]
    store.keep_signed([(record("build", "r", {"a": sha("a")}), "x")])
    assert len(store.query(LinkQuery())) == 1


def test_the_store_table_of_the_config(tmp_path: Path) -> None:
    from custody_server.config import config_from_dict

    config = config_from_dict({"store": {"url": "sqlite:store/links.db", "retention": "30d",
                                         "sweep_interval": "10m",
                                         "sqlite_synchronous": "NORMAL"}}, base=tmp_path)
    assert config.store.sqlite_file(tmp_path / "state") == tmp_path / "store" / "links.db"
    assert (config.store.retention, config.store.sweep_interval) == (
        timedelta(days=30), timedelta(minutes=10))
    assert config.store.sqlite_synchronous == "normal"
    absolute = config_from_dict({"store": {"url": "sqlite:///var/custody.db"}}, base=tmp_path)
    assert absolute.store.sqlite_file(tmp_path) == Path("/var/custody.db")
    shared = config_from_dict({"store": {"url": "postgresql://c@db/custody"}}, base=tmp_path)
    assert shared.store.postgres_url == "postgresql://c@db/custody"
    assert config_from_dict({}, base=tmp_path).store.sqlite_file(tmp_path) == (
        tmp_path / "store.sqlite3")


@pytest.mark.parametrize(("table", "message"), [
    ({"url": "mysql://x"}, "store.url must start with"),
    ({"retention": "0s"}, "store.retention must be positive"),
    ({"retention": "soon"}, "store.retention"),
    ({"sqlite_synchronous": "off"}, "sqlite_synchronous"),
    ({"pool": 3}, "unknown key(s) in [store]: pool"),
])
def test_a_bad_store_table_is_refused(tmp_path: Path, table: dict[str, object],
                                      message: str) -> None:
    from custody_server.config import config_from_dict

    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"store": table}, base=tmp_path)


def test_normal_sync_is_what_sqlite_runs_with(tmp_path: Path) -> None:
    from custody_server.config import config_from_dict

    config = config_from_dict({"store": {"sqlite_synchronous": "normal"}}, base=tmp_path)
    store = open_store(config.store, state_dir=tmp_path, audit=MemoryAuditSink(),
                       clock=Clock())
    connection = store.sql.source._connection  # type: ignore[attr-defined]
    assert connection.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.sql.source.close()
