"""The templates are well-formed for their platform and agree with the one script they run:
the GitHub actions' metadata (composite, inputs declared and used, `shell:` on every run
step, no expression in a `run:`), the GitLab template's hidden jobs, and custody-ci.sh's
variables, the same names on both sides."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest

from custody_client.settings import ENV_SERVER

from .ci_runners import (
    GITHUB_ACTIONS,
    ROOT,
    SCRIPTS,
    GithubAction,
    GitlabTemplate,
    expressions,
    flatten,
    operands,
)
from .template_rules import (
    CLI_VARIABLES,
    GITLAB_GLOBAL_KEYWORDS,
    GITLAB_JOB_KEYWORDS,
    SCRIPT,
    TEMPLATE_VARIABLES,
    script_variables,
)

ACTIONS = sorted(path.parent.name for path in GITHUB_ACTIONS.glob("*/action.yml"))
SUBCOMMANDS = {"install", "record", "gate"}
ACTION_KEYS = {"name", "description", "author", "inputs", "outputs", "runs", "branding"}
INPUT_KEYS = {"description", "required", "default", "deprecationMessage"}
COMPOSITE_STEP_KEYS = {"name", "id", "run", "shell", "env", "working-directory", "if",
                       "uses", "with", "continue-on-error"}
ACTION_RUN = re.compile(r'"\$GITHUB_ACTION_PATH/(?P<path>[^"]+)" (?P<command>[a-z]+)')
GITLAB_RUN = re.compile(r'bash "\$CUSTODY_CI" (?P<command>[a-z]+)')


def test_the_script_is_executable_and_documents_every_variable_it_reads() -> None:
    assert SCRIPT.is_file() and SCRIPT.stat().st_mode & 0o111
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    documented, used = script_variables()
    # CUSTODY_SERVER is only the CLI's: the script never reads it.
    assert documented == used | {ENV_SERVER}
    assert documented >= CLI_VARIABLES
    dispatched = re.findall(r"^    (\w+)\) cmd_\1 ;;$", SCRIPT.read_text(), flags=re.M)
    assert set(dispatched) == SUBCOMMANDS


@pytest.mark.parametrize("name", ACTIONS)
def test_each_action_is_a_well_formed_composite_action(name: str) -> None:
    action = GithubAction(name)
    spec = action.spec
    assert set(spec) <= ACTION_KEYS, set(spec) - ACTION_KEYS
    assert isinstance(spec["name"], str) and isinstance(spec["description"], str)
    assert spec["runs"]["using"] == "composite"
    assert set(spec["runs"]) == {"using", "steps"}
    for input_name, definition in action.inputs.items():
        assert re.fullmatch(r"[a-z][a-z0-9-]*", input_name), input_name
        assert set(definition) <= INPUT_KEYS, (input_name, definition)
        assert isinstance(definition.get("description"), str), input_name
        if definition.get("required"):
            assert "default" not in definition, f"{input_name}: required with a default"
        else:
            assert isinstance(definition.get("default"), str), \
                f"{input_name}: an optional input needs a string default"
    ids = [step["id"] for step in action.steps if "id" in step]
    assert len(ids) == len(set(ids))
    for step in action.steps:
        assert set(step) <= COMPOSITE_STEP_KEYS, set(step) - COMPOSITE_STEP_KEYS
        assert "run" in step and "uses" not in step
        assert step.get("shell") == "bash", f"{step.get('name')}: a run step needs shell:"
        assert isinstance(step.get("name"), str)
        # Inputs reach the script through env: only, never pasted into the shell text.
        assert expressions(step["run"]) == [], step["run"]
        for value in (step.get("env") or {}).values():
            assert isinstance(value, str)
    for output, definition in (spec.get("outputs") or {}).items():
        assert isinstance(definition.get("description"), str), output
        (expression,) = expressions(definition["value"])
        ((context, reference),) = operands(expression)
        assert context == "steps" and reference.split(".")[0] in ids, (output, expression)


@pytest.mark.parametrize("name", ACTIONS)
def test_every_input_is_used_and_every_reference_is_an_input(name: str) -> None:
    action = GithubAction(name)
    referenced: set[str] = set()
    for step in action.steps:
        values = [str(value) for value in (step.get("env") or {}).values()]
        values.append(str(step.get("working-directory", "")))
        for value in values:
            for expression in expressions(value):
                referenced |= {ref for context, ref in operands(expression)
                               if context == "inputs"}
    assert referenced == set(action.inputs), (
        f"unused: {set(action.inputs) - referenced}; undeclared: "
        f"{referenced - set(action.inputs)}")


@pytest.mark.parametrize("name", ACTIONS)
def test_each_action_runs_the_shared_script_with_its_variables(name: str) -> None:
    action = GithubAction(name)
    documented, _ = script_variables()
    commands = []
    for step in action.steps:
        match = ACTION_RUN.fullmatch(step["run"].strip())
        assert match, f"a run step only calls the shared script: {step['run']!r}"
        script = (action.directory / match["path"]).resolve()
        assert script == SCRIPT.resolve(), script
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        commands.append(match["command"])
        assert set(step.get("env") or {}) <= documented, \
            set(step.get("env") or {}) - documented
    assert commands == ["install", name]


def gitlab_script_lines(job: dict[str, Any]) -> list[str]:
    return [*flatten(job.get("before_script", [])), *flatten(job["script"])]


def test_the_gitlab_template_has_hidden_jobs_to_extend() -> None:
    template = GitlabTemplate()
    hidden = template.hidden_jobs
    assert {".custody-record", ".custody-gate"} <= set(hidden)
    for key, value in template.spec.items():
        assert key.startswith(".") or key in GITLAB_GLOBAL_KEYWORDS, \
            f"{key}: an included template must not add visible jobs"
        if key == "variables":
            assert all(isinstance(v, str) for v in value.values()), value
    documented, _ = script_variables()
    assert set(template.spec.get("variables") or {}) <= documented | TEMPLATE_VARIABLES
    assert all(name in template.path.read_text() for name in TEMPLATE_VARIABLES)
    # By default the script comes from the v1 tag, where this repository keeps it.
    url = template.spec["variables"]["CUSTODY_SCRIPTS_URL"]
    assert url.startswith("https://") and url.endswith(
        f"/v1/{SCRIPTS.relative_to(ROOT).as_posix()}")
    for name in (".custody-record", ".custody-gate"):
        job = template.resolve(hidden[name])
        assert set(job) <= GITLAB_JOB_KEYWORDS, set(job) - GITLAB_JOB_KEYWORDS
        # A job variable would beat the pipeline's own `variables:` (GitLab's precedence):
        # the template declares none, so the pipeline's CUSTODY_SERVER etc. apply.
        assert "variables" not in job
        lines = gitlab_script_lines(job)
        assert all(isinstance(line, str) for line in lines)
        commands = [m["command"] for line in lines for m in GITLAB_RUN.finditer(line)]
        assert commands == ["install", name.removeprefix(".custody-")]


@pytest.mark.parametrize("shell", ["bash", "sh", "dash"])
def test_the_gitlab_script_lines_parse_in_the_jobs_shell(shell: str) -> None:
    """GitLab runs `script:` with bash, or sh when the image has no bash."""
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"no {shell}")
    template = GitlabTemplate()
    for name in (".custody-record", ".custody-gate"):
        script = "\n".join(gitlab_script_lines(template.resolve(template.hidden_jobs[name])))
        result = subprocess.run([path, "-n"], input=script, text=True, capture_output=True,
                                check=False)
        assert result.returncode == 0, (name, result.stderr)


def test_the_gitlab_and_github_flavours_run_the_same_script() -> None:
    """The one script GitLab downloads (custody-ci.sh) is the one the actions run."""
    template = GitlabTemplate()
    text = "\n".join(gitlab_script_lines(template.resolve(template.hidden_jobs[
        ".custody-record"])))
    assert f"/{SCRIPT.name}" in text
    assert all(SCRIPT.name in GithubAction(name).steps[-1]["run"] for name in ACTIONS)

