"""One `custody verify`, one recorded Verify: the audit trail and the metrics tell the truth.

The CLI learns which inspections to run from plans (Verify with `plan`), which write no
audit entry and count no verdict, then sends the one Verify that is recorded. Each failure
is recorded and counted at its own stage: a tampered link is not a missing one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from policy_support import open_policy

from custody_server.app import RunningServer, build_server
from custody_server.audit_events import AuditEvent, MemoryAuditSink
from custody_server.config import PolicyConfig, ServerConfig, TlsConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.lifecycle.settings import LifecycleSettings
from custody_server.metrics import VERDICT_STAGES, ServiceMetrics

from .interop_support import Cli, agent_env, final_product_dir
from .test_cli_demo_chain import record_chain_with_custody, sign_demo_layout

pytestmark = pytest.mark.slow


@dataclass
class Watched:
    cli: Cli
    audit: MemoryAuditSink
    metrics: ServiceMetrics
    running: RunningServer

    def verdicts(self) -> list[AuditEvent]:
        return [e for e in self.audit.events if e.action == "verify"]

    def counts(self) -> dict[tuple[str, str], float]:
        """custody_verifications_total by (result, stage), the zeros left out."""
        series = [("passed", ""), ("error", "request"),
                  *(("failed", stage) for stage in VERDICT_STAGES)]
        counted = {(r, s): self.metrics.sample("custody_verifications_total", result=r,
                                               stage=s) for r, s in series}
        assert None not in counted.values()  # every series exists from the start
        return {key: value for key, value in counted.items() if value}


@pytest.fixture(scope="module")
def watched(keystore: Pkcs11KeyStore, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Watched]:
    state = tmp_path_factory.mktemp("counted-server")
    keys = KeyRing(keystore)
    for alias in ("build", "owner"):
        if not keys.exists(alias):
            keys.create(alias, KeyAlgorithm.ECDSA_P256)
    (state / "policy.toml").write_text(open_policy("anonymous"))
    config = ServerConfig(listen="127.0.0.1:0", state_dir=state, tls=TlsConfig(insecure=True),
                          policy=PolicyConfig(file=state / "policy.toml"),
                          lifecycle=LifecycleSettings(scheduler=False))
    audit = MemoryAuditSink()
    metrics = ServiceMetrics(process=False)
    running = build_server(config=config, keys=keys, audit=audit, metrics=metrics)
    cli = Cli(agent_env(server=f"127.0.0.1:{running.port}", state_dir=None,
                        home=tmp_path_factory.mktemp("home")))
    yield Watched(cli=cli, audit=audit, metrics=metrics, running=running)
    running.stop(grace=1).wait()


@pytest.fixture(scope="module")
def chain(watched: Watched, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, tuple[bytes, bytes]]:
    """The demo chain recorded once (links, tarball), and its signed layout."""
    work = tmp_path_factory.mktemp("chain")
    layout = sign_demo_layout(watched.cli, work, envelope="metablock")
    return record_chain_with_custody(watched.cli, work, tamper=False), layout


def verify_once(watched: Watched, chain: tuple[Path, tuple[bytes, bytes]], work: Path,
                change: Callable[[Path], None] | None = None
                ) -> tuple[Any, list[AuditEvent], dict[tuple[str, str], float]]:
    """`custody verify --json` in a fresh final-product directory (after `change`); its
    verdict, and the verify entries and counts it added."""
    functionary, layout = chain
    final = final_product_dir(work, "final", functionary_dir=functionary, layout=layout[0],
                              owner_pub=layout[1])
    if change is not None:
        change(final)
    entries, counts = len(watched.verdicts()), watched.counts()
    result = watched.cli("verify", "-l", "root.layout", "--layout-keys", "owner.pub",
                         "--json", cwd=final, check=False)
    verdict = json.loads(result.stdout)
    assert result.returncode == (0 if verdict["passed"] else 1), result.stderr
    added = {key: value - counts.get(key, 0.0) for key, value in watched.counts().items()
             if value != counts.get(key, 0.0)}
    return verdict, watched.verdicts()[entries:], added


def test_a_passing_verify_with_an_inspection_is_one_success(
        watched: Watched, chain: tuple[Path, tuple[bytes, bytes]], tmp_path: Path) -> None:
    verdict, entries, added = verify_once(watched, chain, tmp_path)
    assert verdict["passed"] and verdict["inspections_run"] == ["untar"]
    assert [(e.outcome, e.details["passed"], e.details["failure_stage"]) for e in entries] \
        == [("success", True, "")]
    assert entries[0].details["inspection_links"] == 1  # the recorded one saw the inspection
    assert added == {("passed", ""): 1}


def _link(final: Path, step: str) -> Path:
    [path] = final.glob(f"{step}.*.link")
    return path


def _edit_link(step: str, edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def change(final: Path) -> None:
        path = _link(final, step)
        document = json.loads(path.read_bytes())
        edit(document)
        path.write_text(json.dumps(document))
    return change


def _tamper_products(document: dict[str, Any]) -> None:
    document["signed"]["products"]["demo-project.tar.gz"] = {"sha256": "0" * 64}


def _signed_by_another(document: dict[str, Any]) -> None:
    for signature in document["signatures"]:
        signature["keyid"] = "a" * 64


def _inspection_fails(final: Path) -> None:
    (final / "demo-project.tar.gz").write_bytes(b"not a tarball")


@pytest.mark.parametrize(("change", "stage"), [
    pytest.param(_edit_link("package", _tamper_products), "link-signature", id="bad-signature"),
    pytest.param(_edit_link("package", _signed_by_another), "unauthorized-signer",
                 id="unauthorized-signer"),
    pytest.param(lambda final: _link(final, "package").unlink(), "missing-link",
                 id="missing-link"),
    pytest.param(_inspection_fails, "inspections", id="inspection"),
    pytest.param(lambda final: (final / "unexpected.txt").write_text("x"), "inspection-rules",
                 id="inspection-rules"),
])
def test_a_failing_verify_is_one_failure_at_its_stage(
        watched: Watched, chain: tuple[Path, tuple[bytes, bytes]], tmp_path: Path,
        change: Callable[[Path], None], stage: str) -> None:
    verdict, entries, added = verify_once(watched, chain, tmp_path, change)
    assert not verdict["passed"]
    assert [(e.outcome, e.details["failure_stage"]) for e in entries] == [("failure", stage)]
    assert added == {("failed", stage): 1}


def test_step_rules_are_their_own_stage(watched: Watched, tmp_path: Path) -> None:
    """A chain tampered with between steps (valid signatures, wrong artifacts)."""
    work = tmp_path / "work"
    work.mkdir()
    layout = sign_demo_layout(watched.cli, work, envelope="metablock")
    functionary = record_chain_with_custody(watched.cli, work, tamper=True)
    verdict, entries, added = verify_once(watched, (functionary, layout), tmp_path)
    assert verdict["inspections_run"] == []  # nothing from a failing chain is run
    assert [(e.outcome, e.details["failure_stage"]) for e in entries] \
        == [("failure", "step-rules")]
    assert added == {("failed", "step-rules"): 1}
    shutil.rmtree(work)
