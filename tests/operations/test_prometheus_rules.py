"""deploy/prometheus/custody-rules.yml through Debian's promtool: the rules check, every
alert has a unit test that fires it and one where it stays silent
(tests/operations/prometheus/custody-rules.test.yml), each firing test depends on its
alert's expression, and each alert has its runbook entry in docs/OPERATIONS.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .prometheus_support import (
    OPERATIONS,
    RULE_TESTS,
    RULES,
    Rule,
    load_rules,
    metric_names,
    require_tool,
)

ALERTS = [rule for rule in load_rules() if rule.alert]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, check=False)


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_the_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text())
    fired: set[str] = set()
    silent: set[str] = set()
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    names = {alert.name for alert in ALERTS}
    assert names - fired == set(), "alerts no unit test fires"
    assert names - silent == set(), "alerts no unit test expects silent"
    assert (fired | silent) - names == set(), "unit tests of alerts that do not exist"


@pytest.mark.parametrize("alert", ALERTS, ids=lambda alert: alert.name)
def test_each_firing_test_fails_when_its_alert_never_fires(alert: Rule,
                                                           tmp_path: Path) -> None:
    """Replace one alert's expression with one that is never true: its unit tests that
    expect it to fire must now fail, so they test that expression and not another."""
    name = alert.name
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                rule["expr"] = "vector(1) == 0"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = ["rules.yml"]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode != 0, f"no unit test noticed that {name} never fires"
    assert f"alertname: {name}," in result.stdout + result.stderr


def test_every_alert_has_a_runbook_entry() -> None:
    operations = OPERATIONS.read_text()
    headings = set(re.findall(r"^#### (Custody\w+)$", operations, re.MULTILINE))
    for alert in ALERTS:
        assert alert.annotations["runbook"] == f"docs/OPERATIONS.md#{alert.name.lower()}"
        assert alert.name in headings, f"docs/OPERATIONS.md has no '#### {alert.name}'"
        assert {"summary", "description"} <= set(alert.annotations)
    assert headings == {alert.name for alert in ALERTS}, "runbook entries of no alert"


def test_metric_names_are_read_from_promql() -> None:
    assert metric_names(
        'sum by (job, le) (rate(custody_rpc_duration_seconds_bucket{rpc="Verify",'
        'stage=~"a|b"}[5m])) / on (job) group_left sum without (x) (custody_x_total)'
        ' offset 5m > bool 1e3 and time() - up{job="$job"}') == {
        "custody_rpc_duration_seconds_bucket", "custody_x_total", "up"}
    assert metric_names("histogram_quantile(0.99, sum(rate(a:b:c[1m])) by (le))") == {"a:b:c"}
    assert metric_names('absent(up{job="custody"})') == {"up"}
    assert metric_names("-custody_key_next_rotation_seconds > 3600") == {
        "custody_key_next_rotation_seconds"}
