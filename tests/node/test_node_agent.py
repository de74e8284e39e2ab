"""The Node example agent (clients/node/examples/agent.ts) against the real server: it
hashes files, has Custody sign each step's link and verifies; the reference in-toto-verify
and Custody's Verify accept what it made, and a tampered product fails both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from in_toto.runlib import record_artifacts_as_dict
from venv_tools import venv_tool

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc

from .node_support import Agent

pytestmark = pytest.mark.slow

BUILD = ["sh", "-c", "cat src/a.txt src/lib/b.txt > app.txt"]
PACKAGE = ["tar", "-czf", "app.tar.gz", "app.txt"]


def layout() -> dict[str, Any]:
    """Two steps by the service key `build`; the final product is package's app.tar.gz."""
    step: dict[str, Any] = {"_type": "step", "threshold": 1, "pubkeys": ["alias:build"]}
    return {
        "_type": "layout",
        "expires": "2099-01-01T00:00:00Z",
        "readme": "the Node agent's chain",
        "keys": {},
        "steps": [
            {**step, "name": "build", "expected_command": BUILD,
             "expected_materials": [["ALLOW", "src/*"], ["DISALLOW", "*"]],
             "expected_products": [["CREATE", "app.txt"], ["DISALLOW", "*"]]},
            {**step, "name": "package", "expected_command": PACKAGE,
             "expected_materials": [["MATCH", "app.txt", "WITH", "PRODUCTS", "FROM", "build"],
                                    ["DISALLOW", "*"]],
             "expected_products": [["CREATE", "app.tar.gz"], ["DISALLOW", "*"]]},
        ],
        "inspect": [],
    }


@pytest.fixture(scope="module")
def signed_layout(channel: grpc.Channel) -> tuple[bytes, bytes]:
    """The layout signed by the service's owner key (SignLayout), and that key's PEM."""
    custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
    key_admin = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
    reply = custody.SignLayout(pb.SignLayoutRequest(
        layout=json.dumps(layout()).encode(), key_alias="owner"))
    key = key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias="owner")).key
    return reply.signed, key.public_key_pem.encode()


