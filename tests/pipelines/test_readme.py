"""README "In CI": its GitHub workflow and GitLab pipeline use the actions' real inputs and
the template's real jobs and variables, and their Custody jobs run: `make dist` recorded
by the build job, the tarball gated by the release job, against the session's server."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from interop.interop_support import Cli

from .ci_runners import (
    GITHUB_ACTIONS,
    GITLAB_TEMPLATE,
    ROOT,
    SCRIPTS,
    GithubAction,
    GitlabTemplate,
    JobResult,
    ci_run_id,
)
from .pipeline_support import CiPipeline, Connection, input_variables, job_env
from .template_rules import GITLAB_JOB_KEYWORDS, TEMPLATE_VARIABLES, script_variables

README = ROOT / "README.md"
PLACEHOLDER_SERVER = "custody.example.com:50051"
USES = re.compile(r"(?P<repo>[\w.-]+/custody)/integrations/github/(?P<action>[\w-]+)@"
                  r"(?P<ref>[\w.-]+)")
SECRET = re.compile(r"\$\{\{\s*secrets\.(\w+)\s*\}\}")


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## In CI\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def snippets(server: str = PLACEHOLDER_SERVER) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the GitHub workflow, the GitLab pipeline) of the section, the server's address
    put in the placeholder's place."""
    blocks = re.findall(r"```yaml\n(.*?)```", section(), flags=re.DOTALL)
    parsed = [yaml.safe_load(block.replace(PLACEHOLDER_SERVER, server)) for block in blocks]
    (github,) = [block for block in parsed if "jobs" in block]
    (gitlab,) = [block for block in parsed if "include" in block]
    return github, gitlab


def custody_steps(workflow: dict[str, Any], job: str) -> list[tuple[str, dict[str, str]]]:
    """(action name, with) of each step of `job` that uses a Custody action."""
    found = []
    for step in workflow["jobs"][job]["steps"]:
        match = USES.fullmatch(step.get("uses", ""))
        if match:
            found.append((match["action"], {k: str(v) for k, v in step["with"].items()}))
    return found


def gitlab_jobs(pipeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in pipeline.items()
            if isinstance(job, dict) and "extends" in job}


def test_the_github_snippet_uses_the_actions_with_their_inputs() -> None:
    workflow, gitlab = snippets()
    used = set()
    for job in workflow["jobs"]:
        for step in workflow["jobs"][job]["steps"]:
            if "custody" in step.get("uses", ""):
                match = USES.fullmatch(step["uses"])
                assert match, step["uses"]
                used.add(match["action"])
                action = GithubAction(match["action"])
                given = set(step["with"])
                assert given <= set(action.inputs), given - set(action.inputs)
                required = {name for name, spec in action.inputs.items()
                            if spec.get("required")}
                assert required <= given, required - given
    assert used == {path.parent.name for path in GITHUB_ACTIONS.glob("*/action.yml")}
    # Both platforms take Custody from the same repository and tag.
    match = USES.search(str(workflow))
    assert match
    assert f"/{match['repo']}/{match['ref']}/" in gitlab["include"][0]["remote"]


def test_the_gitlab_snippet_includes_the_template_and_extends_its_jobs() -> None:
    _, pipeline = snippets()
    (include,) = pipeline["include"]
    remote = include["remote"]
    relative = GITLAB_TEMPLATE.relative_to(ROOT).as_posix()
    assert remote.endswith(f"/{relative}"), remote
    template = GitlabTemplate()
    # The scripts come from where the template was included from.
    scripts_url = template.spec["variables"]["CUSTODY_SCRIPTS_URL"]
    assert scripts_url == remote.removesuffix(relative) + SCRIPTS.relative_to(ROOT).as_posix()
    documented, _ = script_variables()
    known = documented | TEMPLATE_VARIABLES
    assert set(pipeline["variables"]) <= known
    required = {kind: {input_variables(GithubAction(kind))[name]
                       for name, spec in GithubAction(kind).inputs.items()
                       if spec.get("required")} for kind in ("record", "gate")}
    extended = set()
    for name, job in gitlab_jobs(pipeline).items():
        assert set(job) <= GITLAB_JOB_KEYWORDS, (name, set(job) - GITLAB_JOB_KEYWORDS)
        assert job["extends"] in template.hidden_jobs, job["extends"]
        extended.add(job["extends"])
        assert set(job["variables"]) <= known, set(job["variables"]) - known
        kind = job["extends"].removeprefix(".custody-")
        assert required[kind] <= set(job["variables"]), (name, required[kind])
    assert extended == {".custody-record", ".custody-gate"}


