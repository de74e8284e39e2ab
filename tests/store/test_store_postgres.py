"""The attestation store on a real PostgreSQL (Debian's packages, a cluster made in a
temporary directory by the test), shared by two server processes on one SoftHSM token:
a pipeline recorded through both verifies at the gate from the artifact alone; the
database stopped under load and started again: no link was returned that is not stored,
every signature is accounted for in the audit trails (and in each server's
custody_store_withheld_total), and signing recovers by itself."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lifecycle.process_support import Replica, start_server, stop_server, within
from policy_support import open_policy
from prometheus_client.parser import text_string_to_metric_families

from custody_api.v1 import custody_pb2 as pb
from custody_server.audit_events import MemoryAuditSink
from custody_server.store import LinkQuery, NewRecord, StoreConfig, open_store

from .postgres_support import PostgresCluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_the_store_itself_on_postgres(postgres: PostgresCluster) -> None:
    """The same SQL as SQLite's: schema version, find a run, pages, retention."""
    audit = MemoryAuditSink()
    now = datetime(2026, 5, 1, tzinfo=UTC)
    store = open_store(StoreConfig(postgres_url=postgres.url), state_dir=Path("/nonexistent"),
                       audit=audit, clock=lambda: now)
    try:
        assert store.sql.schema_version() == 2
        assert postgres.psql("SELECT version, description FROM schema_version").split() == [
            "1|attestations", "2|run_step_index"]
        digest = hashlib.sha256(b"unit").hexdigest()
        item = NewRecord.link(content=b"unit-link", step="package", keyid="cd" * 32,
                              file_name="package.cdcdcdcd.link",
                              products={"app\0.tgz": {"sha256": digest}}, run_id="unit-run",
                              origin="signed", caller="unit")
        store.keep_signed([(item, "x"), (item, "x")])
        assert store.find_runs([f"sha256:{digest}"], {"package": ["cd" * 32]}) == ["unit-run"]
        assert store.has_product(f"sha256:{digest}", {"package": ["CD" * 32]})
        assert store.get(item.id[:8]).content == b"unit-link"
        assert [r.id for r in store.query(LinkQuery(run_id="unit-run"))] == [item.id]
        assert store.sweep(retention=timedelta(days=1), now=now + timedelta(days=2)) >= 1
        assert store.query(LinkQuery(run_id="unit-run")) == []
        assert [e.action for e in audit.events] == ["store-retention"]
    finally:
        store.sql.source.close()


CONFIG = """
[tls]
insecure = true

[store]
url = "{url}"

[metrics]
listen = "127.0.0.1:0"
"""


@pytest.fixture(scope="module")
def replicas(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Replica, Replica]]:
    """Two server processes, one SoftHSM token (the second one's hsm/ is the first one's),
    one PostgreSQL store."""
    base = tmp_path_factory.mktemp("replicas")
    config = base / "custody.toml"
    config.write_text(CONFIG.format(url=postgres.url))
    first_dir, second_dir = base / "a", base / "b"
    for directory in (first_dir, second_dir):
        directory.mkdir(mode=0o700)
        (directory / "policy.toml").write_text(open_policy("anonymous"))
    first = start_server(first_dir, config)
    (second_dir / "hsm").symlink_to(first_dir / "hsm")
    second = start_server(second_dir, config)
    yield first, second
    for replica in (first, second):
        stop_server(replica)


def _cli(replica: Replica, *args: str, cwd: Path, check: bool = True) -> Any:
    from interop.interop_support import Cli, agent_env

    cli = Cli(agent_env(server=replica.address, state_dir=None, home=cwd))
    return cli(args[0], "--plaintext", *args[1:], cwd=cwd, check=check)


