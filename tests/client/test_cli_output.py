"""Verdicts for people and machines, running commands, and the record-start state."""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import pytest

from custody_client._cli.common import ProgressLine
from custody_client._cli.process import CommandTimeoutError, run_command
from custody_client._cli.steps import _load_state
from custody_client._cli.verdict_output import format_verdict, verdict_json
from custody_client.errors import InputError
from custody_client.excludes import DEFAULT_EXCLUDE_PATTERNS, ExcludeFilter
from custody_client.models import VerifyFailure, VerifyResult, VerifyWarning
from custody_client.recording import RecordingOptions, record_artifacts
from custody_client.settings import RetryPolicy
from custody_core.envelope import sign_metablock
from custody_core.link import build_link
from custody_core.software_signer import SoftwareSigner

FAILED = VerifyResult(
    passed=False,
    failures=(VerifyFailure(
        stage="step-rules", step="package",
        rule="MATCH demo-project/* WITH PRODUCTS FROM update-version",
        paths=("demo-project/foo.py",),
        reason="expected_materials of 'package': 'DISALLOW *' failed: disallowed "
               "demo-project/foo.py"),),
    warnings=(VerifyWarning(stage="command-alignment", step="clone",
                            message="clone.1a2b3c4d.link ran ['cp'], expected ['git']"),),
    verdict={"trace": [{"step": "clone", "artifact_type": "products",
                        "rule": "CREATE demo-project/foo.py",
                        "consumed": ["demo-project/foo.py"]}]},
)
PASSED = VerifyResult(passed=True, failures=(), warnings=(), verdict={"trace": []})


def test_a_failure_says_what_where_and_why() -> None:
    text = format_verdict(FAILED, layout_name="root.layout", steps=3, inspections_run=[])
    lines = text.splitlines()
    assert lines[0] == "FAIL: root.layout did not verify (failed at step-rules)"
    assert "[step-rules]" in lines[1] and "DISALLOW *" in lines[1]
    assert "rule: MATCH demo-project/* WITH PRODUCTS FROM update-version" in text
    assert "artifacts: demo-project/foo.py" in text
    assert "warning: [command-alignment] clone:" in text
    assert "rule trace" not in text


def test_the_trace_on_request_and_quiet_keeps_only_failures() -> None:
    traced = format_verdict(FAILED, layout_name="l", steps=3, inspections_run=[],
                            show_trace=True)
    assert "clone products: CREATE demo-project/foo.py -> demo-project/foo.py" in traced
    quiet = format_verdict(FAILED, layout_name="l", steps=3, inspections_run=[], quiet=True)
    assert "warning" not in quiet and quiet.startswith("FAIL")
    assert format_verdict(PASSED, layout_name="l", steps=1, inspections_run=[], quiet=True) == ""


def test_a_pass_counts_steps_and_inspections_run_here() -> None:
    text = format_verdict(PASSED, layout_name="root.layout", steps=3, inspections_run=["untar"])
    assert text == "PASS: root.layout verified (3 steps, 1 inspection run here)"


def test_many_paths_are_shortened() -> None:
    many = VerifyResult(passed=False, failures=(VerifyFailure(
        stage="step-rules", step="s", rule="DISALLOW *",
        paths=tuple(f"f{i}" for i in range(25)), reason="disallowed"),), warnings=(),
        verdict={})
    assert "(and 15 more)" in format_verdict(many, layout_name="l", steps=1, inspections_run=[])


def test_json_for_machines() -> None:
    data = json.loads(verdict_json(FAILED, layout_name="root.layout", inspections_run=["untar"]))
    assert data["passed"] is False
    assert data["failures"][0]["paths"] == ["demo-project/foo.py"]
    assert data["failures"][0]["stage"] == "step-rules"
    assert data["warnings"][0]["step"] == "clone"
    assert data["inspections_run"] == ["untar"]
    assert data["trace"][0]["rule"] == "CREATE demo-project/foo.py"


def test_record_streams_shows_and_captures_with_universal_newlines(
        capfd: pytest.CaptureFixture[str]) -> None:
    result = run_command(
        [sys.executable, "-c",
         "import sys; sys.stdout.write('a\\r\\nb\\rc\\n'); sys.stderr.write('err\\n'); "
         "sys.exit(3)"],
        record_streams=True, timeout=30)
    assert (result.return_code, result.stdout, result.stderr) == (3, "a\nb\nc\n", "err\n")
    shown = capfd.readouterr()
    assert "err" in shown.err and "a" in shown.out


