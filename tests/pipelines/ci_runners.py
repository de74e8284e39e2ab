"""Run the CI templates' own steps the way their CI would, without the CI.

`GithubAction` runs a composite action (integrations/github/*/action.yml): its inputs with
their defaults, `${{ ... }}` expressions (inputs, env, github, steps' outputs, `||`), each
`run:` step with `bash --noprofile --norc -eo pipefail` (GitHub's `shell: bash`) in its
working directory, and the runner's files: GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, GITHUB_PATH,
GITHUB_ENV. `GitlabTemplate` runs a job that `extends:` one of the template's hidden jobs:
`extends` merged as GitLab merges it, the template's and the job's `variables:`, GitLab's
predefined variables (CI_PIPELINE_ID, CI_PROJECT_DIR, ...), and `before_script` + `script`
as one bash script with `set -eo pipefail` (GitLab's bash shell).

Anything these do not emulate (a `uses:` step, an `if:`, an expression they cannot read,
`!reference`) raises: a template that needs more fails its tests here rather than in CI.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
INTEGRATIONS = ROOT / "integrations"
GITHUB_ACTIONS = INTEGRATIONS / "github"
GITLAB_TEMPLATE = INTEGRATIONS / "gitlab" / "custody.gitlab-ci.yml"
SCRIPTS = INTEGRATIONS / "scripts"

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_OPERAND = re.compile(r"(inputs|env|github)\.([A-Za-z_][A-Za-z0-9_-]*)"
                      r"|steps\.([A-Za-z_][A-Za-z0-9_-]*)\.outputs\.([A-Za-z_][A-Za-z0-9_-]*)"
                      r"|'((?:[^']|'')*)'")
_JOB_IDS = itertools.count(1000)
# Where the emulated runners say the project lives (the run id names it, as on a runner).
GITHUB_SERVER = "https://github.com"
GITLAB_HOST = "gitlab.example.com"
PROJECT = "acme/app"


def ci_run_id(flavour: str, number: str) -> str:
    """The run id the CLI makes from the emulated runner's variables."""
    host = "github.com" if flavour == "github" else GITLAB_HOST
    return f"{flavour}:{host}/{PROJECT}/{number}"


class UnsupportedError(AssertionError):
    """The template uses something these runners do not emulate."""


@dataclass(frozen=True)
class JobResult:
    returncode: int
    output: str  # stdout and stderr, interleaved as in a CI log
    outputs: dict[str, str]  # GitHub: the action's outputs
    summary: str  # GitHub: what the steps wrote to GITHUB_STEP_SUMMARY

    def __str__(self) -> str:  # for assertion messages
        return f"exit {self.returncode}\n{self.output}"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def expressions(text: str) -> list[str]:
    """The `${{ ... }}` expressions in a string."""
    return _EXPRESSION.findall(text)


def operands(expression: str) -> Iterator[tuple[str, str]]:
    """(context, name) of each operand of `a || b || ...`: ("inputs", "step-name"),
    ("env", "X"), ("github", "action_path"), ("steps", "ID.NAME") or ("literal", TEXT)."""
    for operand in expression.split("||"):
        match = _OPERAND.fullmatch(operand.strip())
        if match is None:
            raise UnsupportedError(f"expression ${{{{ {expression} }}}}: cannot evaluate "
                                   f"{operand.strip()!r}")
        context, name, step, output, literal = match.groups()
        if context:
            yield context, name
        elif step:
            yield "steps", f"{step}.{output}"
        else:
            yield "literal", literal.replace("''", "'")


def parse_github_file(path: Path) -> dict[str, str]:
    """GITHUB_OUTPUT / GITHUB_ENV: `name=value` lines and `name<<DELIMITER` blocks."""
    values: dict[str, str] = {}
    lines = iter(path.read_text(encoding="utf-8").splitlines() if path.exists() else [])
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block = []
            for text in lines:
                if text == delimiter:
                    break
                block.append(text)
            values[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def _run_shell(script: str, *, cwd: Path, env: Mapping[str, str], script_file: Path,
               timeout: float) -> tuple[int, str]:
    script_file.write_text(script, encoding="utf-8")
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail",
                             str(script_file)], cwd=cwd, env=dict(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout, check=False)
    return result.returncode, result.stdout


