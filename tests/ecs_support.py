"""Audit entries checked against the ECS schema kept in tests/audit/ecs/ (ECS 8.11.0).

`problems(entry)` names every way an entry is not valid ECS as Custody promises it: a field
ECS defines with a value of another type, an array field that is not an array, a value
outside the allowed ones, an event.type its event.category does not expect, a field
outside ECS that is not under `custody.*`, or a field Custody always writes missing.

`EntryCollector` checks entries as the test suite makes them (tests/conftest.py wraps the
audit trail's renderer and MemoryAuditSink with it).
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml

SCHEMA_FILE = Path(__file__).parent / "audit" / "ecs" / "ecs_flat_8.11.0.yml"
CUSTOM_NAMESPACE = "custody"
# What every entry has (docs/AUDIT.md); the writer adds the chain fields and the node.
REQUIRED = ("ecs.version", "message", "host.name", "service.name", "service.version",
            "event.kind", "event.action", "event.category", "event.type", "event.outcome",
            "event.dataset", "event.id")
WRITTEN = ("@timestamp", "service.node.name", "event.sequence", "event.hash")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SCHEMA_FILE.read_text())
    return loaded


def expected_types() -> dict[str, set[str]]:
    """event.category -> the event.types ECS expects with it."""
    return {value["name"]: set(value["expected_event_types"])
            for value in schema()["fields"]["event.category"]["allowed_values"]}


def _leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        return [leaf for key, inner in value.items()
                for leaf in _leaves(inner, f"{prefix}.{key}" if prefix else str(key))]
    return [(prefix, value)]


def _type_problem(name: str, ecs_type: str, value: Any) -> str | None:
    if isinstance(value, list):
        bad = [p for p in (_type_problem(name, ecs_type, v) for v in value) if p]
        return bad[0] if bad else None
    ok = {
        "keyword": lambda v: isinstance(v, str),
        "constant_keyword": lambda v: isinstance(v, str),
        "wildcard": lambda v: isinstance(v, str),
        "match_only_text": lambda v: isinstance(v, str),
        "text": lambda v: isinstance(v, str),
        "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "date": lambda v: isinstance(v, str) and bool(_DATE.match(v)) and _iso(v),
        "ip": lambda v: isinstance(v, str) and _ip(v),
        "object": lambda v: isinstance(v, dict),
        "flattened": lambda v: isinstance(v, dict),
    }.get(ecs_type)
    if ok is None:
        return f"{name}: the check knows no ECS type {ecs_type!r}"
    return None if ok(value) else f"{name}: {value!r:.80} is not of ECS type {ecs_type}"


def _iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def problems(entry: Mapping[str, Any], *, written: bool = False) -> list[str]:
    """Every way `entry` is not valid ECS 8.11 (empty: valid). `written`: as the audit
    trail wrote it (the chain fields and the node present too)."""
    fields: dict[str, Any] = schema()["fields"]
    found: list[str] = []
    if CUSTOM_NAMESPACE in schema()["top_level_names"]:
        found.append(f"ECS defines {CUSTOM_NAMESPACE}: Custody's namespace collides")
    leaves = dict(_leaves(entry))
    for name, value in leaves.items():
        top = name.split(".", 1)[0]
        if top == CUSTOM_NAMESPACE:
            continue
        spec = fields.get(name)
        if spec is None:
            found.append(f"{name}: not an ECS field, and not under {CUSTOM_NAMESPACE}.*")
            continue
        if "array" in spec.get("normalize", []) and not isinstance(value, list):
            found.append(f"{name}: ECS normalizes it to an array, got {value!r:.80}")
        if problem := _type_problem(name, spec["type"], value):
            found.append(problem)
        allowed = {v["name"] for v in spec.get("allowed_values", [])}
        values = value if isinstance(value, list) else [value]
        found += [f"{name}: {v!r} is not an allowed value" for v in values
                  if allowed and v not in allowed]
    for name in (*REQUIRED, *(WRITTEN if written else ())):
        if leaves.get(name) in (None, "", []):
            found.append(f"{name}: missing")
    categories = leaves.get("event.category") or []
    types = leaves.get("event.type") or []
    expected = expected_types()
    for category in categories if isinstance(categories, list) else []:
        for event_type in types if isinstance(types, list) else []:
            if event_type not in expected.get(category, set()):
                found.append(f"event.type {event_type!r} is not expected with event.category "
                             f"{category!r} (ECS expects {sorted(expected.get(category, []))})")
    if leaves.get("ecs.version") != schema()["ecs_version"]:
        found.append(f"ecs.version {leaves.get('ecs.version')!r} is not the schema's "
                     f"{schema()['ecs_version']}")
    return found


class EntryCollector:
    """Checks entries as they are made; keeps the first problems and what it saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.checked = 0
        self.actions: set[str] = set()
        self.problems: dict[str, str] = {}  # problem -> the action of its first entry

    def check(self, entry: Mapping[str, Any], *, written: bool) -> None:
        found = problems(entry, written=written)
        action = str(entry.get("event", {}).get("action", "?"))
        with self._lock:
            self.checked += 1
            self.actions.add(action)
            for problem in found:
                self.problems.setdefault(problem, action)
