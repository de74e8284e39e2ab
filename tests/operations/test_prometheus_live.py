"""A real Prometheus (Debian's binary, its own config and storage in a temp dir) scrapes a
real custody-server process, evaluates deploy/prometheus/custody-rules.yml, and answers
every recording rule and every query of deploy/grafana/custody.json with data. Every
metric a rule or a panel names must be in the server's own exposition: a query naming a
metric the server does not export fails here. A release gate's verdicts move the store's
SLIs, as recorded by the rules, to the values they stand for."""

from __future__ import annotations

import hashlib
import json
import math
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client.parser import text_string_to_metric_families

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server.tls_bootstrap import LocalTls, ensure_local_tls, issue_crl, local_tls_dir

from .ops_support import ServerProcess
from .prometheus_support import (
    RULES,
    PanelQuery,
    dashboard_queries,
    load_rules,
    metric_names,
    require_tool,
)

T = TypeVar("T")
WAIT_SECONDS = 90.0


def until(what: str, probe: Callable[[], T | None], seconds: float = WAIT_SECONDS) -> T:
    """Poll `probe` until it returns something; fail naming `what` at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        result = probe()
        if result is not None:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@dataclass
class Stack:
    server: ServerProcess
    state: Path
    grpc_port: int
    metrics_port: int
    prometheus: subprocess.Popen[bytes]
    api: str  # http://127.0.0.1:PORT

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.api}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), (expr, data)
        return data["result"] if data["resultType"] == "vector" else [data["result"]]

    def exposition(self) -> set[str]:
        """The sample names of the server's own /metrics, read with prometheus_client."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {sample.name for family in text_string_to_metric_families(text)
                for sample in family.samples}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def open_channel(state: Path, port: int) -> grpc.Channel:
    """mTLS with the server's local client certificate."""
    tls = LocalTls(local_tls_dir(state))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_cert.read_bytes(), private_key=tls.client_key.read_bytes(),
        certificate_chain=tls.client_cert.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def make_traffic(state: Path, port: int) -> None:
    """A key in its overlap window (a rotation), signed links, a Verify verdict."""
    with open_channel(state, port) as channel:
        admin: Any = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
        custody: Any = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
        admin.RotateKey(pb.RotateKeyRequest(alias="build", overlap=Duration(seconds=3600)),
                        timeout=30)
        for _ in range(3):
            custody.SignLink(pb.SignLinkRequest(step_name="build"), timeout=30)
        with pytest.raises(grpc.RpcError):  # a layout that does not parse: an error verdict
            custody.Verify(pb.VerifyRequest(layout=b"{}"), timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus-live")
    state = tmp / "state"
    state.mkdir(mode=0o700)
    files, _ = ensure_local_tls(state)
    crl = tmp / "clients.crl"  # so that custody_crl_next_update_timestamp_seconds exists
    crl.write_bytes(issue_crl(files.authority(), revoked=[], now=datetime.now(UTC)))
    config = tmp / "custody.toml"
    config.write_text(f'state_dir = "{state}"\nlisten = "127.0.0.1:0"\n\n'
                      f'[tls]\ncrl_file = "{crl}"\n\n'
                      '[lifecycle.rotation.build]\nperiod = "90d"\n')
    server = ServerProcess("--config", str(config), "--metrics-listen", "127.0.0.1:0",
                           "--audit-checkpoint-seconds", "1")
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        metrics_port = int(server.wait_for(r"metrics on port (\d+)"))
        grpc_port = int(server.wait_for(r"listening on [\d.]+:(\d+)"))
        make_traffic(state, grpc_port)
        api_port = free_port()
        (tmp / "prometheus.yml").write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "custody", "static_configs": [
                {"targets": [f"127.0.0.1:{metrics_port}"]}]}],
        }))
        log = (tmp / "prometheus.log").open("wb")
        prometheus = subprocess.Popen(
            [prometheus_binary, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{api_port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        stack = Stack(server=server, state=state, grpc_port=grpc_port,
                      metrics_port=metrics_port, prometheus=prometheus,
                      api=f"http://127.0.0.1:{api_port}")

        def ready() -> bool | None:
            assert prometheus is not None
            assert prometheus.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{stack.api}/-/ready", timeout=2) as response:
                    return True if response.status == 200 else None
            except OSError:
                return None

        until("Prometheus to be ready", ready)
        yield stack
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        assert server.terminate() == 0


def test_prometheus_scrapes_the_server(stack: Stack) -> None:
    def scraped() -> dict[str, Any] | None:
        targets = stack.get("/api/v1/targets")["activeTargets"]
        up = [target for target in targets if target["health"] == "up"]
        return up[0] if up else None

    target = until("the custody target to be up", scraped)
    assert target["labels"]["job"] == "custody"
    assert target["scrapeUrl"] == f"http://127.0.0.1:{stack.metrics_port}/metrics"
    assert stack.query('up{job="custody"}')[0]["value"][1] == "1"


def wait_for_data(stack: Stack, queries: list[PanelQuery]) -> None:
    """Every query answers with at least one sample (rates need two scrapes)."""
    def all_answered() -> bool | None:
        return True if all(stack.query(query.expr) for query in queries) else None

    try:
        until("every query to return data", all_answered)
    except AssertionError:
        empty = [f"{query.where}: {query.expr}" for query in queries
                 if not stack.query(query.expr)]
        raise AssertionError("queries without data:\n" + "\n".join(empty)) from None


def test_every_recording_rule_evaluates_to_data(stack: Stack) -> None:
    recorded = [rule for rule in load_rules() if not rule.alert]
    wait_for_data(stack, [PanelQuery(rule.name, rule.name) for rule in recorded])
    rules = {rule["name"]: rule for group in stack.get("/api/v1/rules")["groups"]
             for rule in group["rules"]}
    for rule in load_rules():
        assert rules[rule.name]["health"] == "ok", rules[rule.name]


def test_every_dashboard_query_evaluates_to_data(stack: Stack) -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    wait_for_data(stack, queries)


def test_every_metric_named_in_rules_and_dashboard_is_exported(stack: Stack) -> None:
    exported = stack.exposition()
    recorded = {rule.name for rule in load_rules() if not rule.alert}
    known = exported | recorded | {"up"}  # up: Prometheus' own, per target
    named = {f"rule {rule.name}": metric_names(rule.expr) for rule in load_rules()}
    named |= {f"panel {query.where}: {query.expr}": metric_names(query.expr)
              for query in dashboard_queries()}
    unknown = {where: sorted(names - known) for where, names in named.items()
               if names - known}
    assert not unknown, f"metrics the server does not export: {unknown}"
    assert all(named.values()), "a query that names no metric"
    # and Prometheus stored what the server exported under the same names
    stored = set(stack.get("/api/v1/label/__name__/values"))
    assert {name for names in named.values() for name in names} <= stored | {"up"}


GATE_LAYOUT = {
    "_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {}, "inspect": [],
    "steps": [{"_type": "step", "name": "package", "threshold": 1, "pubkeys": ["alias:build"],
               "expected_command": [], "expected_materials": [],
               "expected_products": [["CREATE", "app.tgz"], ["DISALLOW", "*"]]}]}


def test_a_release_gate_moves_the_store_slis(stack: Stack) -> None:
    """One artifact released with its link in the store, one tampered artifact refused:
    Prometheus records every step linked, half of the gate's artifacts passed, and audit
    coverage 1 (a refused artifact does not count against it)."""
    def scraped_before_the_gate() -> bool | None:  # a rate needs the zero before the rise
        return True if stack.query("custody_verified_artifacts_total") else None

    until("a scrape of the SLI counters at zero", scraped_before_the_gate)

    def artifact(text: str) -> Any:
        return pb.Artifact(path="app.tgz", digest={"sha256": hashlib.sha256(
            text.encode()).hexdigest()})

    with open_channel(stack.state, stack.grpc_port) as channel:
        custody: Any = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
        layout = custody.SignLayout(pb.SignLayoutRequest(
            layout=json.dumps(GATE_LAYOUT).encode(), key_alias="owner"), timeout=30).signed
        custody.SignLink(pb.SignLinkRequest(step_name="package", run_id="live-gate",
                                            products=[artifact("app")]), timeout=30)

        def gate(text: str, **fields: Any) -> bool:
            verdict = custody.Verify(pb.VerifyRequest(
                layout=layout, layout_keys=[pb.TrustedKey(alias="owner")],
                artifacts=[artifact(text)], stored_links=True, **fields), timeout=30)
            return bool(verdict.passed)

        assert gate("app")  # the run found by its final product, from the store
        assert not gate("app, changed after the build", run_id="live-gate")

    expected = {"job:custody_verified_steps_linked:ratio_rate1h": 1.0,
                "job:custody_verified_artifacts_passed:ratio_rate1h": 0.5,
                "job:custody_verified_artifacts_retained:ratio_rate1h": 1.0}

    def recorded() -> dict[str, float] | None:
        values = {}
        for name in expected:
            result = stack.query(name)
            if not result:
                return None
            values[name] = float(result[0]["value"][1])
        return values if all(math.isclose(values[n], expected[n]) for n in expected) \
            else None

    try:
        until("the store's SLIs to be recorded from the gate's verdicts", recorded)
    except AssertionError:
        raise AssertionError(f"recorded: { {n: stack.query(n) for n in expected} }") from None
