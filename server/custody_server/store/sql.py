"""The store's SQL, one text for SQLite and PostgreSQL (the sources differ in connections
and placeholders, custody_server.store.sqlite and .postgres), and the versioned schema.

Migrations are numbered SQL files, `migrations/<dialect>/NNNN_<name>.sql`, applied in
order inside one transaction each, and recorded in `schema_version` (version,
description, applied_at). A database whose schema is newer than this server knows is
refused at start: an older server must not write into a schema it does not understand.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Protocol, cast

from custody_core.link import link_file_name
from custody_server.errors import ConfigError, RequestError
from custody_server.store.records import (
    LinkPage,
    LinkQuery,
    NewRecord,
    StoredRecord,
    from_micros,
    to_micros,
)

MAX_RUN_LINKS = 10_000  # the links of one run (of the layout's steps) a verification looks at
# Of each file name a verification looks for: the newest may not count (another run's, by
# its signed custody.run-id), so an older one is read too, up to this many.
MAX_PER_NAME = 3
# The files of one verification's run beyond the newest of each name: a run whose re-runs
# or strangers' links are large is read up to this much (unlisted links only explain a
# key rotation; older files of a name count only when a newer one does not).
MAX_RUN_CONTENT_BYTES = 64 * 1024 * 1024
# The links with one product digest that a ListLinks page looks at (find_runs: per digest)
MAX_DIGEST_MATCHES = 10_000
_DIGEST_CHUNK = 500  # links with a product digest read per query by a ListLinks page
# The files of one ListLinks page (include_content): a page is held in memory two or three
# times (rows, the reply, its bytes) and must fit in one gRPC message (64 MiB by default,
# limits.max_message_bytes). A page stops before the file that would pass this.
MAX_PAGE_CONTENT_BYTES = 16 * 1024 * 1024
_PAGE = 1000  # links with a product digest read per query by find_runs and has_product
_NO_SEQ = 1 << 62  # above every seq: the first page
_MIGRATION = re.compile(r"(?P<version>[0-9]{4})_(?P<name>[a-z0-9_]+)\.sql")
_COLUMNS = "seq, id, kind, run_id, step, keyid, file_name, origin, caller, stored_at"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Source(Protocol):
    """Connections to one database, as transactions."""

    dialect: str  # "sqlite" or "postgresql"
    placeholder: str  # "?" or "%s"

    def transaction(self, *, write: bool) -> contextlib.AbstractContextManager[Cursor]:
        """A cursor inside a transaction: committed when the block ends, rolled back if it
        raises. StoreUnavailableError when the database cannot be reached."""

    def migrate_lock(self, cursor: Cursor) -> None:
        """Hold off other servers migrating the same database (until the commit)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        lines = [line for line in self.sql.splitlines() if not line.lstrip().startswith("--")]
        return [text.strip() for text in "\n".join(lines).split(";") if text.strip()]


