"""The CI templates end to end against the session's server: the in-toto demo's three steps
recorded by three jobs of one pipeline run (GitHub Actions: the record action; GitLab CI:
`.custody-record`), each in a workspace of its own that receives the previous job's
files but never a link, then the release gate (the gate action, `.custody-gate`) holding
only the layout and the artifact."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from interop.interop_support import Cli

from .ci_runners import JobResult
from .pipeline_support import CiPipeline, Connection

pytestmark = pytest.mark.slow
TARBALL = "demo-project.tar.gz"


def job(pipeline: CiPipeline, name: str, *, previous: Path | None = None
        ) -> tuple[Path, Path, Path]:
    """A new job's (workspace, tmp, home), with what `previous` left in its workspace (a CI
    artifact, or the next job's checkout): no link file among it."""
    workspace, tmp, home = pipeline.job_dirs(name)
    if previous is not None:
        for path in previous.iterdir():
            if path.suffix == ".link":
                continue
            if path.is_dir():
                shutil.copytree(path, workspace / path.name)
            else:
                shutil.copy(path, workspace / path.name)
    return workspace, tmp, home


def leftovers(tmp: Path) -> list[str]:
    """What custody-ci.sh left in the job's temporary directory: its work directory (PEM
    files given as text) is removed when it ends."""
    return sorted(path.name for path in tmp.iterdir() if path.name.startswith("custody-ci."))


def record_demo(pipeline: CiPipeline, *, version: str, source: Path,
                package_command: str | None = None) -> tuple[Path, list[JobResult]]:
    """clone, update-version and package as three jobs: the workspace of the last one."""
    results = []
    clone, tmp, home = job(pipeline, "clone")
    results.append(pipeline.record(
        clone, tmp=tmp, home=home, step_name="clone", products="demo-project",
        command=f"cp -r '{source}/demo-project' ."))
    edit, tmp, home = job(pipeline, "update-version", previous=clone)
    results.append(pipeline.record(
        edit, tmp=tmp, home=home, step_name="update-version", materials="demo-project",
        products="demo-project", command=f"sed -i s/foo-v0/{version}/ demo-project/foo.py"))
    package, tmp, home = job(pipeline, "package", previous=edit)
    results.append(pipeline.record(
        package, tmp=tmp, home=home, step_name="package", materials="demo-project",
        products=TARBALL,
        command=package_command or f"tar --exclude .git -zcvf {TARBALL} demo-project"))
    return package, results


def gate(pipeline: CiPipeline, layout: bytes, artifact: Path, *, tamper: bool = False
         ) -> tuple[JobResult, Path]:
    """The release gate's job: the layout (from its checkout) and the artifact."""
    workspace, tmp, home = job(pipeline, "gate")
    (workspace / "root.layout").write_bytes(layout)
    shutil.copy(artifact, workspace / TARBALL)
    if tamper:
        with (workspace / TARBALL).open("ab") as tarball:
            tarball.write(b"appended after the build")
    result = pipeline.gate(workspace, tmp=tmp, home=home, artifacts=TARBALL,
                           layout="root.layout", layout_key_alias="owner")
    assert leftovers(tmp) == [], "the gate left its TLS files behind"
    return result, workspace


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """The repository the clone step copies."""
    (tmp_path / "origin" / "demo-project").mkdir(parents=True)
    (tmp_path / "origin" / "demo-project" / "foo.py").write_text("VERSION = 'foo-v0'\n")
    return tmp_path / "origin"


def stored_steps(cli: Cli, run_id: str, where: Path) -> list[str]:
    listed = cli("links", "list", "--run-id", run_id, "--json", cwd=where)
    return [json.loads(line)["step"] for line in listed.stdout.splitlines()]


def test_three_jobs_recorded_then_the_gate_passes_the_artifact(
        pipeline: CiPipeline, layout: bytes, source: Path, cli: Cli) -> None:
    package, results = record_demo(pipeline, version="foo-v2", source=source)
    for result, step in zip(results, ("clone", "update-version", "package"), strict=True):
        assert result.returncode == 0, result
        assert f"step '{step}' recorded" in result.output, result
        assert "not installing" in result.output  # a custody command was there
    if pipeline.flavour == "github":
        assert results[-1].outputs["link"].startswith("./package.")
    assert sorted(stored_steps(cli, pipeline.run_id, package)) == [
        "clone", "package", "update-version"]
    # Each job wrote its own link only: none was carried from one job to the next.
    assert [path.name.split(".")[0] for path in package.glob("*.link")] == ["package"]

    result, workspace = gate(pipeline, layout, package / TARBALL)
    assert result.returncode == 0, result
    assert "PASS: root.layout verified (3 steps, 1 inspection run here, 1 artifact checked)" \
        in result.output
    assert f"links: run {pipeline.run_id}, from the attestation store" in result.output
    assert f"release gate passed: {TARBALL} may ship" in result.output
    # The inspection unpacked the very tarball the package job made.
    assert (workspace / "demo-project" / "foo.py").read_text() == "VERSION = 'foo-v2'\n"
    if pipeline.flavour == "github":
        assert result.outputs == {"passed": "true", "run-id": pipeline.run_id}
        assert result.summary.startswith(
            f"### Custody release gate: passed: {TARBALL} may ship\n")
        assert "links: run " in result.summary