def test_a_pipeline_through_two_replicas_verifies_from_the_artifact(
        replicas: tuple[Replica, Replica], postgres: PostgresCluster, tmp_path: Path) -> None:
    from interop.interop_support import CLONE, PACKAGE, demo_layout, write_template

    first, second = replicas
    run = ["--run-id", "pg-pipeline"]
    template = write_template(tmp_path)
    clone, edit, package, gate = (tmp_path / n for n in ("clone", "edit", "package", "gate"))
    for directory in (clone, edit, package, gate):
        directory.mkdir()
    _cli(first, *CLONE[:-1], *run, "--", "cp", "-r", str(template / "demo-project"), ".",
         cwd=clone)
    (edit / "demo-project").mkdir()
    (edit / "demo-project" / "foo.py").write_bytes(
        (clone / "demo-project" / "foo.py").read_bytes())
    _cli(second, "run", "-n", "update-version", *run, "-m", "demo-project", "-p",
         "demo-project", "--", "sh", "-c", "echo \"VERSION = 'pg'\" > demo-project/foo.py",
         cwd=edit)
    (package / "demo-project").mkdir()
    (package / "demo-project" / "foo.py").write_bytes(
        (edit / "demo-project" / "foo.py").read_bytes())
    _cli(first, *PACKAGE[:3], *run, *PACKAGE[3:], cwd=package)
    (gate / "layout.json").write_text(json.dumps(demo_layout(functionary="alias:build")))
    _cli(second, "sign-layout", "-l", "layout.json", "--key", "owner", "-o", "root.layout",
         cwd=gate)
    (gate / "layout.json").unlink()
    (gate / "demo-project.tar.gz").write_bytes((package / "demo-project.tar.gz").read_bytes())
    for replica in (first, second):  # either replica finds the run in the shared store
        where = gate / replica.state_dir.name
        where.mkdir()
        for name in ("root.layout", "demo-project.tar.gz"):
            (where / name).write_bytes((gate / name).read_bytes())
        result = _cli(replica, "verify", "-l", "root.layout", "--layout-key-alias", "owner",
                      "--artifact", "demo-project.tar.gz", cwd=where, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "links: run pg-pipeline, from the attestation store" in result.stdout
    assert postgres.psql("SELECT step FROM attestations WHERE run_id = 'pg-pipeline' "
                         "ORDER BY seq").split() == ["clone", "update-version", "package"]


@dataclass
class Load:
    """Threads signing links through both replicas, each result kept."""

    replicas: tuple[Replica, Replica]
    returned: dict[str, list[bytes]] = field(default_factory=lambda: {"a": [], "b": []})
    refused: dict[str, list[str]] = field(default_factory=lambda: {"a": [], "b": []})
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, replica: Replica, worker: int) -> None:
        name = replica.state_dir.name
        number = 0
        while not self.stop.is_set():
            number += 1
            request = pb.SignLinkRequest(
                step_name="build", command=["make"], run_id=f"load-{name}-{worker}",
                products=[pb.Artifact(path="app", digest={
                    "sha256": hashlib.sha256(f"{name}{worker}{number}".encode()).hexdigest()})])
            try:
                response = replica.custody.SignLink(request, timeout=30)
            except grpc.RpcError as error:
                with self.lock:
                    self.refused[name].append(f"{error.code().name}: {error.details()}")
                time.sleep(0.01)  # a refused call comes back at once: do not spin
                continue
            with self.lock:
                self.returned[name].append(response.signed)

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return (sum(map(len, self.returned.values())),
                    sum(map(len, self.refused.values())))

    def successes(self, name: str) -> int:
        with self.lock:
            return len(self.returned[name])


def _health(replica: Replica) -> int:
    status: int = health_pb2_grpc.HealthStub(replica.channel).Check(
        health_pb2.HealthCheckRequest(service="")).status
    return status


def _metrics(replica: Replica) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The replica's /metrics, read with prometheus_client's parser: (name, labels) ->
    value."""
    def announced() -> str | None:  # stderr is read on by a thread of process_support's
        match = re.search(r"metrics on port (\d+)", "".join(replica.output))
        return match[1] if match else None

    port, _ = within(30, announced)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _health_is(replica: Replica, status: int) -> None:
    within(30, lambda: True if _health(replica) == status else None)


def _successes_reach(load: Load, name: str, count: int) -> None:
    within(60, lambda: True if load.successes(name) >= count else None)


def test_postgres_stopped_under_load_loses_no_returned_link(
        replicas: tuple[Replica, Replica], postgres: PostgresCluster) -> None:
    audit_before = {r.state_dir.name: (len(r.audit_events("sign-link")),
                                       len(r.audit_events("store-link")))
                    for r in replicas}
    load = Load(replicas)
    threads = [threading.Thread(target=load.run, args=(replica, worker), daemon=True)
               for replica in replicas for worker in range(2)]
    for thread in threads:
        thread.start()
    try:
        within(60, lambda: True if load.counts()[0] >= 40 else None)
        postgres.stop(mode="immediate")  # as a crash: connections cut, no goodbye
        refused_at_stop = load.counts()[1]
        within(60, lambda: True if load.counts()[1] >= refused_at_stop + 20 else None)
        for replica in replicas:  # health says so
            _health_is(replica, health_pb2.HealthCheckResponse.NOT_SERVING)
        down = {name: load.successes(name) for name in ("a", "b")}
        postgres.start()
        for replica in replicas:  # signing recovers by itself on both, no restart
            name = replica.state_dir.name
            _successes_reach(load, name, down[name] + 20)
            _health_is(replica, health_pb2.HealthCheckResponse.SERVING)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    returned = {hashlib.sha256(content).hexdigest()
                for contents in load.returned.values() for content in contents}
    stored = set(postgres.psql("SELECT id FROM attestations WHERE run_id LIKE 'load-%'")
                 .split())
    assert returned <= stored, f"{len(returned - stored)} links returned but not stored"
    reasons = {reason.split(":")[0] for refusals in load.refused.values()
               for reason in refusals}
    assert reasons == {"UNAVAILABLE"}, reasons
    for replica in replicas:
        name = replica.state_dir.name
        signed_before, withheld_before = audit_before[name]
        signed = len(replica.audit_events("sign-link")) - signed_before
        withheld = [e for e in replica.audit_events("store-link")[withheld_before:]
                    if e["event"]["outcome"] == "failure"]
        # Every signature was either returned (and stored) or withheld with an entry.
        assert signed == len(load.returned[name]) + len(withheld), name
        assert len(load.refused[name]) == len(withheld), name
        # ... and counted (CustodyStoreWithholding): one per store-link failure entry this
        # server process wrote, from zero
        metrics = _metrics(replica)
        entries = [e for e in replica.audit_events("store-link")
                   if e["event"]["outcome"] == "failure"]
        assert metrics["custody_store_withheld_total", (("kind", "link"),)] == \
            len(entries) >= len(withheld), name
        assert metrics["custody_store_available", ()] == 1, name
