"""Installing the CLI (`custody-ci.sh install`, the templates' first step) and, for GitLab,
getting custody-ci.sh itself. No server: pip is a stub that records what it was asked
and installs a stub `custody`, so that what the next step runs shows which CLI it found."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from .ci_runners import SCRIPTS, GithubAction, GitlabTemplate, JobResult
from .pipeline_support import custody_shim, job_env

SCRIPT = SCRIPTS / "custody-ci.sh"

# `python -m venv DIR` copies this stub to DIR/bin/python; `python -m pip ...` logs its
# arguments and installs DIR/bin/custody, which says its version and echoes the rest.
STUB_PYTHON = """#!/usr/bin/env bash
set -e
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0
fi
if [ "$1 $2" = "-m pip" ]; then
    shift 2
    echo "$*" >> "$STUB_LOG"
    bin=$(dirname "$0")
    printf '%s\\n' '#!/bin/sh' 'if [ "$1" = --version ]; then echo "custody 9.9.9"; exit; fi' \\
        'echo "stub custody $*"' > "$bin/custody"
    chmod +x "$bin/custody"
    exit 0
fi
exit 64
"""


@pytest.fixture
def stub_python(tmp_path: Path) -> Path:
    path = tmp_path / "stub-python"
    path.write_text(STUB_PYTHON)
    path.chmod(0o755)
    return path


def install(tmp_path: Path, inputs: dict[str, str], *, bin_dir: Path | None, stub: Path,
            steps: int | None = 1) -> tuple[JobResult, list[str], Path]:
    """The gate action's install step (and, with steps=None, the gate step after it):
    (result, pip's arguments, RUNNER_TEMP)."""
    runner_temp = tmp_path / "runner-temp"
    log = tmp_path / "pip.log"
    env = {**job_env(home=tmp_path, tmp=tmp_path, bin_dir=bin_dir), "STUB_LOG": str(log)}
    given = {"artifacts": "app.tar.gz", "layout": "root.layout",
             "layout-key-alias": "owner", "python": str(stub),
             **inputs}
    result = GithubAction("gate").run(given, workspace=tmp_path, runner_temp=runner_temp,
                                      env=env, run_id="1", only_steps=steps)
    pip = log.read_text().splitlines() if log.exists() else []
    return result, pip, runner_temp


PIP = "install --quiet --disable-pip-version-check --upgrade"


def test_auto_uses_the_custody_command_found(tmp_path: Path, stub_python: Path) -> None:
    bin_dir = custody_shim(tmp_path / "bin")
    result, pip, runner_temp = install(tmp_path, {}, bin_dir=bin_dir, stub=stub_python)
    assert result.returncode == 0, result
    assert f"using {bin_dir}/custody (custody 0.1.0); not installing" in result.output
    assert pip == [] and not (runner_temp / "custody-venv").exists()


def test_auto_installs_the_version_asked_and_the_next_step_runs_it(
        tmp_path: Path, stub_python: Path) -> None:
    bin_dir = custody_shim(tmp_path / "bin")  # 0.1.0, not the version asked for
    result, pip, runner_temp = install(tmp_path, {"version": "9.9.9"}, bin_dir=bin_dir,
                                       stub=stub_python, steps=None)
    assert result.returncode == 0, result
    assert "custody 0.1.0, not 9.9.9: installing" in result.output
    assert pip == [f"{PIP} custody-intoto==9.9.9"]
    venv = runner_temp / "custody-venv"
    assert "installed custody 9.9.9" in result.output
    # On GitHub the venv's bin goes on the PATH of the steps after; the gate ran its CLI.
    assert "stub custody verify -l root.layout --layout-key-alias owner --artifact " \
        "app.tar.gz" in result.output
    assert (venv / "bin" / "custody").is_file()


def test_install_true_installs_even_when_one_is_there(tmp_path: Path,
                                                      stub_python: Path) -> None:
    bin_dir = custody_shim(tmp_path / "bin")
    wheel = "./dist/custody_intoto-0.2.0-py3-none-any.whl"
    result, pip, _ = install(tmp_path, {"install": "true", "package": wheel},
                             bin_dir=bin_dir, stub=stub_python)
    assert result.returncode == 0, result
    assert pip == [f"{PIP} {wheel}"]


def test_install_false_needs_a_custody_command(tmp_path: Path, stub_python: Path) -> None:
    result, pip, _ = install(tmp_path, {"install": "false"}, bin_dir=None, stub=stub_python)
    assert result.returncode == 2, result
    assert "CUSTODY_INSTALL is false and there is no custody command" in result.output
    assert "::error title=Custody::" in result.output and pip == []


@pytest.mark.parametrize(("inputs", "message"), [
    ({"install": "sometimes"}, "CUSTODY_INSTALL: auto, true or false, not 'sometimes'"),
    ({"package": "custody-intoto==0.1", "version": "0.2"},
     "CUSTODY_PACKAGE 'custody-intoto==0.1' names a version or a file already"),
])
def test_bad_install_inputs_are_refused(tmp_path: Path, stub_python: Path,
                                        inputs: dict[str, str], message: str) -> None:
    result, pip, _ = install(tmp_path, inputs, bin_dir=None, stub=stub_python)
    assert result.returncode == 2, result
    assert message in result.output and pip == []


def test_a_custody_command_that_is_not_custodys_is_not_used(tmp_path: Path,
                                                            stub_python: Path) -> None:
    """PyPI's `custody` is another project: its command must not pass for this one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "custody").write_text("#!/bin/sh\necho 'usage: custody [options]'\nexit 1\n")
    (bin_dir / "custody").chmod(0o755)
    result, _, _ = install(tmp_path, {}, bin_dir=bin_dir, stub=stub_python)
    assert result.returncode == 2, result
    assert "is not Custody's CLI" in result.output


def gitlab_gate(tmp_path: Path, variables: dict[str, str], *,
                env: dict[str, str] | None = None) -> JobResult:
    """A `.custody-gate` job with no artifact: custody-ci.sh refuses it at once, which
    shows it was found and ran (or, without it, what the job says)."""
    job: dict[str, Any] = {"extends": ".custody-gate", "variables": variables}
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    return GitlabTemplate().run_job(
        job, name="gate", project_dir=project, pipeline_id="77",
        env=env or job_env(home=tmp_path, tmp=tmp_path, bin_dir=custody_shim(
            tmp_path / "bin")))


def test_gitlab_takes_the_script_from_custody_scripts(tmp_path: Path) -> None:
    vendored = tmp_path / "vendored"
    vendored.mkdir()
    shutil.copy(SCRIPT, vendored / SCRIPT.name)  # git may not keep the mode: run with bash
    (vendored / SCRIPT.name).chmod(0o644)
    result = gitlab_gate(tmp_path, {"CUSTODY_SCRIPTS": str(vendored)})
    assert result.returncode == 2, result
    assert "not installing" in result.output
    assert "custody-ci: CUSTODY_ARTIFACTS is required" in result.output


def test_gitlab_downloads_the_script_and_checks_its_digest(tmp_path: Path) -> None:
    url = SCRIPTS.as_uri()
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()
    result = gitlab_gate(tmp_path, {"CUSTODY_SCRIPTS_URL": url,
                                    "CUSTODY_SCRIPTS_SHA256": digest})
    assert result.returncode == 2, result
    assert "custody-ci: CUSTODY_ARTIFACTS is required" in result.output
    result = gitlab_gate(tmp_path, {"CUSTODY_SCRIPTS_URL": url,
                                    "CUSTODY_SCRIPTS_SHA256": "0" * 64})
    assert result.returncode == 1, result
    assert "FAILED" in result.output and "custody-ci:" not in result.output


def test_gitlab_downloads_with_python_without_curl(tmp_path: Path) -> None:
    """An image without curl (python:3-slim): the download falls back to python3."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("bash", "sh", "mktemp", "sha256sum", "dirname", "sed"):
        found = shutil.which(tool)
        assert found, tool
        os.symlink(found, tools / tool)
    os.symlink(sys.executable, tools / "python3")
    custody_shim(tools)
    env = {"PATH": str(tools), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    result = gitlab_gate(tmp_path, {"CUSTODY_SCRIPTS_URL": SCRIPTS.as_uri()}, env=env)
    assert result.returncode == 2, result
    assert "custody-ci: CUSTODY_ARTIFACTS is required" in result.output


def test_gitlab_says_where_to_get_the_script_from(tmp_path: Path) -> None:
    result = gitlab_gate(tmp_path, {"CUSTODY_SCRIPTS_URL": ""})
    assert result.returncode == 2, result
    assert "custody-ci: set CUSTODY_SCRIPTS_URL" in result.output


def test_pem_text_goes_to_a_private_file_for_the_cli_and_is_removed(tmp_path: Path) -> None:
    """A secret's PEM text (client-key) reaches the CLI as a file of mode 600, removed
    when the step ends; a path (ca) is passed on as it is, and one that cannot be read
    is refused before the CLI runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "custody").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "custody 0.1.0"; exit; fi\n'
        'echo "key mode $(stat -c %a "$CUSTODY_KEY_FILE"): $(head -n 1 "$CUSTODY_KEY_FILE")"\n'
        'echo "ca $CUSTODY_CA"\n')
    (bin_dir / "custody").chmod(0o755)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----"
    result, _, runner_temp = install(tmp_path, {"client-key": key, "ca": str(ca)},
                                     bin_dir=bin_dir, stub=tmp_path / "unused", steps=None)
    assert result.returncode == 0, result
    assert "key mode 600: -----BEGIN PRIVATE KEY-----" in result.output
    assert f"ca {ca}" in result.output and "c2VjcmV0" not in result.output
    assert not list(runner_temp.glob("custody-ci.*"))
    result, _, _ = install(tmp_path, {"ca": str(tmp_path / "missing.pem")},
                           bin_dir=bin_dir, stub=tmp_path / "unused", steps=None)
    assert result.returncode == 2, result
    assert f"CUSTODY_CA: cannot read {tmp_path}/missing.pem" in result.output
