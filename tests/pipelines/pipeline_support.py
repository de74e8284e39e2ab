"""One CI job at a time, GitHub or GitLab, with the same options.

A job's options are named as the GitHub actions' inputs (`step-name`, `command`,
`products`, ...); for GitLab they become the variables the GitHub action maps the same
input to (its `env:`), so both flavours are driven through one interface and a mapping the
two templates disagree on shows up as a failing GitLab job.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ci_runners import (
    ROOT,
    SCRIPTS,
    GithubAction,
    GitlabTemplate,
    JobResult,
    ci_run_id,
    operands,
)

FLAVOURS = ("github", "gitlab")


def input_variables(action: GithubAction) -> dict[str, str]:
    """input name -> the script variable the action's steps map it to."""
    mapping = {}
    for step in action.steps:
        for variable, value in (step.get("env") or {}).items():
            for match in re.findall(r"\$\{\{(.*?)\}\}", str(value)):
                for context, name in operands(match):
                    if context == "inputs":
                        mapping[name] = variable
    return mapping


def custody_shim(directory: Path) -> Path:
    """A `custody` command, as `pip install custody-intoto` would put on the PATH: this
    checkout's client (core + client, never the server) under the tests' interpreter."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "custody"
    shim.write_text("#!/bin/sh\n"
                    f"PYTHONPATH='{ROOT}/core:{ROOT}/client' exec '{sys.executable}' "
                    "-m custody_client \"$@\"\n")
    shim.chmod(0o755)
    return directory


def system_path() -> str:
    """The PATH without any directory that holds a `custody` command (the virtual
    environment's), so that the jobs find only the one a test puts there."""
    kept = [entry for entry in os.environ.get("PATH", "/usr/bin:/bin").split(":")
            if entry and not (Path(entry) / "custody").exists()]
    return ":".join(kept)


def job_env(*, home: Path, tmp: Path, bin_dir: Path | None) -> dict[str, str]:
    """A CI job's environment: a HOME of its own (no local Custody state to fall back
    on), a TMPDIR to check for leftovers, and the PATH."""
    path = system_path()
    return {
        "PATH": f"{bin_dir}:{path}" if bin_dir else path,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
    }


@dataclass
class Connection:
    """How a job reaches the service: the address and the mTLS files."""

    server: str
    ca: Path
    cert: Path
    key: Path


@dataclass
class CiPipeline:
    """One pipeline run of `flavour`: every job it runs shares its run id."""

    flavour: str
    connection: Connection
    base: Path  # the jobs' directories go below
    bin_dir: Path | None
    number: str = field(default_factory=lambda: str(random.randrange(10**9, 10**10)))
    jobs: int = 0

    @property
    def run_id(self) -> str:
        """The run id the CLI takes from the CI's environment."""
        return ci_run_id(self.flavour, self.number)

    def job_dirs(self, name: str) -> tuple[Path, Path, Path]:
        """(workspace, temp, home) of a new job."""
        self.jobs += 1
        root = self.base / f"job{self.jobs}-{name}"
        dirs = tuple(root / part for part in ("workspace", "tmp", "home"))
        for directory in dirs:
            directory.mkdir(parents=True)
        return dirs  # type: ignore[return-value]

    def record(self, workspace: Path, *, tmp: Path, home: Path, **options: str) -> JobResult:
        return self._run("record", workspace, tmp=tmp, home=home, options=options)

    def gate(self, workspace: Path, *, tmp: Path, home: Path, **options: str) -> JobResult:
        return self._run("gate", workspace, tmp=tmp, home=home, options=options)

    def _run(self, kind: str, workspace: Path, *, tmp: Path, home: Path,
             options: Mapping[str, str]) -> JobResult:
        env = job_env(home=home, tmp=tmp, bin_dir=self.bin_dir)
        options = {key.replace("_", "-"): value for key, value in options.items()}
        action = GithubAction(kind)
        if self.flavour == "github":
            # As from secrets: the PEM text itself, not a file.
            connection = {"server": self.connection.server,
                          "ca": self.connection.ca.read_text(),
                          "client-cert": self.connection.cert.read_text(),
                          "client-key": self.connection.key.read_text()}
            return action.run({**connection, **options}, workspace=workspace,
                              runner_temp=tmp, env=env, run_id=self.number)
        variables = input_variables(action)
        # As "File" CI/CD variables: paths.
        job: dict[str, Any] = {"extends": f".custody-{kind}", "variables": {
            "CUSTODY_SCRIPTS_URL": SCRIPTS.as_uri(),
            "CUSTODY_SERVER": self.connection.server,
            "CUSTODY_CA": str(self.connection.ca),
            "CUSTODY_CERT": str(self.connection.cert),
            "CUSTODY_KEY_FILE": str(self.connection.key),
            **{variables[name]: value for name, value in options.items()
               if name != "working-directory"},
        }}
        directory = workspace / options.get("working-directory", ".")
        return GitlabTemplate().run_job(job, name=f"custody-{kind}", project_dir=directory,
                                        env=env, pipeline_id=self.number)
