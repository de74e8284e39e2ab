"""`custody keys rotate|retire|list` against a real server, and the [lifecycle] config."""

from __future__ import annotations

import argparse
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from custody_client.cli import main as custody
from custody_client.cli_keys import parse_duration
from custody_server.config import config_from_dict
from custody_server.errors import ConfigError
from custody_server.lifecycle.settings import LifecycleSettings, RotationSchedule

from .lifecycle_support import ClockedService, clocked_fixture, unique_alias

SERVER_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


clocked = clocked_fixture("cli", LifecycleSettings(scheduler=False, schedules={
    "sched-cli": RotationSchedule(period=timedelta(days=30), overlap=timedelta(hours=1))}))


def _run(service: ClockedService, capsys: pytest.CaptureFixture[str],
         *arguments: str) -> tuple[int, str, str]:
    code = custody([*arguments, "--server", service.address, "--plaintext"])
    captured = capsys.readouterr()
    # The in-process server's own log lines land in the same captured stdout.
    out = "".join(line for line in captured.out.splitlines(keepends=True)
                  if not SERVER_LOG_LINE.match(line))
    return code, out, captured.err


def test_rotate_retire_and_list(clocked: ClockedService,
                                capsys: pytest.CaptureFixture[str]) -> None:
    alias = unique_alias("cli")
    assert _run(clocked, capsys, "keys", "create", alias)[0] == 0
    code, out, _ = _run(clocked, capsys, "keys", "rotate", alias, "--overlap", "72h")
    assert code == 0
    until = (clocked.clock.now() + timedelta(hours=72)).isoformat(timespec="seconds")
    assert out.startswith(f"rotated {alias}: v2 signs now (keyid ")
    assert out.rstrip().endswith(f"v1 verifies until {until.replace('+00:00', 'Z')}; "
                                 "next version v3")

    code, out, _ = _run(clocked, capsys, "keys", "list")
    rows = [line.split() for line in out.splitlines() if line.startswith(alias)]
    assert [(r[1], r[2]) for r in rows] == [("v1", "verify-only"), ("v2", "active"),
                                            ("v3", "next")]
    assert rows[0][5] == until.replace("+00:00", "Z") and rows[1][5] == "-"
    assert " ".join(rows[2][6:]) == "signs from the next rotation"

    code, out, _ = _run(clocked, capsys, "keys", "retire", alias, "--version", "1")
    assert code == 0 and out.startswith(f"{alias} v1 is retired: its window ended at ")
    code, out, _ = _run(clocked, capsys, "keys", "list", "--json")
    listed = {k["alias"]: k for k in json.loads(out)}[alias]
    assert [v["state"] for v in listed["versions"]] == ["retired", "active", "next"]
    assert listed["versions"][0]["retired"] is not None
    assert listed["versions"][2]["activated"] is None and listed["next_version"] == 3
    assert listed["rotation_period_seconds"] is None

    # Retiring the next version (say, it leaked) replaces it, with a warning.
    code, out, err = _run(clocked, capsys, "keys", "retire", alias, "--version", "3")
    assert code == 0 and out.startswith(f"{alias} v3 is retired: its window ended at ")
    assert f"{alias} v3 was the next version: {alias} v4 replaces it" in err
    code, out, _ = _run(clocked, capsys, "keys", "list", "--json")
    listed = {k["alias"]: k for k in json.loads(out)}[alias]
    assert [v["state"] for v in listed["versions"]] == ["retired", "active", "retired", "next"]

    code, _, err = _run(clocked, capsys, "keys", "retire", alias, "--version", "2")
    assert code == 4  # the server refused it (EXIT_REFUSED)
    assert err.startswith("custody keys retire: RetireKey: ") and "active version" in err


def test_scheduled_key_lists_its_next_rotation(clocked: ClockedService,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(clocked, capsys, "keys", "create", "sched-cli")[0] == 0
    _, out, _ = _run(clocked, capsys, "keys", "list", "--json")
    listed = {k["alias"]: k for k in json.loads(out)}["sched-cli"]
    assert listed["rotation_period_seconds"] == 30 * 86400
    created = clocked.clock.now() + timedelta(days=30)
    assert listed["next_rotation"] == created.isoformat(timespec="seconds").replace(
        "+00:00", "Z")
    _, out, _ = _run(clocked, capsys, "keys", "list")
    rows = [line for line in out.splitlines() if line.startswith("sched-cli")]
    when = listed["next_rotation"]
    assert rows[0].endswith(f"next rotation {when}")
    assert rows[1].endswith(f"signs from the next rotation ({when})")


@pytest.mark.parametrize(("text", "seconds"), [("72h", 259200), ("0s", 0), ("1d12h", 129600),
                                               ("90m", 5400)])
def test_cli_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "72", "h", "-1h", "1h 2m"])
def test_cli_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_lifecycle_config() -> None:
    config = config_from_dict({"lifecycle": {
        "cache_ttl": "2s", "check_interval": 30, "scheduler": False, "default_overlap": "1d",
        "destroy_after": "7d", "lock_file": "run/lifecycle.lock", "threshold_next": False,
        "layout_expiry_check": "refuse",
        "rotation": {"build": {"period": "90d"}, "owner": {"period": "1w", "overlap": "2h"}},
    }}, base=Path("/etc/custody"))
    settings = config.lifecycle
    assert settings.cache_ttl_seconds == 2 and settings.check_interval_seconds == 30
    assert settings.scheduler is False
    assert settings.destroy_after == timedelta(days=7)
    assert settings.lock_file == Path("/etc/custody/run/lifecycle.lock")
    assert settings.schedules["build"] == RotationSchedule(period=timedelta(days=90),
                                                           overlap=timedelta(days=1))
    assert settings.schedules["owner"].overlap == timedelta(hours=2)
    assert settings.threshold_next is False and settings.layout_expiry_check == "refuse"
    assert config_from_dict({}, base=Path("/")).lifecycle == LifecycleSettings()


@pytest.mark.parametrize(("table", "message"), [
    ({"cache_ttl": "soon"}, "lifecycle.cache_ttl"),
    ({"ttl": "5s"}, "unknown key(s) in [lifecycle]: ttl"),
    ({"rotation": {"build": {"overlap": "1h"}}}, "[lifecycle.rotation.build] must be a table "
                                                 "with a period"),
    ({"rotation": {"build": {"period": "0s"}}}, "rotation period must be positive"),
    ({"rotation": {"Bad Alias": {"period": "1d"}}}, "is not a key alias"),
    ({"scheduler": "yes"}, "lifecycle.scheduler must be true or false"),
    ({"check_interval": "0s"}, "check_interval must be positive"),
    ({"threshold_next": "no"}, "lifecycle.threshold_next must be true or false"),
    ({"layout_expiry_check": "fail"}, 'lifecycle.layout_expiry_check must be "warn" or'),
])
def test_bad_lifecycle_config_is_named(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"lifecycle": table}, base=Path("/"))
    assert message in str(caught.value)
