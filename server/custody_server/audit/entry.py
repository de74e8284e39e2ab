"""An AuditEvent as an Elastic Common Schema document (without its chain fields).

ECS names for what ECS has a name for (`@timestamp`, `message`, `event.*`, `service.*`,
`host.name`, `user.name`, `source.ip`); Custody's own fields under `custody.*`. The writer
adds `@timestamp`, `service.node.name`, `event.sequence` and `event.hash`. Values are
sanitized: strings are capped, numbers that are not integers become strings (the
canonical form has no floats), and any field whose name says it holds a secret is
replaced by "[redacted]".
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from custody_server import __version__
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

# ECS 8.11 event.category and event.type by action: each type is among the category's
# expected_event_types (tests/audit/ecs_8.11/ holds ECS's own table; every entry the test
# suite writes is checked against it). The access refusals are api/denied (api/allowed
# would be a call let through, which is not audited). An action not listed keeps its
# caller's category, with type info, where ECS allows that (else api/info).
CATEGORIZATION: Mapping[str, tuple[str, str]] = {
    "sign-link": ("api", "creation"),  # a signature made with a key in the HSM
    "sign-layout": ("api", "creation"),
    "verify": ("api", "info"),
    # the attestation store (ECS: a database expects access, change, info or error)
    "store-link": ("database", "change"),
    "add-link": ("database", "change"),
    "store-retention": ("database", "change"),
    "store-read": ("database", "access"),  # GetLink, ListLinks, a plan from the store
    "key-create": ("configuration", "creation"),
    "key-prepare": ("configuration", "creation"),
    "key-rotate": ("configuration", "change"),
    "key-retire": ("configuration", "change"),
    "key-destroy": ("configuration", "deletion"),
    "authenticate": ("authentication", "info"),
    "authorize": ("api", "denied"),
    "rate-limit": ("api", "denied"),
    "request-limit": ("api", "denied"),
    "decode-request": ("api", "denied"),
    "policy-reload": ("configuration", "change"),
    "crl-reload": ("configuration", "change"),
    "server-start": ("process", "start"),
    "server-stop": ("process", "end"),
    "audit-open": ("file", "access"),
    "audit-checkpoint": ("file", "info"),
    "audit-recovered": ("file", "change"),
    "audit-new-segment": ("file", "creation"),
}
_INFO_CATEGORIES = frozenset({  # the ECS categories that expect type info
    "api", "authentication", "configuration", "database", "driver", "email", "file", "host",
    "iam", "intrusion_detection", "malware", "network", "package", "process", "session",
    "vulnerability", "web"})


def _host_name() -> str:
    try:
        return socket.gethostname()[:255] or "unknown"
    except OSError:
        return "unknown"


HOST_NAME = _host_name()  # the machine (or container) the server runs on: host.name


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
    category, event_type = categorization(event)
    ecs_event: dict[str, Any] = {
        "action": _clean(event.action),
        "category": [category],
        "type": [event_type],
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
        "service": {"name": SERVICE_NAME, "version": __version__},  # the writer adds node
        "host": {"name": HOST_NAME},
        "event": ecs_event,
        "custody": custody,
    }
    peer = str(request.get("peer") or (caller if _PEER.match(caller) else ""))
    if source := _source(peer):
        entry["source"] = source
    user = caller if caller and caller != peer else ""
    if user:
        entry["user"] = {"name": _clean(user)}  # the client certificate's identity
    entry["message"] = _message(event, key, custody.get("step"), user)
    return entry


def categorization(event: AuditEvent) -> tuple[str, str]:
    """The event's ECS (event.category, event.type)."""
    known = CATEGORIZATION.get(event.action)
    if known is None:
        return (event.category if event.category in _INFO_CATEGORIES else "api"), "info"
    category, event_type = known
    if event_type == "denied" and event.outcome == "success":
        return category, "allowed"
    return category, event_type


def _message(event: AuditEvent, key: Mapping[str, Any], step: Any, user: str) -> str:
    """One line for people: what, how it ended, with which key, for what, by whom, why."""
    about = []
    if key.get("alias"):
        version = key.get("version")
        about.append(f"key {key['alias']}" + (f" v{version}" if version is not None else ""))
    if isinstance(step, str) and step:
        about.append(f"step {step}")
    if user:
        about.append(f"by {user}")
    text = f"{event.action} {event.outcome}" + (": " + ", ".join(about) if about else "")
    if event.reason:
        text += f" ({event.reason})"
    return _clean(text)


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