def migrations(dialect: str) -> list[Migration]:
    """The numbered migrations of a dialect, in order (1, 2, ... without gaps)."""
    folder = resources.files("custody_server.store").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION.fullmatch(entry.name)
        if match is not None:
            found.append(Migration(int(match["version"]), match["name"],
                                   entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ConfigError(f"store migrations for {dialect} are not numbered 1..n")
    return found


class SqlStore:
    """Every query of the attestation store over one Source."""

    def __init__(self, source: Source, *, page_content_bytes: int = MAX_PAGE_CONTENT_BYTES
                 ) -> None:
        self.source = source
        self._p = source.placeholder
        self.page_content_bytes = page_content_bytes  # a ListLinks page's files, at most

    @property
    def dialect(self) -> str:
        return self.source.dialect

    def _sql(self, text: str) -> str:
        return text if self._p == "?" else text.replace("?", self._p)

    # schema

    def migrate(self, *, now: datetime) -> tuple[int, int]:
        """Apply what is missing; (version before, version now)."""
        known = migrations(self.dialect)
        with self.source.transaction(write=True) as cursor:
            self.source.migrate_lock(cursor)
            cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER "
                           "PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)")
            cursor.execute("SELECT MAX(version) FROM schema_version")
            row = cursor.fetchone()
            before = int(row[0]) if row and row[0] is not None else 0
            if before > len(known):
                raise ConfigError(f"the attestation store's schema is version {before}, newer "
                                  f"than this server knows ({len(known)}): upgrade the server")
            for migration in known[before:]:
                for statement in migration.statements():
                    cursor.execute(statement)
                cursor.execute(self._sql("INSERT INTO schema_version (version, description, "
                                         "applied_at) VALUES (?, ?, ?)"),
                               (migration.version, migration.name,
                                now.astimezone(UTC).isoformat()))
        return before, len(known)

    def schema_version(self) -> int:
        with self.source.transaction(write=False) as cursor:
            cursor.execute("SELECT MAX(version) FROM schema_version")
            row = cursor.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # writes

    def insert(self, records: Sequence[NewRecord], *, stored_at: datetime,
               confirm: Callable[[int], None] | None = None) -> int:
        """Store the records in one transaction (a record whose file is stored already
        under the same run is left as it is); how many were new. With `confirm`, the
        transaction commits only if `confirm(new)` returns (it audits). RequestError, and
        nothing stored, if a file is stored already under another run: one file belongs to
        one run, and the caller must not get another run's record back as its own."""
        micros = to_micros(stored_at)
        added = 0
        insert = self._sql(
            "INSERT INTO attestations (id, kind, run_id, step, keyid, file_name, origin, "
            "caller, stored_at, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING RETURNING seq")
        stored_run = self._sql("SELECT run_id FROM attestations WHERE id = ?")
        products = self._sql("INSERT INTO products (digest, seq, path) VALUES (?, ?, ?) "
                             "ON CONFLICT DO NOTHING")
        with self.source.transaction(write=True) as cursor:
            for record in records:
                cursor.execute(insert, (record.id, record.kind, record.run_id, record.step,
                                        record.keyid, record.file_name, record.origin,
                                        record.caller, micros, record.content))
                row = cursor.fetchone()
                if row is None:  # stored already (by another transaction, it has committed)
                    cursor.execute(stored_run, (record.id,))
                    found = cursor.fetchone()
                    if found is not None and str(found[0]) != record.run_id:
                        raise RequestError(_other_run(record, str(found[0])))
                    continue
                added += 1
                if record.products:
                    seq = int(row[0])
                    cursor.executemany(products, [(digest, seq, path)
                                                  for digest, path in record.products])
            if confirm is not None:
                confirm(added)
        return added

    def delete_before(self, cutoff: datetime, *, limit: int,
                      confirm: Callable[[int, list[str]], None]) -> int:
        """Delete up to `limit` records stored before `cutoff`, oldest first, in one
        transaction that commits only if `confirm(count, run ids)` returns (it audits)."""
        micros = to_micros(cutoff)
        with self.source.transaction(write=True) as cursor:
            cursor.execute(self._sql("SELECT seq, run_id FROM attestations WHERE stored_at < ? "
                                     "ORDER BY seq LIMIT ?"), (micros, limit))
            rows = cursor.fetchall()
            if not rows:
                return 0
            last = int(rows[-1][0])
            cursor.execute(self._sql("DELETE FROM products WHERE seq IN (SELECT seq FROM "
                                     "attestations WHERE stored_at < ? AND seq <= ?)"),
                           (micros, last))
            cursor.execute(self._sql("DELETE FROM attestations WHERE stored_at < ? AND "
                                     "seq <= ?"), (micros, last))
            count = int(cursor.rowcount)
            confirm(count, list(dict.fromkeys(str(row[1]) for row in rows if row[1])))
        return count

    # reads

    def get(self, id_prefix: str) -> list[StoredRecord]:
        """Records whose id starts with `id_prefix` (two at most: more is ambiguous)."""
        with self.source.transaction(write=False) as cursor:
            cursor.execute(self._sql(f"SELECT {_COLUMNS}, content FROM attestations "  # noqa: S608
                                     "WHERE id >= ? AND id < ? ORDER BY id LIMIT 2"),
                           (id_prefix, id_prefix + "g"))
            return [_record(row, content=True) for row in cursor.fetchall()]

    def query(self, query: LinkQuery) -> list[StoredRecord]:
        """The records of a page (`page`)."""
        return self.page(query).records

    def page(self, query: LinkQuery) -> LinkPage:
        """Newest first, `query.limit` at most, every filter judged in SQL, and where the
        next page goes on. With a digest, the run's links (given a run) or the product
        index drive, one table per query: plans that need no statistics, and the same
        from a prepared statement's generic plan, which knows neither run nor digest (a
        join of both tables chose to read every link with a flooded digest: 34 ms at
        20,000 for one run's link). A page that looked at MAX_DIGEST_MATCHES links with
        the digest, or of the run, stops there, short or even empty, with a token."""
        where: list[str] = ["a.kind = ?"]
        params: list[str | int] = [query.kind]
        if query.run_id:
            where.append("a.run_id = ?")
            params.append(query.run_id)
        if query.step:
            where.append("a.step = ?")
            params.append(query.step)
        if query.since is not None:
            where.append("a.stored_at >= ?")
            params.append(to_micros(query.since))
        if query.until is not None:
            where.append("a.stored_at < ?")
            params.append(to_micros(query.until))
        columns = ", ".join(f"a.{c.strip()}" for c in _COLUMNS.split(","))
        # Constant column names and conditions; every value is a parameter.
        select = f"SELECT {columns} FROM attestations a WHERE {' AND '.join(where)}"  # noqa: S608
        with self.source.transaction(write=False) as cursor:
            if query.digest and query.run_id:
                page = self._run_page_by_digest(cursor, query, select, where, params)
            elif query.digest:
                page = self._page_by_digest(cursor, query, select, params)
            else:
                before = [query.before_seq] if query.before_seq is not None else []
                cursor.execute(self._sql(select + (" AND a.seq < ?" if before else "")
                                         + " ORDER BY a.seq DESC LIMIT ?"),
                               [*params, *before, query.limit])
                records = [_record(row, content=False) for row in cursor.fetchall()]
                page = LinkPage(records,
                                records[-1].seq if len(records) == query.limit else None)
            return self._with_contents(cursor, page) if query.include_content else page

    def _with_contents(self, cursor: Cursor, page: LinkPage) -> LinkPage:
        """The page with its files, newest first, as many as come to at most
        page_content_bytes together (the first whatever its size): their sizes are read
        first, without the files, so a page of large files stops early, and its token
        goes on from the last one it holds."""
        sizes: dict[int, int] = {}
        for chunk in _chunks([record.seq for record in page.records]):
            cursor.execute(self._sql(
                f"SELECT seq, length(content) FROM attestations WHERE seq IN "  # noqa: S608
                f"({', '.join('?' * len(chunk))})"), chunk)
            sizes.update((int(seq), int(size)) for seq, size in cursor.fetchall())
        kept: list[StoredRecord] = []
        total = 0
        for record in page.records:
            size = sizes.get(record.seq)
            if size is None:
                continue  # deleted since (retention)
            if kept and total + size > self.page_content_bytes:
                return LinkPage(self._contents(cursor, kept), kept[-1].seq)
            kept.append(record)
            total += size
        return LinkPage(self._contents(cursor, kept), page.next_before)

    def _contents(self, cursor: Cursor, records: list[StoredRecord]) -> list[StoredRecord]:
        """`records` with their files (those still stored)."""
        contents: dict[int, bytes] = {}
        for chunk in _chunks([record.seq for record in records]):
            # Planned for these values: the generic plan PostgreSQL made while the store
            # was small scanned the table, and kept doing so as it grew (5.6 ms per gate
            # lookup at 10,000 runs against 0.6 ms; docs/PERFORMANCE.md).
            self._planned(cursor, self._sql(
                f"SELECT seq, content FROM attestations WHERE seq IN "  # noqa: S608
                f"({', '.join('?' * len(chunk))})"), chunk)
            contents.update((int(seq), bytes(content)) for seq, content in cursor.fetchall())
        return [replace(record, content=contents[record.seq]) for record in records
                if record.seq in contents]

    def _page_by_digest(self, cursor: Cursor, query: LinkQuery, select: str,
                        params: list[str | int]) -> LinkPage:
        """The product index gives the newest MAX_DIGEST_MATCHES links with the digest;
        they are read by primary key, _DIGEST_CHUNK at a time, with every filter, until
        the page is full."""
        bound = " AND seq < ?" if query.before_seq is not None else ""
        cursor.execute(self._sql(
            f"SELECT DISTINCT seq FROM products WHERE digest = ?{bound} "  # noqa: S608
            "ORDER BY seq DESC LIMIT ?"),
            [query.digest, *([query.before_seq] if bound else []), MAX_DIGEST_MATCHES])
        seqs = [int(row[0]) for row in cursor.fetchall()]
        found: list[StoredRecord] = []
        for start in range(0, len(seqs), _DIGEST_CHUNK):
            chunk = seqs[start:start + _DIGEST_CHUNK]
            found += self._records(cursor, select, params, chunk,
                                   limit=query.limit - len(found))
            if len(found) >= query.limit:
                return LinkPage(found, found[-1].seq)
        return LinkPage(found, seqs[-1] if len(seqs) == MAX_DIGEST_MATCHES else None)

    def _run_page_by_digest(self, cursor: Cursor, query: LinkQuery, select: str,
                            where: list[str], params: list[str | int]) -> LinkPage:
        """The run's links (the run index), _DIGEST_CHUNK at a time, newest first; of
        each chunk those with a product of the digest (the product index, by primary
        key); then their rows."""
        found: list[StoredRecord] = []
        before, looked_at = query.before_seq, 0
        while looked_at < MAX_DIGEST_MATCHES:
            bound = " AND a.seq < ?" if before is not None else ""
            cursor.execute(self._sql(
                f"SELECT a.seq FROM attestations a WHERE {' AND '.join(where)}{bound} "  # noqa: S608
                "ORDER BY a.seq DESC LIMIT ?"),
                [*params, *([before] if before is not None else []), _DIGEST_CHUNK])
            seqs = [int(row[0]) for row in cursor.fetchall()]
            if not seqs:
                return LinkPage(found, None)
            looked_at += len(seqs)
            marks = ", ".join("?" * len(seqs))
            self._planned(cursor, self._sql(
                f"SELECT DISTINCT seq FROM products WHERE digest = ? AND seq IN ({marks})"),  # noqa: S608
                [query.digest, *seqs])
            with_digest = sorted((int(row[0]) for row in cursor.fetchall()), reverse=True)
            if with_digest:
                found += self._records(cursor, select, params, with_digest,
                                       limit=query.limit - len(found))
                if len(found) >= query.limit:
                    return LinkPage(found, found[-1].seq)
            before = seqs[-1]
            if len(seqs) < _DIGEST_CHUNK:
                return LinkPage(found, None)
        return LinkPage(found, before)

    def _planned(self, cursor: Cursor, sql: str, params: Sequence[Any]) -> None:
        """Run a query planned for its values, never from a prepared statement's generic
        plan (psycopg prepares a query it runs often): where the best plan depends on how
        common a digest is. The generic plan of the product check above read every link
        with a flooded digest: 113 ms for 500 links of a run at 20,000, against 0.2 ms."""
        if self.dialect == "postgresql":
            cast(Any, cursor).execute(sql, params, prepare=False)
        else:
            cursor.execute(sql, params)

    def _records(self, cursor: Cursor, select: str, params: list[str | int],
                 seqs: list[int], *, limit: int) -> list[StoredRecord]:
        """The rows of `seqs` (by primary key) that pass the filters, newest first, without
        their files."""
        marks = ", ".join("?" * len(seqs))
        cursor.execute(self._sql(f"{select} AND a.seq IN ({marks}) ORDER BY a.seq DESC "
                                 "LIMIT ?"), [*params, *seqs, limit])
        return [_record(row, content=False) for row in cursor.fetchall()]

    def find_runs(self, digests: Sequence[str], signers: Mapping[str, Sequence[str]], *,
                  limit: int = 1) -> list[str]:
        """Runs, newest first, in which a link of a final step, signed by a keyid the
        layout lists for that step (`signers`: step -> keyids), has a product with each
        of `digests` (digest keys); among the MAX_DIGEST_MATCHES newest such links per
        digest. Links of other steps or by other keys with the digest are passed over,
        however many there are: they can neither choose the run nor hide it."""
        wanted = list(dict.fromkeys(digests))
        if not wanted or not signers:
            return []
        newest: dict[str, int] = {}  # run -> its newest matching link
        runs_of: list[set[str]] = []  # for each digest, the runs with it
        with self.source.transaction(write=False) as cursor:
            for digest in wanted:
                runs: set[str] = set()
                for count, (seq, run_id) in enumerate(self._final_links(cursor, digest,
                                                                        signers)):
                    runs.add(run_id)
                    newest[run_id] = max(newest.get(run_id, 0), seq)
                    if count + 1 >= MAX_DIGEST_MATCHES or (len(wanted) == 1
                                                           and len(runs) >= limit):
                        break  # newest first: with one digest, the first runs are the answer
                runs_of.append(runs)
        complete = set.intersection(*runs_of)
        return sorted(complete, key=lambda run: newest[run], reverse=True)[:limit]

    def run_links(self, run_id: str, *, steps: Mapping[str, Sequence[str]],
                  unlisted: int) -> list[StoredRecord]:
        """The links of a run that a verification of a layout can use, oldest first, with
        their files. `steps`: the layout's steps, each with the keyids it lists. Among
        the run's MAX_RUN_LINKS newest links of those steps (their rows only), for each
        file name a step looks for (`<step>.<keyid8>.link`) the MAX_PER_NAME newest signed
        by a keyid the step lists and the MAX_PER_NAME newest of that name; for at most
        `unlisted` other names of those steps, the MAX_PER_NAME newest each. Only their
        files are read: the newest listed and the newest of each name always, the others
        while all come to at most MAX_RUN_CONTENT_BYTES."""
        if not steps:
            return []
        with self.source.transaction(write=False) as cursor:
            rows: list[tuple[StoredRecord, int]] = []
            names = sorted(steps)
            for start in range(0, len(names), 500):
                chunk = names[start:start + 500]
                cursor.execute(self._sql(
                    f"SELECT {_COLUMNS}, length(content) FROM attestations WHERE "  # noqa: S608
                    f"run_id = ? AND kind = 'link' AND step IN ({', '.join('?' * len(chunk))}) "
                    "ORDER BY seq DESC LIMIT ?"), [run_id, *chunk, MAX_RUN_LINKS])
                rows += [(_record(row, content=False), int(row[10])) for row in cursor.fetchall()]
            rows.sort(key=lambda pair: pair[0].seq, reverse=True)
            chosen = _chosen(rows[:MAX_RUN_LINKS], steps, unlisted=unlisted)
            return sorted(self._contents(cursor, chosen), key=lambda record: record.seq)

    def has_product(self, digest: str, signers: Mapping[str, Sequence[str]]) -> bool:
        """Whether a stored link of a run, of a final step and signed by a keyid the layout
        lists for it (`signers`, as find_runs), has a product with this digest key: what
        find_runs would find a run by."""
        with self.source.transaction(write=False) as cursor:
            return next(iter(self._final_links(cursor, digest, signers)), None) is not None

    def _final_links(self, cursor: Cursor, digest: str, signers: Mapping[str, Sequence[str]]
                     ) -> Iterator[tuple[int, str]]:
        """(seq, run id) of the links of a run with a product of `digest`, of a step of
        `signers` by a keyid listed for it, newest first. The product index drives, a page
        of links at a time (the LIMIT keeps either planner from starting at the
        attestations); the step, key and run are judged in the same query."""
        judged, params = _signed_by(signers)
        if not params:
            return  # no step with a listed key: nothing can count
        page = self._sql(
            "SELECT p.seq, a.run_id, CASE WHEN a.kind = 'link' AND a.run_id <> '' AND "  # noqa: S608
            f"({judged}) THEN 1 ELSE 0 END FROM (SELECT DISTINCT seq FROM products "
            "WHERE digest = ? AND seq < ? ORDER BY seq DESC LIMIT ?) p "
            "CROSS JOIN attestations a WHERE a.seq = p.seq ORDER BY p.seq DESC")
        before = _NO_SEQ
        while True:
            cursor.execute(page, [*params, digest, before, _PAGE])
            rows = cursor.fetchall()
            for seq, run_id, listed in rows:
                if int(listed):
                    yield int(seq), str(run_id)
            if len(rows) < _PAGE:
                return
            before = int(rows[-1][0])

    def ping(self) -> None:
        with self.source.transaction(write=False) as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()


def _signed_by(signers: Mapping[str, Sequence[str]]) -> tuple[str, list[str]]:
    """A condition on `a`: one of these steps, signed by a keyid listed for it (any case:
    the layout's keyids are compared as _as_link_directory compares them)."""
    terms: list[str] = []
    params: list[str] = []
    for step, keyids in signers.items():
        listed = sorted({keyid.lower() for keyid in keyids})
        if listed:
            terms.append(f"(a.step = ? AND LOWER(a.keyid) IN ({', '.join('?' * len(listed))}))")
            params += [step, *listed]
    return " OR ".join(terms), params


def _other_run(record: NewRecord, stored: str) -> str:
    where = f"under run {stored!r}" if stored else "without a run"
    wanted = f"run {record.run_id!r}" if record.run_id else "no run"
    return (f"this file is stored already, {where} (id {record.id[:16]}): it cannot also be "
            f"filed under {wanted}")


def _chosen(rows: Sequence[tuple[StoredRecord, int]], steps: Mapping[str, Sequence[str]], *,
            unlisted: int) -> list[StoredRecord]:
    """Of a run's links, newest first with their sizes, those whose files a verification
    reads (SqlStore.run_links): the newest signed by a listed keyid and the newest of
    each name the layout looks for; then, while they fit, older ones by a listed keyid,
    older ones of those names, and the others."""
    listed: dict[str, set[str]] = {}
    for step, keyids in steps.items():
        for keyid in keyids:
            listed.setdefault(link_file_name(step, keyid), set()).add(keyid.lower())
    first: list[StoredRecord] = []
    total = 0
    more: tuple[list[tuple[StoredRecord, int]], ...] = ([], [], [])  # in this order
    newer: dict[str, int] = {}  # of each name: how many newer ones were seen
    newer_listed: dict[str, int] = {}  # ... signed by a keyid the step lists
    others: dict[str, int] = {}
    for record, size in rows:
        name = record.file_name
        if name in listed:
            # its rank among those of its name, or if signed by a listed keyid, of those
            rank, tier = newer.get(name, 0), 1
            newer[name] = rank + 1
            if record.keyid.lower() in listed[name]:
                rank, tier = newer_listed.get(name, 0), 0
                newer_listed[name] = rank + 1
            if rank == 0:
                first.append(record)
                total += size
            elif rank < MAX_PER_NAME:
                more[tier].append((record, size))
        elif record.step in steps and (name in others or len(others) < unlisted):
            others[name] = others.get(name, 0) + 1
            if others[name] <= MAX_PER_NAME:
                more[2].append((record, size))
    for record, size in (pair for tier in more for pair in tier):
        if total + size <= MAX_RUN_CONTENT_BYTES:
            first.append(record)
            total += size
    return first


def _chunks(seqs: list[int], size: int = 500) -> list[list[int]]:
    return [seqs[start:start + size] for start in range(0, len(seqs), size)]


def _record(row: Sequence[Any], *, content: bool) -> StoredRecord:
    return StoredRecord(
        seq=int(row[0]), id=str(row[1]), kind=str(row[2]), run_id=str(row[3]),
        step=str(row[4]), keyid=str(row[5]), file_name=str(row[6]), origin=str(row[7]),
        caller=str(row[8]), stored_at=from_micros(int(row[9])),
        content=bytes(row[10]) if content else None)

