"""Lifecycle settings: scheduled rotation per alias, retention, cache TTL, lock file.

In the server's TOML config (every key optional):

    [lifecycle]
    cache_ttl = "5s"            # how long a replica trusts its view of versions and windows
    check_interval = "60s"      # how often the scheduler looks for due work
    scheduler = true            # run scheduled rotation and destruction in this replica
    default_overlap = "72h"     # RotateKey without an overlap
    destroy_after = "30d"       # retention: a retired version's key is destroyed after this
    lock_file = "/shared/custody-lifecycle.lock"  # default: in the SoftHSM token directory
    threshold_next = true       # threshold >= 2 steps list the next version too
    layout_expiry_check = "warn"  # or "refuse": a layout that outlives its keys' schedules

    [lifecycle.rotation.build]  # rotate the alias "build" every 90 days
    period = "90d"
    overlap = "72h"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from custody_server.lifecycle.durations import parse_duration

DEFAULT_OVERLAP = timedelta(hours=72)
DEFAULT_RETENTION = timedelta(days=30)
DEFAULT_CACHE_TTL_SECONDS = 5.0
DEFAULT_CHECK_INTERVAL_SECONDS = 60.0
_ALIAS = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
EXPIRY_CHECKS = ("warn", "refuse")


@dataclass(frozen=True)
class RotationSchedule:
    """Rotate an alias every `period`; the replaced version verifies for `overlap`."""

    period: timedelta
    overlap: timedelta = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if self.period <= timedelta(0):
            raise ValueError("a rotation period must be positive")
        if self.overlap < timedelta(0):
            raise ValueError("an overlap must not be negative")


@dataclass(frozen=True)
class LifecycleSettings:
    cache_ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS
    check_interval_seconds: float = DEFAULT_CHECK_INTERVAL_SECONDS
    scheduler: bool = True
    default_overlap: timedelta = DEFAULT_OVERLAP
    destroy_after: timedelta = DEFAULT_RETENTION
    lock_file: Path | None = None
    schedules: Mapping[str, RotationSchedule] = field(
        default_factory=lambda: MappingProxyType({}))
    # SignLayout: threshold >= 2 steps list each alias's next version too (pre-rotation;
    # the reference in-toto-verify then counts one functionary's two versions twice)
    threshold_next: bool = True
    # SignLayout, when a layout's expiry lies beyond what its aliases' schedules allow
    layout_expiry_check: str = "warn"

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", MappingProxyType(dict(self.schedules)))
        if self.cache_ttl_seconds < 0:
            raise ValueError("lifecycle.cache_ttl must not be negative")
        if self.check_interval_seconds <= 0:
            raise ValueError("lifecycle.check_interval must be positive")
        if self.layout_expiry_check not in EXPIRY_CHECKS:
            raise ValueError("lifecycle.layout_expiry_check must be \"warn\" or \"refuse\"")
        if self.default_overlap < timedelta(0) or self.destroy_after < timedelta(0):
            raise ValueError("lifecycle.default_overlap and destroy_after must not be negative")
        for alias in self.schedules:
            if not _ALIAS.match(alias):
                raise ValueError(f"lifecycle.rotation: {alias[:80]!r} is not a key alias")


_TABLE_KEYS = {"cache_ttl", "check_interval", "scheduler", "default_overlap", "destroy_after",
               "lock_file", "rotation", "threshold_next", "layout_expiry_check"}


def lifecycle_settings_from_table(table: Any, *, base: Path) -> LifecycleSettings:
    """The [lifecycle] table of the config file; ValueError names the bad key."""
    if not isinstance(table, dict):
        raise ValueError("[lifecycle] must be a table")
    unknown = sorted(set(table) - _TABLE_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) in [lifecycle]: {', '.join(unknown)}")
    scheduler = table.get("scheduler", True)
    if not isinstance(scheduler, bool):
        raise ValueError("lifecycle.scheduler must be true or false")
    threshold_next = table.get("threshold_next", True)
    if not isinstance(threshold_next, bool):
        raise ValueError("lifecycle.threshold_next must be true or false")
    expiry_check = table.get("layout_expiry_check", "warn")
    if expiry_check not in EXPIRY_CHECKS:
        raise ValueError("lifecycle.layout_expiry_check must be \"warn\" or \"refuse\"")
    lock_file = table.get("lock_file")
    if lock_file is not None and not isinstance(lock_file, str):
        raise ValueError("lifecycle.lock_file must be a path string")
    default_overlap = _duration(table, "default_overlap", DEFAULT_OVERLAP, "lifecycle")
    return LifecycleSettings(
        cache_ttl_seconds=_duration(table, "cache_ttl", timedelta(
            seconds=DEFAULT_CACHE_TTL_SECONDS), "lifecycle").total_seconds(),
        check_interval_seconds=_duration(table, "check_interval", timedelta(
            seconds=DEFAULT_CHECK_INTERVAL_SECONDS), "lifecycle").total_seconds(),
        scheduler=scheduler,
        default_overlap=default_overlap,
        destroy_after=_duration(table, "destroy_after", DEFAULT_RETENTION, "lifecycle"),
        lock_file=None if lock_file is None else _resolve(Path(lock_file).expanduser(), base),
        schedules=_schedules(table.get("rotation", {}), default_overlap),
        threshold_next=threshold_next,
        layout_expiry_check=expiry_check,
    )


def _schedules(table: Any, default_overlap: timedelta) -> dict[str, RotationSchedule]:
    if not isinstance(table, dict):
        raise ValueError("[lifecycle.rotation] must be a table of aliases")
    schedules = {}
    for alias, entry in table.items():
        where = f"lifecycle.rotation.{alias}"
        if not isinstance(entry, dict) or "period" not in entry:
            raise ValueError(f"[{where}] must be a table with a period")
        unknown = sorted(set(entry) - {"period", "overlap"})
        if unknown:
            raise ValueError(f"unknown key(s) in [{where}]: {', '.join(unknown)}")
        schedules[alias] = RotationSchedule(
            period=_duration(entry, "period", timedelta(0), where),
            overlap=_duration(entry, "overlap", default_overlap, where),
        )
    return schedules


def _duration(table: dict[str, Any], key: str, default: timedelta, where: str) -> timedelta:
    if key not in table:
        return default
    return parse_duration(table[key], what=f"{where}.{key}")


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path