class GithubAction:
    """A composite action of integrations/github/, e.g. GithubAction("record")."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.directory = GITHUB_ACTIONS / name
        self.spec: dict[str, Any] = load_yaml(self.directory / "action.yml")

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        return dict(self.spec.get("inputs") or {})

    @property
    def steps(self) -> list[dict[str, Any]]:
        return list(self.spec["runs"]["steps"])

    def run(self, with_: Mapping[str, str], *, workspace: Path, runner_temp: Path,
            env: Mapping[str, str], run_id: str, only_steps: int | None = None,
            timeout: float = 180) -> JobResult:
        """`uses: ./integrations/github/NAME` with `with_`, in a job whose workspace is
        `workspace`, of the workflow run `run_id` (GITHUB_RUN_ID)."""
        unknown = set(with_) - set(self.inputs)
        if unknown:
            raise AssertionError(f"{self.name}: no input {sorted(unknown)}")
        inputs = {}
        for name, spec in self.inputs.items():
            if name in with_:
                inputs[name] = str(with_[name])
            elif spec.get("required"):
                raise AssertionError(f"{self.name}: input {name} is required")
            else:
                inputs[name] = str(spec.get("default", ""))
        runner_temp.mkdir(parents=True, exist_ok=True)
        files = {name: runner_temp / f"{name.lower()}-{next(_JOB_IDS)}"
                 for name in ("GITHUB_PATH", "GITHUB_ENV", "GITHUB_STEP_SUMMARY")}
        for path in files.values():
            path.touch()
        job_env = {
            **env,
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_RUN_ID": run_id,
            "GITHUB_REPOSITORY": PROJECT,
            "GITHUB_SERVER_URL": GITHUB_SERVER,
            "GITHUB_RUN_ATTEMPT": "1",
            "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_ACTION_PATH": str(self.directory),
            "RUNNER_TEMP": str(runner_temp),
            **{name: str(path) for name, path in files.items()},
        }
        github = {"action_path": str(self.directory), "workspace": str(workspace),
                  "run_id": run_id}
        step_outputs: dict[str, dict[str, str]] = {}

        def evaluate(text: str, environment: Mapping[str, str]) -> str:
            def one(match: re.Match[str]) -> str:
                for context, name in operands(match.group(1)):
                    if context == "inputs":
                        if name not in inputs:
                            raise AssertionError(f"{self.name}: no input {name}")
                        value = inputs[name]
                    elif context == "env":
                        value = environment.get(name, "")
                    elif context == "github":
                        if name not in github:
                            raise UnsupportedError(f"github.{name}")
                        value = github[name]
                    elif context == "steps":
                        step, output = name.split(".")
                        value = step_outputs.get(step, {}).get(output, "")
                    else:
                        value = name
                    if value:
                        return value
                return ""
            return _EXPRESSION.sub(one, text)

        log: list[str] = []
        returncode = 0
        for number, step in enumerate(self.steps[:only_steps]):
            for key in ("uses", "if", "continue-on-error"):
                if key in step:
                    raise UnsupportedError(f"{self.name} step {number}: {key}")
            if step.get("shell") != "bash":
                raise UnsupportedError(f"{self.name} step {number}: shell {step.get('shell')}")
            output_file = runner_temp / f"github_output-{next(_JOB_IDS)}"
            output_file.touch()
            step_env = {**job_env, "GITHUB_OUTPUT": str(output_file)}
            for name, value in (step.get("env") or {}).items():
                step_env[name] = evaluate(str(value), job_env)
            directory = workspace / evaluate(str(step.get("working-directory", ".")), job_env)
            log.append(f"::group::{step.get('name', number)}")
            returncode, output = _run_shell(
                evaluate(step["run"], job_env), cwd=directory, env=step_env,
                script_file=runner_temp / f"step-{next(_JOB_IDS)}.sh", timeout=timeout)
            log.extend([output.rstrip("\n"), "::endgroup::"])
            if "id" in step:
                step_outputs[step["id"]] = parse_github_file(output_file)
            for line in files["GITHUB_PATH"].read_text(encoding="utf-8").splitlines():
                if line and line not in job_env["PATH"].split(":"):
                    job_env["PATH"] = f"{line}:{job_env['PATH']}"
            job_env.update(parse_github_file(files["GITHUB_ENV"]))
            if returncode != 0:
                break
        outputs = {name: evaluate(str(spec["value"]), job_env)
                   for name, spec in (self.spec.get("outputs") or {}).items()}
        return JobResult(returncode=returncode, output="\n".join(log), outputs=outputs,
                         summary=files["GITHUB_STEP_SUMMARY"].read_text(encoding="utf-8"))


def flatten(lines: Any) -> list[str]:
    """A job's `script:` as GitLab reads it: nested lists (from YAML anchors) flattened."""
    if isinstance(lines, str):
        return [lines]
    if not isinstance(lines, list):
        raise AssertionError(f"a script is a string or a list, not {lines!r}")
    return [line for item in lines for line in flatten(item)]


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`extends:` as GitLab merges: hashes deeply, anything else (lists) replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _variable_value(value: Any) -> str:
    if isinstance(value, Mapping):  # {value: ..., description: ...}
        value = value.get("value", "")
    if isinstance(value, bool) or value is None:
        raise AssertionError(f"a GitLab variable is a string or a number, not {value!r}")
    return str(value)