def test_a_tampered_artifact_fails_the_gate_naming_it(
        pipeline: CiPipeline, layout: bytes, source: Path) -> None:
    package, results = record_demo(pipeline, version="foo-v3", source=source)
    assert all(result.returncode == 0 for result in results), results
    result, workspace = gate(pipeline, layout, package / TARBALL, tamper=True)
    assert result.returncode == 1, result
    assert "FAIL: root.layout did not verify (failed at artifact)" in result.output
    reason = f"no run in the attestation store has {TARBALL} as a product of the final step"
    assert reason in result.output
    assert f"release gate FAILED: {TARBALL} may not ship" in result.output
    assert not (workspace / "demo-project").exists()  # no inspection ran
    if pipeline.flavour == "github":
        assert result.outputs == {"passed": "false", "run-id": ""}
        assert result.summary.startswith(
            f"### Custody release gate: FAILED: {TARBALL} may not ship\n")
        assert reason in result.summary
        # An annotation on the workflow run, with the reason.
        (annotation,) = [line for line in result.output.splitlines()
                         if line.startswith("::error title=Custody release gate::")]
        assert reason in annotation and "%0A" in annotation


def test_a_failing_command_fails_its_job_and_signs_nothing(
        pipeline: CiPipeline, layout: bytes, source: Path, cli: Cli) -> None:
    """tar fails (a directory that is not there) after it made a tarball: no link, so
    nothing in the store vouches for that tarball, and the gate refuses it."""
    package, results = record_demo(
        pipeline, version="foo-v4", source=source,
        package_command=f"tar -zcvf {TARBALL} demo-project no-such-directory")
    assert [result.returncode for result in results[:2]] == [0, 0]
    failed = results[2]
    assert failed.returncode == 2, failed  # tar's own exit status
    assert "no link signed (--no-sign-on-failure)" in failed.output
    assert "step 'package' failed: custody run exited 2" in failed.output
    assert (package / TARBALL).exists()  # the half-made product is there...
    assert list(package.glob("*.link")) == []  # ...and no link for it
    assert sorted(stored_steps(cli, pipeline.run_id, package)) == ["clone", "update-version"]
    result, _ = gate(pipeline, layout, package / TARBALL)
    assert result.returncode == 1, result
    assert f"no run in the attestation store has {TARBALL}" in result.output


def test_sign_on_failure_signs_the_failure_and_still_fails_the_job(
        pipeline: CiPipeline, source: Path, cli: Cli) -> None:
    """in-toto-run's way, on request: the link records the return value."""
    workspace, tmp, home = job(pipeline, "failing")
    result = pipeline.record(workspace, tmp=tmp, home=home, step_name="lint",
                             command="sh -c 'exit 3'", sign_on_failure="true")
    assert result.returncode == 3, result
    (link,) = workspace.glob("lint.*.link")
    signed = json.loads(link.read_text())["signed"]
    assert signed["byproducts"]["return-value"] == 3
    assert signed["command"] == ["sh", "-c", "exit 3"]
    assert stored_steps(cli, pipeline.run_id, workspace) == ["lint"]


def test_custody_run_no_sign_on_failure(cli: Cli, tmp_path: Path) -> None:
    """The CLI flag the templates pass: a failed command gets no link and no SignLink
    call (nothing in the store under its run); run exits with the command's code."""
    result = cli("run", "-n", "build", "--run-id", "no-sign-on-failure", "-p", "out",
                 "--no-sign-on-failure", "--", "sh", "-c", "echo partial > out; exit 5",
                 cwd=tmp_path, check=False)
    assert result.returncode == 5, result.stderr
    assert result.stderr == "custody: sh returned 5: no link signed (--no-sign-on-failure)\n"
    assert list(tmp_path.glob("*.link")) == []
    assert stored_steps(cli, "no-sign-on-failure", tmp_path) == []
    # A command that succeeds is signed as ever.
    cli("run", "-n", "build", "--run-id", "no-sign-on-failure", "-p", "out",
        "--no-sign-on-failure", "--", "sh", "-c", "echo whole > out", cwd=tmp_path)
    assert stored_steps(cli, "no-sign-on-failure", tmp_path) == ["build"]


def test_no_verdict_fails_the_gate_and_says_why(connection: Connection, custody_bin: Path,
                                                layout: bytes, tmp_path: Path) -> None:
    """The service cannot be reached (exit 3): the gate fails without a verdict."""
    nowhere = CiPipeline(flavour="github", base=tmp_path, bin_dir=custody_bin,
                         connection=replace(connection, server="127.0.0.1:1"))
    workspace, tmp, home = job(nowhere, "gate")
    (workspace / TARBALL).write_bytes(b"anything")
    (workspace / "root.layout").write_bytes(layout)
    result = nowhere.gate(workspace, tmp=tmp, home=home, artifacts=TARBALL,
                          layout="root.layout", layout_key_alias="owner",
                          args="--timeout 2")
    assert result.returncode == 3, result
    status = "no verdict: the Custody service could not be reached (exit 3; retrying may help)"
    assert f"release gate {status}" in result.output
    assert result.summary.startswith(f"### Custody release gate: {status}\n")
    assert result.outputs["passed"] == "false"
