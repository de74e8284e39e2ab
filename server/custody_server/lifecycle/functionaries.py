"""SignLayout's resolution of "alias:NAME" in a step's pubkeys, window- and threshold-aware.

- A step with threshold 1 gets every version of the alias that verifies at signing time
  (the active one and those inside their overlap window), so links signed just before a
  rotation keep verifying. A warning says until when each old version verifies.
- A step with threshold 2 or more gets only the active version of each alias. A layout
  Custody signs is also checked by other verifiers, and the reference in-toto-verify
  counts key ids, not functionaries: with two versions of one key listed, one functionary
  could meet a threshold of two alone. A warning says which versions were left out.
- A step with threshold 2 or more that lists two versions of one key by keyid, or that
  names fewer distinct functionaries than its threshold while naming an alias, is refused
  (INVALID_ARGUMENT, naming the step, the key and its versions).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from custody_server.errors import RequestError
from custody_server.lifecycle.model import KeyVersion, ServiceKey
from custody_server.lifecycle.rotation import format_time
from custody_server.lifecycle.service_key_policy import FUNCTIONARY_PREFIX, functionary_name

ALIAS_PREFIX = FUNCTIONARY_PREFIX


class KeyLookup(Protocol):
    def get(self, alias: str) -> ServiceKey: ...

    def find_keyid(self, keyid: str) -> KeyVersion | None: ...


def resolve_functionaries(payload: dict[str, Any], *, keys: KeyLookup,
                          now: datetime) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The payload with "alias:NAME" entries replaced by keyids (and their keys added to
    the layout's `keys`), and the warnings to return with the signed layout."""
    layout_keys = payload.get("keys")
    steps = payload.get("steps")
    if not isinstance(layout_keys, dict) or not isinstance(steps, list):
        return payload, ()  # the layout model names the problem precisely
    warnings: list[str] = []
    for step in steps:
        pubkeys = step.get("pubkeys") if isinstance(step, dict) else None
        if not isinstance(pubkeys, list):
            continue
        name = str(step.get("name", ""))[:100]
        threshold = step.get("threshold", 1)
        threshold = threshold if isinstance(threshold, int) and threshold > 1 else 1
        resolved: list[Any] = []
        named_alias = False
        for entry in pubkeys:
            if isinstance(entry, str) and entry.startswith(ALIAS_PREFIX):
                named_alias = True
                chosen = _versions_for(keys.get(entry[len(ALIAS_PREFIX):]), step=name,
                                       threshold=threshold, now=now, warnings=warnings)
                for version in chosen:
                    layout_keys[version.keyid] = version.public_key.to_dict()
                    resolved.append(version.keyid)
            else:
                resolved.append(entry)
        step["pubkeys"] = list(dict.fromkeys(resolved))
        if threshold > 1:
            _check_distinct(step["pubkeys"], keys=keys, step=name, threshold=threshold,
                            named_alias=named_alias)
        _warn_unusable_keyids(step["pubkeys"], keys=keys, step=name, now=now,
                              warnings=warnings)
    return payload, tuple(dict.fromkeys(warnings))


def _versions_for(key: ServiceKey, *, step: str, threshold: int, now: datetime,
                  warnings: list[str]) -> tuple[KeyVersion, ...]:
    verifying = key.verifying_at(now)
    older = [v for v in verifying if v is not key.active]
    if threshold > 1:
        if older:
            warnings.append(
                f"step '{step}' (threshold {threshold}): alias:{key.alias} resolved to its "
                f"active version v{key.active.version} only; {_names(older)} still verify "
                f"but are left out so that the reference in-toto-verify, which counts keyids, "
                "cannot count two versions of one key as two functionaries: links they "
                "signed do not count for this step"
            )
        return (key.active,)
    for version in older:
        until = format_time(version.lifecycle.verify_until or now)
        warnings.append(
            f"step '{step}': alias:{key.alias} includes {version.name} (keyid "
            f"{version.keyid[:8]}), which verifies only until {until}; Custody's Verify "
            f"enforces that window, the reference in-toto-verify does not: re-sign this "
            f"layout after {until} to drop it"
        )
    return verifying


def _check_distinct(pubkeys: Sequence[Any], *, keys: KeyLookup, step: str, threshold: int,
                    named_alias: bool) -> None:
    by_functionary: dict[str, list[str]] = {}
    for keyid in pubkeys:
        if not isinstance(keyid, str):
            continue  # the layout model rejects it
        version = keys.find_keyid(keyid)
        functionary = functionary_name(version.alias) if version is not None else keyid
        by_functionary.setdefault(functionary, []).append(
            version.name if version is not None else keyid[:8])
    for functionary, names in by_functionary.items():
        if len(names) > 1:
            raise RequestError(
                f"step '{step}' has threshold {threshold} and lists {len(names)} versions of "
                f"one key ({', '.join(names)}): the reference in-toto-verify counts keyids, "
                f"so one functionary could meet the threshold alone; list one version, or "
                f"name the key as {functionary}, which resolves to its active version"
            )
    if named_alias and len(by_functionary) < threshold:
        raise RequestError(
            f"step '{step}' has threshold {threshold} but its pubkeys name only "
            f"{len(by_functionary)} distinct functionar"
            f"{'y' if len(by_functionary) == 1 else 'ies'}; two versions of one key are one "
            "functionary"
        )


def _warn_unusable_keyids(pubkeys: Sequence[Any], *, keys: KeyLookup, step: str,
                          now: datetime, warnings: list[str]) -> None:
    for keyid in pubkeys:
        version = keys.find_keyid(keyid) if isinstance(keyid, str) else None
        if version is not None and (refusal := version.refusal(now)) is not None:
            warnings.append(
                f"step '{step}' lists keyid {keyid[:8]}: {refusal}; Custody's Verify will "
                "not count links it signed"
            )


def _names(versions: Sequence[KeyVersion]) -> str:
    return ", ".join(
        f"{v.name} (until {format_time(v.lifecycle.verify_until)})"
        if v.lifecycle.verify_until is not None else v.name
        for v in versions
    )
