"""A verification verdict as a person reads it, or as JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from custody_client.models import VerifyFailure, VerifyResult
from custody_core.display import escape_unprintable

_MAX_PATHS_SHOWN = 10


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _paths(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_MAX_PATHS_SHOWN])
    more = len(paths) - _MAX_PATHS_SHOWN
    return f"{shown} (and {more} more)" if more > 0 else shown


def _failure_lines(failure: VerifyFailure) -> list[str]:
    where = f"{failure.step}: " if failure.step and failure.step not in failure.reason else ""
    lines = [f"  [{failure.stage}] {where}{failure.reason}"]
    if failure.rule and failure.rule not in failure.reason:
        lines.append(f"      rule: {failure.rule}")
    if failure.paths:
        lines.append(f"      artifacts: {_paths(failure.paths)}")
    return lines


def _trace_lines(trace: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["rule trace:"]
    for entry in trace:
        consumed = entry.get("consumed") or []
        lines.append(f"  {entry.get('step')} {entry.get('artifact_type')}: "
                     f"{entry.get('rule')} -> "
                     f"{_paths([str(p) for p in consumed]) if consumed else '(nothing)'}")
    return lines


def format_verdict(
    result: VerifyResult,
    *,
    layout_name: str,
    steps: int,
    inspections_run: Sequence[str],
    show_trace: bool = False,
    quiet: bool = False,
    artifacts: int = 0,
    stored_run: str | None = None,
) -> str:
    """Human lines: the verdict first, then what failed (stage, step, rule, artifacts),
    then warnings; the rule trace on request. Quiet keeps only the failures.
    `stored_run`: the links came from the attestation store, of this run ("": none
    found)."""
    lines: list[str] = []
    if result.passed:
        if not quiet:
            ran = f", {_plural(len(inspections_run), 'inspection')} run here" \
                if inspections_run else ""
            if artifacts:
                ran += f", {_plural(artifacts, 'artifact')} checked"
            lines.append(f"PASS: {layout_name} verified ({_plural(steps, 'step')}{ran})")
    else:
        stage = result.failures[0].stage if result.failures else "unknown"
        lines.append(f"FAIL: {layout_name} did not verify (failed at {stage})")
        for failure in result.failures:
            lines.extend(_failure_lines(failure))
    if stored_run and not quiet:
        lines.insert(1, f"links: run {stored_run}, from the attestation store")
    if not quiet:
        for warning in result.warnings:
            where = f"{warning.step}: " if warning.step else ""
            lines.append(f"warning: [{warning.stage}] {where}{warning.message}")
        if show_trace:
            lines.extend(_trace_lines(result.trace))
    # Paths, step names and reasons come from links and layouts: escaped line by line,
    # so none can start a line of its own (a forged PASS, a CI log's workflow command).
    return "\n".join(escape_unprintable(line) for line in lines)


def verdict_json(result: VerifyResult, *, layout_name: str,
                 inspections_run: Sequence[str], run_id: str | None = None) -> str:
    """`run_id`: the links came from the attestation store, of this run (a key only
    then)."""
    stored = {} if run_id is None else {"run_id": run_id or None}
    return json.dumps({
        **stored,
        "passed": result.passed,
        "layout": layout_name,
        "failures": [
            {"stage": f.stage, "step": f.step or None, "rule": f.rule or None,
             "paths": list(f.paths), "reason": f.reason}
            for f in result.failures
        ],
        "warnings": [{"stage": w.stage, "step": w.step or None, "message": w.message}
                     for w in result.warnings],
        "inspections_run": list(inspections_run),
        "trace": list(result.trace),
    }, indent=2, sort_keys=True)
