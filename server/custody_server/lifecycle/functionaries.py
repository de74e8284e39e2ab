"""SignLayout's resolution of "alias:NAME" in a step's pubkeys, window- and threshold-aware,
and its reversal for `--refresh`.

Pre-rotation: an alias resolves to its active version **and its next version**, so that a
layout survives one rotation of it (see docs/KEYS.md).

- A step with threshold 1 gets the active and next versions and every version that still
  verifies (inside its overlap window), so links signed just before a rotation keep
  verifying. A warning says until when each old version verifies.
- A step with threshold 2 or more gets the active and next versions of each alias
  (`threshold_next`, the default), with a warning: the reference in-toto-verify counts
  keyids, so there one functionary's links by two of its versions count twice (Custody's
  Verify counts them once). With `threshold_next` off it gets only the active version, and
  a warning says which versions were left out.
- A step with threshold 2 or more that lists two versions of one key by keyid, or that
  names fewer distinct functionaries than its threshold while naming an alias, is refused
  (INVALID_ARGUMENT, naming the step, the key and its versions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Resolution:
    payload: dict[str, Any]
    warnings: tuple[str, ...]
    # alias -> True when every step that names it lists its next version: how many
    # rotations of it the layout survives (see layout_lifetime)
    aliases: Mapping[str, bool]


def resolve_functionaries(payload: dict[str, Any], *, keys: KeyLookup, now: datetime,
                          threshold_next: bool = True) -> Resolution:
    """The payload with "alias:NAME" entries replaced by keyids (and their keys added to
    the layout's `keys`), the warnings to return with the signed layout, and the aliases
    it named."""
    layout_keys = payload.get("keys")
    steps = payload.get("steps")
    if not isinstance(layout_keys, dict) or not isinstance(steps, list):
        return Resolution(payload, (), {})  # the layout model names the problem precisely
    warnings: list[str] = []
    aliases: dict[str, bool] = {}
    for step in steps:
        pubkeys = step.get("pubkeys") if isinstance(step, dict) else None
        if not isinstance(pubkeys, list):
            continue
        name = str(step.get("name", ""))[:100]
        threshold = step.get("threshold", 1)
        threshold = threshold if isinstance(threshold, int) and threshold > 1 else 1
        resolved: list[tuple[Any, str | None]] = []  # (pubkey entry, the alias it came from)
        for entry in pubkeys:
            if isinstance(entry, str) and entry.startswith(ALIAS_PREFIX):
                key = keys.get(entry[len(ALIAS_PREFIX):])
                chosen = _versions_for(key, step=name, threshold=threshold, now=now,
                                       threshold_next=threshold_next, warnings=warnings)
                lists_next = key.next is not None and key.next in chosen
                aliases[key.alias] = aliases.get(key.alias, True) and lists_next
                for version in chosen:
                    layout_keys[version.keyid] = version.public_key.to_dict()
                    resolved.append((version.keyid, key.alias))
            else:
                resolved.append((entry, None))
        step["pubkeys"] = _unique([entry for entry, _ in resolved])
        if threshold > 1:
            _check_distinct(resolved, keys=keys, step=name, threshold=threshold)
        _warn_unusable_keyids(step["pubkeys"], keys=keys, step=name, now=now,
                              warnings=warnings)
    return Resolution(payload, tuple(dict.fromkeys(warnings)), aliases)


def unresolve_functionaries(payload: dict[str, Any], *,
                            keys: KeyLookup) -> tuple[dict[str, Any], frozenset[str]]:
    """The reverse, for `--refresh`: in each step, the keyids that are versions of a
    Custody alias (matched against the token's records, destroyed versions included) are
    replaced by "alias:NAME", at the place of the first of them. Returns the payload and
    the keyids replaced (to drop from `keys` if no step lists them after resolving)."""
    steps = payload.get("steps")
    replaced: set[str] = set()
    if not isinstance(steps, list):
        return payload, frozenset()
    for step in steps:
        pubkeys = step.get("pubkeys") if isinstance(step, dict) else None
        if not isinstance(pubkeys, list):
            continue
        entries: list[Any] = []
        for entry in pubkeys:
            version = keys.find_keyid(entry) if isinstance(entry, str) else None
            if version is None:
                entries.append(entry)
                continue
            replaced.add(entry)
            entries.append(f"{ALIAS_PREFIX}{version.alias}")
        step["pubkeys"] = _unique(entries)
    return payload, frozenset(replaced)


def drop_unlisted_keys(payload: dict[str, Any], candidates: frozenset[str]) -> None:
    """Remove from the layout's `keys` the candidates that no step lists any more."""
    layout_keys, steps = payload.get("keys"), payload.get("steps")
    if not isinstance(layout_keys, dict) or not isinstance(steps, list):
        return
    listed = {keyid for step in steps if isinstance(step, dict)
              for keyid in (step.get("pubkeys") or []) if isinstance(keyid, str)}
    for keyid in candidates - listed:
        layout_keys.pop(keyid, None)


def _versions_for(key: ServiceKey, *, step: str, threshold: int, now: datetime,
                  threshold_next: bool, warnings: list[str]) -> tuple[KeyVersion, ...]:
    verifying = key.verifying_at(now)
    older = [v for v in verifying if v is not key.active]
    upcoming = (key.next,) if key.next is not None else ()
    if threshold > 1:
        if older:
            warnings.append(
                f"step '{step}' (threshold {threshold}): alias:{key.alias} resolved to "
                f"{_listed(key, with_next=threshold_next)} only; {_names(older)} still "
                "verify but are left out, so that the reference in-toto-verify, which "
                "counts keyids, sees fewer versions of one key: links they signed do not "
                "count for this step"
            )
        if not threshold_next:
            if upcoming:
                warnings.append(
                    f"step '{step}' (threshold {threshold}): alias:{key.alias} does not "
                    f"list its next version {upcoming[0].name} (lifecycle.threshold_next "
                    f"= false): this step fails for links signed after the next rotation "
                    f"of {key.alias} until the layout is re-signed"
                )
            return (key.active,)
        if upcoming:
            warnings.append(
                f"step '{step}' (threshold {threshold}): alias:{key.alias} lists "
                f"{key.active.name} and its next version {upcoming[0].name}, so that the "
                f"layout survives a rotation; Custody's Verify counts them as one "
                "functionary, the reference in-toto-verify counts keyids and would count "
                "links by both as two: gate this step with Custody's Verify (or set "
                "lifecycle.threshold_next = false)"
            )
        return (key.active, *upcoming)
    for version in older:
        until = format_time(version.lifecycle.verify_until or now)
        warnings.append(
            f"step '{step}': alias:{key.alias} includes {version.name} (keyid "
            f"{version.keyid[:8]}), which verifies only until {until}; Custody's Verify "
            f"enforces that window, the reference in-toto-verify does not: re-sign this "
            f"layout after {until} to drop it"
        )
    return (*verifying, *upcoming)


def _check_distinct(resolved: Sequence[tuple[Any, str | None]], *, keys: KeyLookup,
                    step: str, threshold: int) -> None:
    """Versions that one alias resolved to are one functionary; versions of one key listed
    by keyid (alone, or beside the alias) are refused: the reference counts keyids."""
    by_functionary: dict[str, list[tuple[str, bool]]] = {}
    for keyid, alias in _unique([item for item in resolved if isinstance(item[0], str)]):
        version = keys.find_keyid(keyid)
        functionary = functionary_name(version.alias) if version is not None else keyid
        by_functionary.setdefault(functionary, []).append(
            (version.name if version is not None else keyid[:8], alias is not None))
    for functionary, names in by_functionary.items():
        if len(names) > 1 and not all(from_alias for _, from_alias in names):
            raise RequestError(
                f"step '{step}' has threshold {threshold} and lists {len(names)} versions of "
                f"one key ({', '.join(name for name, _ in names)}): the reference "
                f"in-toto-verify counts keyids, so one functionary could meet the threshold "
                f"alone; list one version, or name the key as {functionary}, which "
                "resolves to its active and next versions"
            )
    named_alias = any(alias is not None for _, alias in resolved)
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
        if version is None or version.lifecycle.is_next:
            continue  # a next version is listed on purpose: it signs after the rotation
        if (refusal := version.refusal(now)) is not None:
            warnings.append(
                f"step '{step}' lists keyid {keyid[:8]}: {refusal}; Custody's Verify will "
                "not count links it signed"
            )


def _unique(entries: Sequence[Any]) -> list[Any]:
    """The entries without repeats, in order; entries that JSON made unhashable (an object
    or a list in pubkeys) are kept for the layout model to refuse."""
    seen: set[Any] = set()
    unique = []
    for entry in entries:
        try:
            if entry in seen:
                continue
            seen.add(entry)
        except TypeError:
            pass
        unique.append(entry)
    return unique


def _listed(key: ServiceKey, *, with_next: bool) -> str:
    if with_next and key.next is not None:
        return f"its active version v{key.active.version} and next version v{key.next.version}"
    return f"its active version v{key.active.version}"


def _names(versions: Sequence[KeyVersion]) -> str:
    return ", ".join(
        f"{v.name} (until {format_time(v.lifecycle.verify_until)})"
        if v.lifecycle.verify_until is not None else v.name
        for v in versions
    )
