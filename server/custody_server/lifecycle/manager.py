"""Lifecycle changes: rotate, retire, destroy, prepare next versions, and the scheduled
work; each one audited.

Every change holds the lifecycle guard, reads the alias fresh from the token, decides
with the pure policy, changes the token, writes the record, and records an audit event
(actions "key-create", "key-rotate", "key-retire", "key-prepare", "key-destroy"). The
audit record is written after the change (the change happened and must be on the record);
if it cannot be written the call fails with UNAVAILABLE and says so.

Pre-rotation: every alias keeps a next version in the token. A rotation promotes it and
makes a new one; retiring it makes its replacement; an alias made before pre-rotation gets
one at the server's start (`prepare_all`) or when SignLayout names it (`ensure_next`).

A change is crash-safe: a new version's label is deterministic (`custody:<alias>:v<N>`).
If a previous attempt generated that key but died before writing the record, the next
attempt adopts the key instead of failing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from custody_core.errors import CustodyError
from custody_server.audit_events import AuditEvent, AuditSink, record_or_refuse
from custody_server.keystore import KeyAlgorithm, KeyNotFoundError
from custody_server.lifecycle import rotation
from custody_server.lifecycle.durations import format_duration
from custody_server.lifecycle.keyring import (
    KeyRing,
    KeyVersion,
    ServiceKey,
    TokenKeys,
    validate_alias,
)
from custody_server.lifecycle.settings import LifecycleSettings, RotationSchedule

log = structlog.get_logger("custody.lifecycle")

@dataclass(frozen=True)
class Rotation:
    key: ServiceKey
    previous: KeyVersion
    new: KeyVersion
    warnings: tuple[str, ...] = ()

    @property
    def next(self) -> KeyVersion:
        made = self.key.next
        assert made is not None  # a rotation always leaves a next version
        return made


@dataclass(frozen=True)
class Retirement:
    key: ServiceKey
    retired: KeyVersion
    changed: bool
    replacement: KeyVersion | None = None  # the new next version, when the next was retired
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class DueWork:
    """What one scheduler run did."""

    rotated: tuple[str, ...] = ()  # "alias v2 -> v3"
    destroyed: tuple[str, ...] = ()  # "alias v1"
    adopted: tuple[str, ...] = ()  # aliases given a lifecycle record (or a start time)


class KeyLifecycle:
    def __init__(self, *, keys: KeyRing, audit: AuditSink, clock: Callable[[], datetime],
                 settings: LifecycleSettings | None = None) -> None:
        self._keys = keys
        self._audit = audit
        self._clock = clock
        self.settings = settings or LifecycleSettings()

    @property
    def keys(self) -> KeyRing:
        return self._keys

    def now(self) -> datetime:
        return self._clock()

    def schedule_of(self, alias: str) -> RotationSchedule | None:
        return self.settings.schedules.get(alias)

    # Admin operations

    def create(self, alias: str, algorithm: KeyAlgorithm, *, caller: str) -> ServiceKey:
        details = {"key_alias": alias, "caller": caller, "algorithm": algorithm.value}
        try:
            key = self._keys.create(alias, algorithm)
        except CustodyError as error:
            self._record_failure("key-create", error, details)
            raise
        self._record("key-create", {**details, "key_version": 1,
                                    "keyid": key.active.keyid, **_next_details(key)})
        return key

    def rotate(self, alias: str, *, overlap: timedelta | None, caller: str,
               algorithm: KeyAlgorithm | None = None) -> Rotation:
        validate_alias(alias)
        overlap = self._overlap_for(alias) if overlap is None else overlap
        details: dict[str, Any] = {"key_alias": alias, "caller": caller,
                                   "overlap": format_duration(overlap), "trigger": "request"}
        try:
            with self._keys.guard.hold():
                result = self._rotate_locked(self._require(alias), overlap, algorithm)
        except CustodyError as error:
            self._record_failure("key-rotate", error, details)
            raise
        self._record_rotation(result, details)
        return result

    def retire(self, alias: str, *, version: int, caller: str) -> Retirement:
        """End a verify-only version's window now; a next version is retired and replaced
        by a new one."""
        validate_alias(alias)
        details: dict[str, Any] = {"key_alias": alias, "key_version": version,
                                   "caller": caller}
        try:
            with self._keys.guard.hold():
                current = self._require(alias)
                key = self._key_of(current)
                before = key.version(version)
                if before is None:
                    raise KeyNotFoundError(f"{alias} has no version {version}")
                lifecycle = rotation.retire(key.lifecycle, alias=alias, version=version,
                                            now=self.now())
                updated = (self._keys.apply(current, lifecycle, algorithm=before.algorithm)
                           if lifecycle != key.lifecycle else key)
        except CustodyError as error:
            self._record_failure("key-retire", error, details)
            raise
        retired = updated.version(version)
        assert retired is not None
        replacement = updated.next if before.lifecycle.is_next else None
        warnings = []
        if replacement is not None:
            warnings.append(
                f"{retired.name} was the next version: {replacement.name} replaces it. "
                f"Layouts signed before now list {retired.name}: Custody's Verify refuses "
                "links it signs, the reference in-toto-verify does not, and they break at "
                f"the next rotation of {alias}: re-sign them (custody sign-layout --refresh)"
            )
        extra = _next_details(updated) if replacement is not None else {}
        self._record("key-retire", {
            **details, "keyid": retired.keyid, "changed": updated != key, **extra,
            "window_ended": rotation.format_time(retired.lifecycle.verify_until or self.now()),
        })
        return Retirement(key=updated, retired=retired, changed=updated != key,
                          replacement=replacement, warnings=tuple(warnings))

    def ensure_next(self, alias: str, *, trigger: str, caller: str) -> ServiceKey:
        """The alias with its next version, made now (audited "key-prepare") if missing."""
        return self._prepare(alias, trigger=trigger, caller=caller)[0]

    def _prepare(self, alias: str, *, trigger: str,
                 caller: str) -> tuple[ServiceKey, KeyVersion | None]:
        """The alias with its next version, and the version this call made (None: another
        call or replica had made it)."""
        details: dict[str, Any] = {"key_alias": alias, "caller": caller, "trigger": trigger}
        try:
            key, made = self._keys.ensure_next(alias)
        except CustodyError as error:
            self._record_failure("key-prepare", error, details)
            raise
        if made is not None:
            log.info("lifecycle.next_prepared", key_alias=alias, version=made.version,
                     trigger=trigger)
            self._record("key-prepare", {**details, "key_version": made.version,
                                         "keyid": made.keyid})
        return key, made

    def prepare_all(self, *, trigger: str) -> tuple[str, ...]:
        """Give every alias without a next version one ("alias vN" for each made)."""
        prepared = []
        for key in self._keys.all():
            if key.next is not None:
                continue
            try:
                _, made = self._prepare(key.alias, trigger=trigger, caller="lifecycle")
            except Exception as error:  # one alias's failure must not stop the others
                log.error("lifecycle.prepare_failed", key_alias=key.alias,
                          error=str(error)[:300])
                continue
            if made is not None:
                prepared.append(made.name)
        return tuple(prepared)

    # Scheduled work

    def run_due(self) -> DueWork:
        """Rotate every scheduled alias that is due and destroy every version past retention.

        The cached view picks the candidates; each one is then decided under the guard on
        a fresh read, so with several replicas running this at the same moment, each due
        change happens once. (A change the cache does not show yet is found a TTL later.)
        """
        rotated: list[str] = []
        destroyed: list[str] = []
        adopted: list[str] = []
        now = self.now()
        for alias in [k.alias for k in self._keys.all() if self._may_be_due(k, now)]:
            try:
                self._run_due_for(alias, rotated=rotated, destroyed=destroyed, adopted=adopted)
            except Exception as error:  # one alias's failure must not stop the others
                log.error("lifecycle.due_failed", key_alias=alias, error=str(error)[:300])
        return DueWork(tuple(rotated), tuple(destroyed), tuple(adopted))

    def _may_be_due(self, key: ServiceKey, now: datetime) -> bool:
        lifecycle = key.lifecycle
        if rotation.destruction_due(lifecycle, retention=self.settings.destroy_after, now=now):
            return True
        schedule = self.schedule_of(key.alias)
        return schedule is not None and (
            lifecycle.active.became_active is None  # to adopt
            or rotation.rotation_due(lifecycle, period=schedule.period, now=now))

    def _run_due_for(self, alias: str, *, rotated: list[str], destroyed: list[str],
                     adopted: list[str]) -> None:
        schedule = self.schedule_of(alias)
        with self._keys.guard.hold():
            current = self._keys.read_fresh(alias)
            if current.key is None:
                return
            now = self.now()
            if current.key.active.lifecycle.became_active is None and schedule is not None:
                # Made before lifecycle tracking: its age is unknown, so count from now.
                active = current.key.active.lifecycle
                self._keys.write(_with_lifecycle(current.key, current.key.lifecycle.replaced(
                    dataclasses.replace(active, created=now, activated=now))))
                adopted.append(alias)
                return
            key = current.key
            for number in rotation.destruction_due(key.lifecycle,
                                                   retention=self.settings.destroy_after,
                                                   now=now):
                key = self._destroy_locked(key, number, now)
                destroyed.append(f"{alias} v{number}")
            if schedule is None or not rotation.rotation_due(key.lifecycle,
                                                             period=schedule.period, now=now):
                return
            result = self._rotate_locked(self._keys.read_fresh(alias), schedule.overlap, None)
            rotated.append(f"{alias} v{result.previous.version} -> v{result.new.version}")
        self._record_rotation(result, {"key_alias": alias, "caller": "scheduler",
                                         "overlap": format_duration(schedule.overlap),
                                         "trigger": "schedule"})

    # Under the guard

    def _require(self, alias: str) -> TokenKeys:
        current = self._keys.read_fresh(alias)
        if current.key is None:
            raise KeyNotFoundError(f"no key with alias {alias!r}")
        return current

    def _key_of(self, current: TokenKeys) -> ServiceKey:
        assert current.key is not None
        return current.key

    def _rotate_locked(self, current: TokenKeys, overlap: timedelta,
                       algorithm: KeyAlgorithm | None) -> Rotation:
        key = self._key_of(current)
        lifecycle = rotation.rotate(key.lifecycle, now=self.now(), overlap=overlap)
        promoted = key.next
        # The promoted next version keeps its algorithm (layouts list it); `algorithm`
        # is the new next version's (and the new active's, for an alias without a next).
        updated = self._keys.apply(current, lifecycle, algorithm=algorithm or (
            promoted.algorithm if promoted is not None else key.algorithm))
        previous = updated.version(key.active.version)
        assert previous is not None
        new = updated.active
        warnings = []
        if promoted is None:
            warnings.append(
                f"{key.alias} had no next version (made before pre-rotation): {new.name} "
                "is in no layout signed before now, and such layouts fail for links it "
                "signs: re-sign them (custody sign-layout --refresh)"
            )
        elif algorithm is not None and algorithm is not promoted.algorithm:
            made = updated.next
            assert made is not None
            warnings.append(
                f"{new.name} signs now with {promoted.algorithm.value} (it was the next "
                f"version, which layouts list); {made.name}, made with {algorithm.value}, "
                "signs after the next rotation"
            )
        if overlap.total_seconds() < self._keys.cache_ttl:
            warnings.append(
                f"overlap {format_duration(overlap)} is shorter than the replicas' cache TTL "
                f"({self._keys.cache_ttl:g}s): another replica may still sign with "
                f"{previous.name} for up to {self._keys.cache_ttl:g}s, and such signatures "
                "fail verification"
            )
        return Rotation(key=updated, previous=previous, new=new, warnings=tuple(warnings))

    def _destroy_locked(self, key: ServiceKey, number: int, now: datetime) -> ServiceKey:
        version = key.version(number)
        assert version is not None
        removed = self._keys.destroy(version)
        updated = _with_lifecycle(key, rotation.mark_destroyed(key.lifecycle, version=number,
                                                               now=now))
        self._keys.write(updated)
        self._record("key-destroy", {
            "key_alias": key.alias, "key_version": number, "keyid": version.keyid,
            "caller": "scheduler", "key_was_present": removed,
            "window_ended": rotation.format_time(version.lifecycle.verify_until or now),
            "retention": format_duration(self.settings.destroy_after),
        })
        return updated

    def _overlap_for(self, alias: str) -> timedelta:
        schedule = self.schedule_of(alias)
        return schedule.overlap if schedule is not None else self.settings.default_overlap

    # Audit

    def _record_rotation(self, result: Rotation, details: Mapping[str, Any]) -> None:
        self._record("key-rotate", {
            **details,
            "key_version": result.new.version,
            "keyid": result.new.keyid,
            "previous_version": result.previous.version,
            "previous_keyid": result.previous.keyid,
            "previous_verify_until": rotation.format_time(
                result.previous.lifecycle.verify_until or self.now()),
            **_next_details(result.key),
        })

    def _record(self, action: str, details: Mapping[str, Any]) -> None:
        event = AuditEvent(action=action, category="configuration", outcome="success",
                           details=details)
        record_or_refuse(self._audit, event,
                         refusal=f"{action} was done but its audit record could not be written")

    def _record_failure(self, action: str, error: CustodyError,
                        details: Mapping[str, Any]) -> None:
        event = AuditEvent.failure(action=action, category="configuration", error=error,
                                   details=details)
        record_or_refuse(self._audit, event, refusal="audit log unavailable")


def _with_lifecycle(key: ServiceKey, lifecycle: rotation.AliasLifecycle) -> ServiceKey:
    return ServiceKey(key.alias, tuple(
        dataclasses.replace(v, lifecycle=lifecycle.versions[i])
        for i, v in enumerate(key.versions)
    ))


def _next_details(key: ServiceKey) -> dict[str, Any]:
    """The audit details that name the alias's next version."""
    made = key.next
    return {} if made is None else {"next_version": made.version, "next_keyid": made.keyid}
