"""Attestation store benchmark: store and find the links of 10,000 pipeline runs, and the
gate's `--artifact` lookup at that size.

Each run has three signed links, as the in-toto demo: clone (20 products), update-version
(20 materials, 20 products) and package (20 materials, the tarball); Metablock, ECDSA
P-256, each link a real file of about 3 KB. For SQLite (the embedded default,
synchronous FULL) and PostgreSQL (a cluster made by tests/store/postgres_support.py from
Debian's packages, when there is one):

  - store: every link in a transaction of its own, as SignLink stores it (the added cost
    per signature), and 100 links per transaction, as a SignLinks call of 100;
  - find: what `custody verify --artifact` asks of the store (Attestations.links_for: the
    layout's final steps, the newest run whose package link made the tarball, that run's
    links as a link directory) for random runs, at 100 runs stored and at 10,000; beside it
    the verification of the same links (custody_core.verify_supply_chain), the baseline a
    lookup adds to;
  - list: the links of a run, and the links with a product digest (ListLinks);
  - the database's size.

    python benchmarks/bench_store.py [--runs 10000] [--lookups 300] [--no-postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from repo_paths import add_to_path

add_to_path("core", "client", "server", "tests")

from custody_core.envelope import sign_metablock  # noqa: E402
from custody_core.final_product import GivenArtifact  # noqa: E402
from custody_core.link import build_link, link_file_name  # noqa: E402
from custody_core.software_signer import SoftwareSigner  # noqa: E402
from custody_core.supply_chain import verify_supply_chain  # noqa: E402
from custody_server.attestations import Attestations  # noqa: E402
from custody_server.audit_events import MemoryAuditSink  # noqa: E402
from custody_server.store import (  # noqa: E402
    AttestationStore,
    LinkQuery,
    NewRecord,
    StoreConfig,
    open_store,
)

FILES = 20
NOW = datetime(2026, 5, 1, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Chain:
    """The signer, the layout and the links of run `n` (made on demand, deterministic)."""

    def __init__(self) -> None:
        self.owner = SoftwareSigner.generate("ecdsa-sha2-nistp256")
        self.build = SoftwareSigner.generate("ecdsa-sha2-nistp256")
        keyid = self.build.public_key.keyid
        step: dict[str, Any] = {"_type": "step", "threshold": 1, "pubkeys": [keyid],
                                "expected_command": []}
        layout = {
            "_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "bench",
            "keys": {keyid: {**self.build.public_key.to_dict(), "keyid": keyid}},
            "steps": [
                {**step, "name": "clone", "expected_materials": [],
                 "expected_products": [["CREATE", "src/*"], ["DISALLOW", "*"]]},
                {**step, "name": "update-version",
                 "expected_materials": [["MATCH", "src/*", "WITH", "PRODUCTS", "FROM",
                                         "clone"], ["DISALLOW", "*"]],
                 "expected_products": [["ALLOW", "src/*"], ["DISALLOW", "*"]]},
                {**step, "name": "package",
                 "expected_materials": [["MATCH", "src/*", "WITH", "PRODUCTS", "FROM",
                                         "update-version"], ["DISALLOW", "*"]],
                 "expected_products": [["CREATE", "app.tar.gz"], ["DISALLOW", "*"]]}],
            "inspect": []}
        self.layout = sign_metablock(layout, [self.owner])

    def links(self, n: int) -> list[NewRecord]:
        cloned = {f"src/file{i}.py": {"sha256": sha(f"{n}/{i}")} for i in range(FILES)}
        edited = {**cloned, "src/file0.py": {"sha256": sha(f"{n}/edited")}}
        tarball = {"app.tar.gz": {"sha256": self.tarball(n)}}
        steps = (("clone", {}, cloned), ("update-version", cloned, edited),
                 ("package", edited, tarball))
        keyid = self.build.public_key.keyid
        records = []
        for name, materials, products in steps:
            content = sign_metablock(build_link(
                name=name, command=["make", name], materials=materials, products=products,
                byproducts={"return-value": 0, "stdout": "", "stderr": ""},
                environment={"custody.run-id": f"run-{n}"}), [self.build], compact=True)
            records.append(NewRecord.link(
                content=content, step=name, keyid=keyid, file_name=link_file_name(name, keyid),
                products=products, run_id=f"run-{n}", origin="signed", caller="bench"))
        return records

    @staticmethod
    def tarball(n: int) -> str:
        return sha(f"tarball {n}")


def quantiles(values: list[float]) -> str:
    cuts = statistics.quantiles(sorted(values), n=100)
    return f"p50 {cuts[49] * 1000:.2f} ms, p99 {cuts[98] * 1000:.2f} ms"


def timed(call: Callable[[], Any]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def fill(store: AttestationStore, chain: Chain, runs: range, *, per_transaction: int
         ) -> list[float]:
    """Store the runs' links, `per_transaction` to a transaction; each one's time."""
    times = []
    clock = iter(NOW + timedelta(seconds=n) for n in range(10**9))
    pending: list[NewRecord] = []

    def flush() -> None:
        times.append(timed(lambda: store.sql.insert(pending, stored_at=next(clock))))
        pending.clear()

    for n in runs:
        for record in chain.links(n):
            pending.append(record)
            if len(pending) == per_transaction:
                flush()
    if pending:
        flush()
    return times


def lookups(store: AttestationStore, chain: Chain, runs: int, count: int) -> dict[str, Any]:
    attestations = Attestations(store=store, keys=None)  # type: ignore[arg-type]  # unused
    keys = {chain.owner.public_key.keyid: chain.owner.public_key}
    picks = random.Random(7).sample(range(runs), min(count, runs))
    found, verified, by_run, by_digest = [], [], [], []
    for n in picks:
        artifact = GivenArtifact("dist/app.tar.gz", {"sha256": chain.tarball(n)})
        began = time.perf_counter()
        stored = attestations.links_for(layout=chain.layout, artifacts=[artifact], run_id="")
        found.append(time.perf_counter() - began)
        assert stored.run_id == f"run-{n}" and len(stored.links) == 3, stored.run_id
        began = time.perf_counter()
        verdict = verify_supply_chain(layout=chain.layout, layout_keys=keys,
                                      links=stored.links, now=NOW, artifacts=[artifact])
        verified.append(time.perf_counter() - began)
        assert verdict.passed, verdict.failures
        by_run.append(timed(lambda n=n: store.query(LinkQuery(run_id=f"run-{n}"))))
        by_digest.append(timed(lambda n=n: store.query(LinkQuery(
            digest=f"sha256:{chain.tarball(n)}"))))
    return {"found": found, "verified": verified, "by_run": by_run, "by_digest": by_digest}


def bench(name: str, store: AttestationStore, size: Callable[[], int], *, runs: int,
          count: int) -> None:
    chain = Chain()
    print(f"\n== {name}")
    small = min(100, runs)
    single = fill(store, chain, range(small), per_transaction=1)
    at_small = lookups(store, chain, small, min(count, small))
    single += fill(store, chain, range(small, runs // 2), per_transaction=1)
    batched = fill(store, chain, range(runs // 2, runs), per_transaction=100)
    links = 3 * runs
    print(f"stored {links} links of {runs} runs: one per transaction "
          f"{len(single) / sum(single):.0f} links/s ({quantiles(single)}); 100 per "
          f"transaction {100 * len(batched) / sum(batched):.0f} links/s")
    at_size = lookups(store, chain, runs, count)
    for label, result in ((f"{small} runs", at_small), (f"{runs} runs", at_size)):
        print(f"--artifact lookup at {label}: {quantiles(result['found'])}; verifying the "
              f"3 links found: {quantiles(result['verified'])}")
    print(f"ListLinks by run: {quantiles(at_size['by_run'])}; by product digest: "
          f"{quantiles(at_size['by_digest'])}")
    print(f"database size: {size() / 2**20:.1f} MiB ({size() / links:.0f} bytes per link)")


def sqlite_run(runs: int, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(StoreConfig(), state_dir=Path(tmp), audit=MemoryAuditSink(),
                           clock=lambda: NOW)

        def size() -> int:
            return sum(p.stat().st_size for p in Path(tmp).glob("store.sqlite3*"))

        bench("SQLite (synchronous FULL, WAL)", store, size, runs=runs, count=count)
        store.sql.source.close()


def postgres_run(runs: int, count: int) -> None:
    from store.postgres_support import PostgresCluster, PostgresMissing

    try:
        cluster = PostgresCluster.create()
    except PostgresMissing as missing:
        print(f"\n== PostgreSQL: skipped ({missing})")
        return
    try:
        store = open_store(StoreConfig(postgres_url=cluster.url), state_dir=Path("/"),
                           audit=MemoryAuditSink(), clock=lambda: NOW)

        def size() -> int:
            return int(cluster.psql("SELECT pg_database_size('custody')").strip())

        version = cluster.psql("SHOW server_version").strip()
        bench(f"PostgreSQL {version} (unix socket, fsync on)", store, size, runs=runs,
              count=count)
        store.sql.source.close()
    finally:
        cluster.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; {args.runs} runs, {args.lookups} lookups")
    sqlite_run(args.runs, args.lookups)
    if not args.no_postgres:
        postgres_run(args.runs, args.lookups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
