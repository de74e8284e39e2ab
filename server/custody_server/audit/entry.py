"""An AuditEvent as an Elastic Common Schema document (without its chain fields).

ECS names for what ECS has a name for (`@timestamp`, `event.*`, `service.name`,
`user.name`, `source.ip`); Custody's own fields under `custody.*`. The writer adds
`event.sequence` and `event.hash`. Values are sanitized: strings are capped, numbers
that are not integers become strings (the canonical form has no floats), and any
field whose name says it holds a secret is replaced by "[redacted]".
"""

from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from custody_server.audit_events import AuditEvent

ECS_VERSION = "8.11.0"
SERVICE_NAME = "custody"
DATASET = "custody.audit"
MAX_STRING = 1024
REDACTED = "[redacted]"

# Details keys the services use, moved to their ECS or custody.* place.
_KEY_FIELDS = {"key_alias": "alias", "key_version": "version", "keyid": "id"}
# custody.* fields the writer sets (audit_trail's format): a detail never takes their place.
_WRITER_FIELDS = frozenset({"seal", "trail_id"})
_SECRET_WORDS = frozenset({"pin", "password", "passphrase", "secret", "private", "payload"})
_WORD = re.compile(r"[a-z0-9]+")
_PEER = re.compile(r"^(?P<family>ipv4|ipv6):(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$")

# ECS event.type by action; anything else is "info".
_TYPES: Mapping[str, tuple[str, ...]] = {
    "sign-link": ("creation",),
    "sign-layout": ("creation",),
    "key-create": ("creation",),
    "key-rotate": ("change",),
    "key-retire": ("change",),
    "key-destroy": ("deletion",),
    "server-start": ("start",),
    "server-stop": ("end",),
    "audit-open": ("start",),
}


class _EventIds:
    """`event.id`s: this process's random 64-bit instance id, then a 64-bit counter.

    Unique like a random 128-bit id (32 hex digits), without a system call (getrandom)
    per entry: under load each system call is a hand-off of the interpreter lock, and
    the audit path is on every signature. The ids are not secrets; the trail does not
    leave the server.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._instance = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._instance}{next(self._counter):016x}"


new_event_id = _EventIds().next


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. 2026-11-22T06:30:00.123456Z."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def ecs_entry(event: AuditEvent, *, event_id: str,
              request: Mapping[str, Any]) -> dict[str, Any]:
    """The entry for `event`; `request` is the RPC's context (request_id, rpc, peer).

    `@timestamp` is set by the writer, in sequence order.
    """
    ecs_event: dict[str, Any] = {
        "action": _clean(event.action),
        "category": [_clean(event.category)],
        "type": list(_event_types(event)),
        "outcome": _clean(event.outcome),
        "kind": "event",
        "dataset": DATASET,
        "id": event_id,
    }
    if event.reason:
        ecs_event["reason"] = _clean(event.reason)
    custody: dict[str, Any] = {}
    key: dict[str, Any] = {}
    caller = ""
    for name, value in event.details.items():
        if name in _KEY_FIELDS:
            key[_KEY_FIELDS[name]] = _value(name, value)
        elif name == "caller":
            caller = str(value)
        else:
            field = _clean(name)
            custody[f"detail_{field}" if field in _WRITER_FIELDS else field] = _value(name, value)
    if key:
        custody["key"] = key
    for name in ("request_id", "rpc"):
        if request.get(name):
            custody[name] = _clean(str(request[name]))
    entry: dict[str, Any] = {
        "ecs": {"version": ECS_VERSION},
        "service": {"name": SERVICE_NAME},
        "event": ecs_event,
        "custody": custody,
    }
    peer = str(request.get("peer") or (caller if _PEER.match(caller) else ""))
    if source := _source(peer):
        entry["source"] = source
    if caller and caller != peer:
        entry["user"] = {"name": _clean(caller)}  # the client certificate's identity
    return entry


def _event_types(event: AuditEvent) -> tuple[str, ...]:
    if event.outcome == "failure" and event.category in ("authentication", "iam"):
        return ("denied",)
    return _TYPES.get(event.action, ("info",))


def _source(peer: str) -> dict[str, Any] | None:
    match = _PEER.match(peer)
    if not match:
        return None
    host = match["host"].strip("[]")
    return {"ip": host, "address": host, "port": int(match["port"])}


def _value(name: str, value: Any, depth: int = 0) -> Any:
    if _is_secret(name):
        return REDACTED
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _clean(value)
    if depth < 4 and isinstance(value, Mapping):
        return {_clean(str(k)): _value(str(k), v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return [_value(name, v, depth + 1) for v in value[:100]]
    return _clean(str(value))


@functools.lru_cache(maxsize=1024)
def _is_secret(name: str) -> bool:
    return any(word in _SECRET_WORDS for word in _WORD.findall(name.lower()))


def _clean(text: str) -> str:
    """Capped, and valid UTF-8 (a lone surrogate cannot be written)."""
    if len(text) <= MAX_STRING and text.isascii():
        return text
    return text[:MAX_STRING].encode("utf-8", "replace").decode("utf-8")