def test_without_record_streams_output_is_shown_not_recorded(
        capfd: pytest.CaptureFixture[str]) -> None:
    result = run_command([sys.executable, "-c", "print('visible')"], record_streams=False,
                         timeout=30)
    assert (result.return_code, result.stdout, result.stderr) == (0, "", "")
    assert "visible" in capfd.readouterr().out


def test_a_command_that_runs_too_long_is_killed() -> None:
    with pytest.raises(CommandTimeoutError, match=r"ran longer than 0\.5 s"):
        run_command([sys.executable, "-c", "import time; time.sleep(30)"],
                    record_streams=True, timeout=0.5)


def test_a_missing_command_is_named() -> None:
    with pytest.raises(InputError, match="command not found: no-such-command-here"):
        run_command(["no-such-command-here"], record_streams=False, timeout=None)


def test_record_start_state_is_a_signed_preliminary_link_excluded_by_default(
        tmp_path: Path) -> None:
    """`record start` writes the link SignLink signed (the server checks it at `stop`);
    `record stop` refuses early a state that is unsigned or for another step."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.c").write_text("int main;")
    materials = record_artifacts(["src"], RecordingOptions(base_path=str(tmp_path)))
    link = build_link(name="compile", command=[], materials=materials, products={},
                      byproducts={}, environment={})
    state = tmp_path / ".compile.link-unfinished"
    state.write_bytes(sign_metablock(link, [SoftwareSigner.generate("ed25519")]))
    assert ExcludeFilter(DEFAULT_EXCLUDE_PATTERNS).excludes(state.name)
    assert _load_state(state, "compile") == state.read_bytes()
    with pytest.raises(InputError, match="not a preliminary link for 'other'"):
        _load_state(state, "other")
    document = json.loads(state.read_text())
    document["signatures"] = []
    state.write_text(json.dumps(document))
    with pytest.raises(InputError, match="is not signed"):
        _load_state(state, "compile")
    state.write_text("{not json")
    with pytest.raises(InputError, match="is not a signed link"):
        _load_state(state, "compile")


def test_backoff_is_bounded_jittered_and_grows() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.5, multiplier=2)
    rng = random.Random(7)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)):
        samples = [policy.backoff(retry, rng=rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # jitter spreads over the whole window
    with pytest.raises(InputError):
        RetryPolicy(max_attempts=0)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only_and_is_cleared() -> None:
    terminal = _Terminal()
    progress = ProgressLine(enabled=True, stream=terminal)
    report = progress.callback("materials")
    assert report is not None
    report(64, 1000)
    report(128, 1000)  # within 0.1 s of the last line: skipped
    report(1000, 1000)  # the last one is always shown
    progress.clear()
    text = terminal.getvalue()
    assert "hashing materials: 64/1000 files" in text
    assert "128/1000" not in text
    assert "1000/1000" in text
    assert text.endswith("\r\x1b[K")
    assert ProgressLine(enabled=True, stream=io.StringIO()).callback("x") is None  # a pipe
    assert ProgressLine(enabled=False, stream=_Terminal()).callback("x") is None  # --quiet


def test_the_servers_verdict_json_is_read_only_when_looked_at() -> None:
    """A verdict printed without --trace or --json never reads the megabytes of a large
    chain's rule trace; read, it goes through the strict reader."""
    from custody_client.client import _VerdictJson

    trace = [{"step": "a", "artifact_type": "products", "rule": "ALLOW *", "consumed": ["x"]}]
    verdict = _VerdictJson(json.dumps({"passed": True, "trace": trace}))
    assert verdict._value is None  # nothing read yet
    result = VerifyResult(passed=True, failures=(), warnings=(), verdict=verdict)
    assert format_verdict(result, layout_name="l", steps=1, inspections_run=[]).startswith(
        "PASS") and verdict._value is None
    assert result.trace == trace and verdict["passed"] is True and len(verdict) == 2
    for refused in ('{"a": 1, "a": 2}', "[1]", "not json", ""):
        assert dict(_VerdictJson(refused)) == {}