_VARIABLE_REFERENCE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _expand(value: str, known: Mapping[str, str]) -> str:
    """GitLab expands $NAME and ${NAME} in a variable's value from the variables known;
    an unknown one is left as it is."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return known.get(name, match.group(0))
    return _VARIABLE_REFERENCE.sub(one, value)


class GitlabTemplate:
    """integrations/gitlab/custody.gitlab-ci.yml, as `include:`d by a pipeline."""

    def __init__(self, path: Path = GITLAB_TEMPLATE) -> None:
        self.path = path
        text = path.read_text(encoding="utf-8")
        if "!reference" in text:
            raise UnsupportedError("!reference")
        self.spec: dict[str, Any] = yaml.safe_load(text)

    @property
    def hidden_jobs(self) -> dict[str, dict[str, Any]]:
        return {name: job for name, job in self.spec.items()
                if name.startswith(".") and isinstance(job, dict)}

    def resolve(self, job: Mapping[str, Any], *, depth: int = 0) -> dict[str, Any]:
        """The job with its `extends:` (a name or a list, from the template) merged in."""
        if depth > 10:
            raise AssertionError("extends nests deeper than GitLab allows (11 levels)")
        parents = job.get("extends", [])
        resolved: dict[str, Any] = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            if parent not in self.hidden_jobs:
                raise AssertionError(f"extends: no job {parent} in {self.path.name}")
            resolved = _merge(resolved, self.resolve(self.hidden_jobs[parent],
                                                     depth=depth + 1))
        own = {key: value for key, value in job.items() if key != "extends"}
        return _merge(resolved, own)

    def run_job(self, job: Mapping[str, Any], *, name: str, project_dir: Path,
                env: Mapping[str, str], pipeline_id: str,
                pipeline_variables: Mapping[str, Any] | None = None,
                settings: Mapping[str, str] | None = None, timeout: float = 180
                ) -> JobResult:
        """Run `job` (a job of the including pipeline: `extends`, `variables`, ...) in a
        checkout at `project_dir`, as a job of pipeline `pipeline_id`.

        `pipeline_variables`: the including file's top-level `variables:` (they override
        the template's); `settings`: the project's CI/CD variables, which override any
        variable the YAML gives."""
        resolved = self.resolve(job)
        for key in ("rules", "only", "except", "when", "trigger", "services"):
            if key in resolved:
                raise UnsupportedError(f"job {name}: {key}")
        job_id = str(next(_JOB_IDS))
        known = {
            **env,
            "CI": "true",
            "GITLAB_CI": "true",
            "CI_PIPELINE_ID": pipeline_id,
            "CI_SERVER_HOST": GITLAB_HOST,
            "CI_PROJECT_PATH": PROJECT,
            "CI_JOB_ID": job_id,
            "CI_JOB_NAME": name,
            "CI_PROJECT_DIR": str(project_dir),
            "CI_BUILDS_DIR": str(project_dir.parent),
        }
        variables = {**(self.spec.get("variables") or {}), **(pipeline_variables or {}),
                     **(resolved.get("variables") or {})}
        for variable, value in variables.items():
            known[variable] = _expand(_variable_value(value), known)
        known.update(settings or {})
        script = [*flatten(resolved.get("before_script", [])), *flatten(resolved["script"])]
        returncode, output = _run_shell(
            "\n".join(script) + "\n", cwd=project_dir, env=known,
            script_file=project_dir.parent / f".gitlab-job-{job_id}.sh", timeout=timeout)
        return JobResult(returncode=returncode, output=output, outputs={}, summary="")
