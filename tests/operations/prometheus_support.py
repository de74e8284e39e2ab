"""Prometheus from Debian's package (`prometheus`, with `promtool`) for the tests of
deploy/prometheus/custody-rules.yml and deploy/grafana/custody.json, and what they read
from those files: the rules, the dashboard's queries, the metric names a query uses."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "custody-rules.yml"
RULE_TESTS = Path(__file__).resolve().parent / "prometheus" / "custody-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "custody.json"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"

# What Grafana puts in for the dashboard's variables when every instance is shown.
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$job": "custody", "$instance": ".*"}


def require_tool(name: str) -> str:
    """The path of `name`: skipped on a developer machine without it, a failure in CI
    (where a skipped check would hide breakage), as tests/conftest.py treats SoftHSM."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (apt-get install prometheus)",
                        pytrace=False)
        pytest.skip(f"{name} not available (apt-get install prometheus)")
    return path


@dataclass(frozen=True)
class Rule:
    group: str
    name: str  # the alert's or the recorded series' name
    alert: bool
    expr: str
    annotations: dict[str, str]


def load_rules(path: Path = RULES) -> list[Rule]:
    document = yaml.safe_load(path.read_text())
    return [Rule(group=group["name"], name=rule.get("alert") or rule["record"],
                 alert="alert" in rule, expr=rule["expr"],
                 annotations=rule.get("annotations", {}))
            for group in document["groups"] for rule in group["rules"]]


@dataclass(frozen=True)
class PanelQuery:
    where: str  # the panel's title, or the variable's name
    expr: str  # with the dashboard's variables filled in


def dashboard_queries(path: Path = DASHBOARD) -> list[PanelQuery]:
    """Every panel target's expression, and the metric of every `label_values` variable
    (as a selector), with the variables filled in as Grafana does for "All"."""
    dashboard = json.loads(path.read_text())
    queries = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries.append(PanelQuery(panel["title"], fill_variables(target["expr"])))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            definition = fill_variables(variable["definition"])
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
            assert match, f"variable {variable['name']}: not label_values(): {definition}"
            queries.append(PanelQuery(f"variable {variable['name']}", match.group(1)))
    return queries


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))  # inside a collapsed row
    return found


def fill_variables(expr: str) -> str:
    for variable, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a variable the tests do not know: {expr}"
    return expr


_NOT_METRICS = {
    # binary operators, modifiers and aggregations that may stand without "(" after them
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "sum", "min", "max", "avg", "group", "stddev", "stdvar",
    "count", "count_values", "bottomk", "topk", "quantile", "atan2", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a lexical reading: strings, label
    matchers, ranges, grouping labels, function calls and keywords taken out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.groups()
        if call is None and name.lower() not in _NOT_METRICS:
            names.add(name)
    return names