def write_sources(work: Path) -> None:
    """Sources with what in-toto records and what it leaves out (its default excludes)."""
    (work / "src" / "lib").mkdir(parents=True)
    (work / "src" / "a.txt").write_text("hello from a\n")
    (work / "src" / "lib" / "b.txt").write_text("and from b\n")
    (work / "src" / "with space.txt").write_text("a name with a space\n")
    (work / "src" / "linked.txt").symlink_to("a.txt")  # recorded with its target's bytes
    (work / "src" / "broken").symlink_to("nowhere")  # skipped
    (work / "src" / "old.txt~").write_text("a backup\n")  # excluded: *~
    (work / "src" / "mod.pyc").write_bytes(b"\0")  # excluded: *.pyc
    (work / "src" / "x.link").write_text("{}")  # excluded: *.link*
    (work / "src" / ".git").mkdir()  # excluded: .git, and not entered
    (work / "src" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")


def record_chain(agent: Agent, work: Path, *, tamper_between: bool = False) -> Path:
    """The two steps as two agent runs in one working directory; the links land there."""
    work.mkdir()
    write_sources(work)
    agent("run", "--step", "build", "-m", "src", "-p", "app.txt", "--record-streams",
          "--run-id", "node:1", "--", *BUILD, cwd=work)
    if tamper_between:
        with (work / "app.txt").open("a") as app:
            app.write("something evil\n")
    agent("run", "--step", "package", "-m", "app.txt", "-p", "app.tar.gz",
          "--run-id", "node:1", "--", *PACKAGE, cwd=work)
    return work


@pytest.fixture(scope="module")
def chain(agent: Agent, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_chain(agent, tmp_path_factory.mktemp("chain") / "work")


def gate(chain: Path, where: Path, layout: tuple[bytes, bytes], *, tamper: bool = False
         ) -> Path:
    """What a release gate holds: the links, the layout, its key and the tarball."""
    where.mkdir()
    for link in chain.glob("*.link"):
        shutil.copy(link, where / link.name)
    shutil.copy(chain / "app.tar.gz", where / "app.tar.gz")
    (where / "root.layout").write_bytes(layout[0])
    (where / "owner.pub").write_bytes(layout[1])
    if tamper:
        with (where / "app.tar.gz").open("ab") as tarball:
            tarball.write(b"junk appended after the build")
    return where


def reference_verify(where: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    return subprocess.run([venv_tool("in-toto-verify"), "-l", "root.layout",
                           "--verification-keys", "owner.pub"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def agent_verify(agent: Agent, where: Path, *extra: str) -> Any:
    return agent("verify", "-l", "root.layout", "--layout-key-alias", "owner", *extra,
                 cwd=where, check=False)


def link_payload(path: Path) -> dict[str, Any]:
    signed: dict[str, Any] = json.loads(path.read_bytes())["signed"]
    return signed


def test_the_agent_records_artifacts_as_in_toto_does(chain: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (build,) = chain.glob("build.*.link")
    (package,) = chain.glob("package.*.link")
    assert len(build.name.split(".")[1]) == 8  # build.<keyid8>.link
    recorded = link_payload(build)
    # The reference's own recording of the same files, from the same working directory.
    monkeypatch.chdir(chain)
    assert recorded["materials"] == record_artifacts_as_dict(["src"])
    assert set(recorded["materials"]) == {"src/a.txt", "src/lib/b.txt", "src/linked.txt",
                                          "src/with space.txt"}
    assert recorded["products"] == record_artifacts_as_dict(["app.txt"])
    assert recorded["command"] == BUILD
    assert recorded["byproducts"] == {"return-value": 0, "stdout": "", "stderr": ""}
    assert recorded["environment"].get("custody.run-id") == "node:1"
    assert link_payload(package)["materials"] == recorded["products"]


def test_reference_in_toto_and_custody_accept_the_agents_links(
        agent: Agent, chain: Path, signed_layout: tuple[bytes, bytes], tmp_path: Path) -> None:
    where = gate(chain, tmp_path / "gate", signed_layout)
    reference = reference_verify(where)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    ours = agent_verify(agent, where, "--artifact", "app.tar.gz")
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert ours.stdout.startswith(
        "PASS: root.layout verified (2 steps, 2 links, 1 artifacts checked)")
    # With the layout's key as a file instead of an alias, and the verdict as JSON.
    as_json = agent("verify", "-l", "root.layout", "--layout-key", "owner.pub", "--json",
                    cwd=where)
    verdict = json.loads(as_json.stdout)
    assert verdict["passed"] is True and verdict["failures"] == []
    assert sorted(verdict["links"]) == sorted(p.name for p in chain.glob("*.link"))


def test_a_product_changed_between_steps_fails_both(
        agent: Agent, signed_layout: tuple[bytes, bytes], tmp_path: Path) -> None:
    work = record_chain(agent, tmp_path / "work", tamper_between=True)
    where = gate(work, tmp_path / "gate", signed_layout)
    reference = reference_verify(where)
    assert reference.returncode == 1
    assert "app.txt" in reference.stderr and "package" in reference.stderr
    ours = agent_verify(agent, where, "--json")
    assert ours.returncode == 1, ours.stdout + ours.stderr
    (failure, *_) = json.loads(ours.stdout)["failures"]
    assert failure["stage"] == "step-rules" and failure["step"] == "package"
    assert "app.txt" in failure["paths"]


def test_a_changed_final_product_fails_at_the_artifact(
        agent: Agent, chain: Path, signed_layout: tuple[bytes, bytes], tmp_path: Path) -> None:
    where = gate(chain, tmp_path / "gate", signed_layout, tamper=True)
    ours = agent_verify(agent, where, "--artifact", "app.tar.gz")
    assert ours.returncode == 1, ours.stdout + ours.stderr
    assert ours.stdout.startswith("FAIL: root.layout did not verify (failed at artifact)")
    assert "app.tar.gz" in ours.stdout and "package" in ours.stdout


def test_a_failing_command_is_signed_and_its_exit_code_kept(agent: Agent, tmp_path: Path
                                                           ) -> None:
    result = agent("run", "--step", "lint", "--record-streams", "--", "sh", "-c",
                   "echo out; echo err >&2; exit 3", cwd=tmp_path, check=False)
    assert result.returncode == 3, result.stderr
    (link,) = tmp_path.glob("lint.*.link")
    assert link_payload(link)["byproducts"] == {"return-value": 3, "stdout": "out\n",
                                                "stderr": "err\n"}


def test_bad_input_and_a_refused_call_have_their_exit_codes(
        agent: Agent, tmp_path: Path, custody_server_address: str) -> None:
    assert agent("run", "--step", "build", cwd=tmp_path, check=False).returncode == 2
    assert agent("verify", "-l", "missing.layout", "--layout-key-alias", "owner",
                 cwd=tmp_path, check=False).returncode == 2
    # A step name the server refuses: INVALID_ARGUMENT, exit 4.
    refused = agent("run", "--step", "../escape", "--no-command", cwd=tmp_path, check=False)
    assert refused.returncode == 4, refused.stderr
    assert "InvalidArgument" in refused.stderr
    assert not list(tmp_path.rglob("*.link"))


def test_no_answer_without_the_client_certificate_or_server(agent: Agent, tmp_path: Path
                                                          ) -> None:
    """The server requires a client certificate: without the local TLS files (and so with
    the system's CAs, which do not know the server's) or with the CA only, and with no
    server at the address, nothing is signed: exit 3, as the custody CLI's."""
    state = Path(agent.env["CUSTODY_STATE_DIR"])
    without = {k: v for k, v in agent.env.items() if k != "CUSTODY_STATE_DIR"}
    no_files = Agent(agent.node, agent.script, without)
    ca_only = Agent(agent.node, agent.script,
                    {**without, "CUSTODY_CA": str(state / "tls" / "ca.pem")})
    for each in (no_files, ca_only):
        result = each("run", "--step", "build", "--no-command", cwd=tmp_path, check=False)
        assert result.returncode == 3, result.stderr
        assert "no answer from the server" in result.stderr
    down = agent("run", "--step", "build", "--no-command", "--server", "127.0.0.1:1",
                 cwd=tmp_path, check=False)
    assert down.returncode == 3, down.stderr
    assert not list(tmp_path.rglob("*.link"))


@pytest.mark.parametrize("ci", [
    {"GITHUB_RUN_ID": "41", "GITHUB_REPOSITORY": "acme/app",
     "GITHUB_SERVER_URL": "https://ghe.example:8443"},
    {"GITHUB_RUN_ID": "42"},
    {"CI_PIPELINE_ID": "43", "CI_SERVER_HOST": "gitlab.example", "CI_PROJECT_PATH": "g/s/app"},
    {"CI_PIPELINE_ID": "44", "CI_SERVER_HOST": "gitlab.example"},
], ids=["github", "github-bare", "gitlab", "gitlab-no-project"])
def test_the_agent_takes_the_ci_run_id_as_the_custody_cli_does(
        agent: Agent, tmp_path: Path, ci: dict[str, str]) -> None:
    """One run, whichever agent records a step: a Node job and a Python job of one
    pipeline must file their links under the same id."""
    from custody_client.run_ids import run_id

    env = {name: value for name, value in agent.env.items()
           if not name.startswith(("GITHUB_", "CI_", "CUSTODY_RUN_ID"))}
    job = Agent(agent.node, agent.script, {**env, **ci})
    (tmp_path / "out.txt").write_text("made\n")
    job("run", "-n", "ci-run-id", "-p", "out.txt", "--no-command", cwd=tmp_path)
    (link,) = tmp_path.glob("ci-run-id.*.link")
    assert link_payload(link)["environment"]["custody.run-id"] == run_id(None, ci)