@pytest.fixture(scope="module")
def build_layout(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The snippets' supply chain: one step, `build` (make dist), signed by the owner."""
    work = tmp_path_factory.mktemp("readme-layout")
    layout = {
        "_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "README In CI",
        "keys": {}, "inspect": [],
        "steps": [{"_type": "step", "name": "build", "threshold": 1,
                   "pubkeys": ["alias:build"], "expected_command": ["make", "dist"],
                   "expected_materials": [["ALLOW", "src/*"], ["ALLOW", "Makefile"],
                                          ["DISALLOW", "*"]],
                   "expected_products": [["CREATE", "dist/app.tar.gz"],
                                         ["DISALLOW", "*"]]}]}
    (work / "layout.json").write_text(json.dumps(layout))
    cli("sign-layout", "-l", "layout.json", "--key", "owner", "-o", "root.layout", cwd=work)
    return (work / "root.layout").read_bytes()


@pytest.fixture
def tools(custody_bin: Path, tmp_path: Path) -> Path:
    """`custody`, and a `make` whose `dist` packs src/ (no make needed here)."""
    directory = tmp_path / "tools"
    directory.mkdir()
    shutil.copy(custody_bin / "custody", directory / "custody")
    (directory / "make").write_text("#!/bin/sh\n[ \"$1\" = dist ] || exit 2\n"
                                    "mkdir -p dist && tar czf dist/app.tar.gz src\n")
    (directory / "make").chmod(0o755)
    return directory


def checkout(where: Path, layout: bytes) -> Path:
    """The repository: sources, Makefile, the signed layout."""
    (where / "src").mkdir(parents=True)
    (where / "src" / "app.py").write_text("print('app')\n")
    (where / "Makefile").write_text("dist:\n\ttar czf dist/app.tar.gz src\n")
    (where / "root.layout").write_bytes(layout)
    return where


def test_the_github_snippet_runs(connection: Connection, build_layout: bytes, tools: Path,
                                 tmp_path: Path) -> None:
    workflow, _ = snippets(server=connection.server)
    secrets = {"CUSTODY_CA": connection.ca.read_text(),
               "CUSTODY_CERT": connection.cert.read_text(),
               "CUSTODY_KEY": connection.key.read_text()}
    pipeline = CiPipeline(flavour="github", connection=connection, base=tmp_path,
                          bin_dir=tools)

    def run_job(name: str, workspace: Path) -> list[JobResult]:
        results: list[JobResult] = []
        for action, given in custody_steps(workflow, name):
            given = {key: SECRET.sub(lambda m: secrets[m[1]], value)
                     for key, value in given.items()}
            tmp = workspace.parent / f"tmp-{len(results)}"
            env = job_env(home=tmp_path, tmp=tmp, bin_dir=tools)
            results.append(GithubAction(action).run(
                given, workspace=workspace, runner_temp=tmp, env=env,
                run_id=pipeline.number))
        return results

    build = checkout(tmp_path / "build" / "workspace", build_layout)
    (recorded,) = run_job("build", build)
    assert recorded.returncode == 0, recorded
    # actions/upload-artifact, then download-artifact in a fresh checkout:
    release = checkout(tmp_path / "release" / "workspace", build_layout)
    (release / "dist").mkdir()
    shutil.copy(build / "dist" / "app.tar.gz", release / "dist" / "app.tar.gz")
    (gated,) = run_job("release", release)
    assert gated.returncode == 0, gated
    assert gated.outputs == {"passed": "true", "run-id": pipeline.run_id}
    assert "PASS: root.layout verified (1 step, 1 artifact checked)" in gated.output
    with (release / "dist" / "app.tar.gz").open("ab") as tarball:
        tarball.write(b"changed")
    (refused,) = run_job("release", release)
    assert refused.returncode == 1 and "dist/app.tar.gz may not ship" in refused.output


def test_the_gitlab_snippet_runs(connection: Connection, build_layout: bytes, tools: Path,
                                 tmp_path: Path) -> None:
    _, pipeline = snippets(server=connection.server)
    jobs = gitlab_jobs(pipeline)
    template = GitlabTemplate()
    settings = {  # the project's CI/CD variables ("File" ones are paths)
        "CUSTODY_CA": str(connection.ca), "CUSTODY_CERT": str(connection.cert),
        "CUSTODY_KEY_FILE": str(connection.key),
        "CUSTODY_SCRIPTS_URL": SCRIPTS.as_uri(),  # no network here: this checkout's
    }
    pipeline_id = CiPipeline(flavour="gitlab", connection=connection, base=tmp_path,
                             bin_dir=tools).number

    def run_job(name: str, project: Path) -> JobResult:
        tmp = project.parent / "tmp"
        tmp.mkdir(exist_ok=True)
        return template.run_job(jobs[name], name=name, project_dir=project,
                                env=job_env(home=tmp_path, tmp=tmp, bin_dir=tools),
                                pipeline_id=pipeline_id,
                                pipeline_variables=pipeline["variables"], settings=settings)

    build = checkout(tmp_path / "build" / "project", build_layout)
    recorded = run_job("build", build)
    assert recorded.returncode == 0, recorded
    # artifacts: paths: dist/app.tar.gz, passed on to the job that needs it
    gate = checkout(tmp_path / "gate" / "project", build_layout)
    (gate / "dist").mkdir()
    shutil.copy(build / "dist" / "app.tar.gz", gate / "dist" / "app.tar.gz")
    gated = run_job("release-gate", gate)
    assert gated.returncode == 0, gated
    run = ci_run_id("gitlab", pipeline_id)
    assert f"links: run {run}, from the attestation store" in gated.output
