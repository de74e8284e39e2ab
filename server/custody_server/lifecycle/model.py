"""Service keys as the server sees them: an alias, its versions, their keys and lifecycles."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from custody_core.api_enums import KeyAlgorithm
from custody_core.keys import PublicKey
from custody_server.lifecycle.rotation import (
    AliasLifecycle,
    KeyState,
    VersionLifecycle,
    refusal_reason,
    rotation_due_at,
)


def key_label(alias: str, version: int) -> str:
    """The token label of a key version: the one place that names it."""
    return f"custody:{alias}:v{version}"


@dataclass(frozen=True)
class KeyVersion:
    alias: str
    version: int
    algorithm: KeyAlgorithm
    public_key: PublicKey
    lifecycle: VersionLifecycle

    def __post_init__(self) -> None:
        if self.lifecycle.version != self.version:
            raise ValueError(f"lifecycle of v{self.lifecycle.version} given for v{self.version}")
        if self.public_key.scheme != self.algorithm.scheme:
            raise ValueError(f"{self.alias} v{self.version}: scheme does not match algorithm")

    @property
    def label(self) -> str:
        return key_label(self.alias, self.version)

    @property
    def keyid(self) -> str:
        return self.public_key.keyid

    @property
    def name(self) -> str:
        """How reasons and warnings name it: "build v2"."""
        return f"{self.alias} v{self.version}"

    def state_at(self, now: datetime) -> KeyState:
        return self.lifecycle.state_at(now)

    def verifies_at(self, now: datetime) -> bool:
        return self.lifecycle.verifies_at(now)

    def refusal(self, now: datetime) -> str | None:
        return refusal_reason(self.alias, self.lifecycle, now)


@dataclass(frozen=True)
class ServiceKey:
    """One alias and its versions, oldest first; exactly one is active, at most one (newer)
    is the next version (see rotation.AliasLifecycle)."""

    alias: str
    versions: tuple[KeyVersion, ...]

    def __post_init__(self) -> None:
        if any(v.alias != self.alias for v in self.versions):
            raise ValueError(f"{self.alias}: a version of another alias")
        AliasLifecycle(tuple(v.lifecycle for v in self.versions))  # validates the invariants

    @property
    def lifecycle(self) -> AliasLifecycle:
        return AliasLifecycle(tuple(v.lifecycle for v in self.versions))

    @property
    def active(self) -> KeyVersion:
        return next(v for v in self.versions if v.lifecycle.is_active)

    @property
    def next(self) -> KeyVersion | None:
        """The version made ahead that the next rotation promotes (None: made before
        pre-rotation and not prepared yet)."""
        return next((v for v in self.versions if v.lifecycle.is_next), None)

    @property
    def algorithm(self) -> KeyAlgorithm:
        return self.active.algorithm

    def version(self, number: int) -> KeyVersion | None:
        return next((v for v in self.versions if v.version == number), None)

    def verifying_at(self, now: datetime) -> tuple[KeyVersion, ...]:
        """The versions whose signatures count at `now`: the active one and those in window."""
        return tuple(v for v in self.versions if v.verifies_at(now))


def overlap_remaining(keys: Iterable[ServiceKey], *,
                      now: datetime) -> dict[tuple[str, int], float]:
    """(alias, version) -> seconds until its overlap window ends, for every version that is
    verify-only at `now` (the active one has no window; a retired one's has ended)."""
    remaining: dict[tuple[str, int], float] = {}
    for key in keys:
        for version in key.versions:
            ends = version.lifecycle.verify_until
            if ends is not None and version.state_at(now) is KeyState.VERIFY_ONLY:
                remaining[(key.alias, version.version)] = (ends - now).total_seconds()
    return remaining


def next_rotation_remaining(keys: Iterable[ServiceKey], *, periods: Mapping[str, timedelta],
                            now: datetime) -> dict[str, float]:
    """alias -> seconds until its next scheduled rotation (negative: overdue), for every
    alias with a rotation period whose active version's age is known."""
    remaining: dict[str, float] = {}
    for key in keys:
        period = periods.get(key.alias)
        due = rotation_due_at(key.lifecycle, period=period) if period is not None else None
        if due is not None:
            remaining[key.alias] = (due - now).total_seconds()
    return remaining
