"""The lifecycle record of an alias, kept in the token as a data object beside its keys.

Every replica that uses the token reads the same record, so the versions and windows are
the same everywhere without another database. The record is a small JSON document under
the label `custody:<alias>:lifecycle`:

    {"format": "custody.key-lifecycle/v2", "alias": "build",
     "versions": [{"version": 1, "algorithm": "ecdsa-p256", "public_key": {...},
                   "created": "...", "activated": "...", "next": false,
                   "verify_until": "...", "retired_at": null, "destroyed_at": null}, ...]}

v2 added the next version (pre-rotation: `next`, `activated`). Records in v1, written
before it, are read as they are: every version was activated when it was created, none is
next. A server that knows only v1 refuses a v2 record ("unknown format"), so it never takes
a next version for the active one.

The public key of each version is kept in the record, so a destroyed version still has
its keyid (and a signature by it still gets a precise reason). Writes go through
`Pkcs11KeyStore.write_object` (a new object with a higher generation, newest wins), which
is not coordinated between processes: writers hold the lifecycle guard (see `guard`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from custody_core.errors import CustodyError, KeyFormatError
from custody_core.keys import PublicKey
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.model import KeyVersion, ServiceKey
from custody_server.lifecycle.rotation import VersionLifecycle

FORMAT = "custody.key-lifecycle/v2"
FORMAT_V1 = "custody.key-lifecycle/v1"  # before pre-rotation: read, never written
_MAX_RECORD_BYTES = 1024 * 1024


class LifecycleStateError(CustodyError):
    """The lifecycle record in the token cannot be read: damaged or from a newer server."""


def lifecycle_label(alias: str) -> str:
    return f"custody:{alias}:lifecycle"


def encode_record(alias: str, versions: Sequence[KeyVersion]) -> bytes:
    document = {
        "format": FORMAT,
        "alias": alias,
        "versions": [_encode_version(v) for v in versions],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def decode_record(alias: str, data: bytes) -> tuple[KeyVersion, ...]:
    """The versions in a record; LifecycleStateError names what is wrong."""
    where = f"lifecycle record of {alias!r}"
    if len(data) > _MAX_RECORD_BYTES:
        raise LifecycleStateError(f"{where} is over {_MAX_RECORD_BYTES} bytes")
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") not in (FORMAT,
                                                                              FORMAT_V1):
            raise LifecycleStateError(f"{where}: unknown format (expected {FORMAT})")
        if document.get("alias") != alias:
            raise LifecycleStateError(f"{where} names alias {document.get('alias')!r}")
        entries = document.get("versions")
        if not isinstance(entries, list):
            raise LifecycleStateError(f"{where}: versions must be a list")
        versions = tuple(_decode_version(alias, entry) for entry in entries)
        ServiceKey(alias=alias, versions=versions)  # the invariants hold, or ValueError
    except LifecycleStateError:
        raise
    except (ValueError, TypeError, KeyError, KeyFormatError) as error:
        raise LifecycleStateError(f"{where} is damaged: {error}") from None
    return versions


def _encode_version(version: KeyVersion) -> dict[str, Any]:
    lifecycle = version.lifecycle
    return {
        "version": version.version,
        "algorithm": version.algorithm.value,
        "public_key": version.public_key.to_dict(),
        "created": _time(lifecycle.created),
        "activated": _time(lifecycle.activated),
        "next": lifecycle.pending,
        "verify_until": _time(lifecycle.verify_until),
        "retired_at": _time(lifecycle.retired_at),
        "destroyed_at": _time(lifecycle.destroyed_at),
    }


def _decode_version(alias: str, entry: Any) -> KeyVersion:
    if not isinstance(entry, dict):
        raise TypeError("a version entry must be an object")
    number = entry["version"]
    if not isinstance(number, int) or isinstance(number, bool):
        raise TypeError("version must be an integer")
    pending = entry.get("next", False)
    if not isinstance(pending, bool):
        raise TypeError("next must be true or false")
    return KeyVersion(
        alias=alias,
        version=number,
        algorithm=KeyAlgorithm(entry["algorithm"]),
        public_key=PublicKey.from_dict(entry["public_key"]),
        lifecycle=VersionLifecycle(
            version=number,
            created=_parse_time(entry.get("created")),
            verify_until=_parse_time(entry.get("verify_until")),
            retired_at=_parse_time(entry.get("retired_at")),
            destroyed_at=_parse_time(entry.get("destroyed_at")),
            activated=_parse_time(entry.get("activated")),
            pending=pending,
        ),
    )


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("times must be ISO 8601 strings")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"time {value[:40]!r} has no timezone")
    return moment


class TokenLifecycleStore:
    """Reads and writes lifecycle records in the token. Writers hold the lifecycle guard."""

    def __init__(self, store: Pkcs11KeyStore) -> None:
        self._store = store

    def read(self, alias: str) -> tuple[KeyVersion, ...] | None:
        data = self._store.read_object(lifecycle_label(alias))
        return None if data is None else decode_record(alias, data)

    def write(self, key: ServiceKey) -> None:
        self._store.write_object(lifecycle_label(key.alias), encode_record(key.alias,
                                                                          key.versions))
