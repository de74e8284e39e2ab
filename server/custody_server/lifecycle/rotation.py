"""The rotation policy: pure rules over the versions of one key alias and a point in time.

A version is, at time t:

- next: generated ahead, so that layouts can list it before it signs (pre-rotation). It
  signs and verifies nothing until a rotation promotes it. At most one, newer than the
  active one.
- active: it signs (and verifies). Exactly one version of an alias is active.
- verify-only: a newer version signs; this one still verifies while t < verify_until (the
  end of its overlap window).
- retired: its window has ended (t >= verify_until), by time or early by RetireKey. It
  verifies nothing.
- destroyed: retired, and its private key has been removed from the token.

No I/O and no clock here: every function takes the time it reasons about.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from custody_server.errors import RequestError


class KeyState(enum.StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    VERIFY_ONLY = "verify-only"
    RETIRED = "retired"
    DESTROYED = "destroyed"


class LifecycleRuleError(RequestError):
    """A lifecycle change that the rules forbid (e.g. retiring the version that signs)."""


def format_time(moment: datetime) -> str:
    """UTC, to the second, with a Z: how reasons and warnings show a time."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _aware(moment: datetime | None, what: str) -> None:
    if moment is not None and moment.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware")


@dataclass(frozen=True)
class VersionLifecycle:
    """Where one key version is in its life. Times are timezone-aware."""

    version: int
    created: datetime | None  # None: the key was made before lifecycle tracking
    verify_until: datetime | None = None  # end of the overlap window; None while active/next
    retired_at: datetime | None = None  # when RetireKey ended the window early
    destroyed_at: datetime | None = None  # when the private key was removed from the token
    activated: datetime | None = None  # when it became active (None: next, or not known)
    pending: bool = False  # made ahead as the next version and never promoted: never signed

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("a key version is at least 1")
        for name in ("created", "verify_until", "retired_at", "destroyed_at", "activated"):
            _aware(getattr(self, name), name)
        if self.verify_until is None and (self.retired_at or self.destroyed_at):
            raise ValueError(f"v{self.version}: the {'next' if self.pending else 'active'} "
                             "version cannot be retired or destroyed")
        if self.retired_at is not None and self.verify_until != self.retired_at:
            raise ValueError(f"v{self.version}: a retired window ends when it was retired")
        if self.pending and self.activated is not None:
            raise ValueError(f"v{self.version}: a next version has not been activated")
        if self.pending and self.verify_until is not None and self.retired_at is None:
            raise ValueError(f"v{self.version}: a next version ends only by RetireKey")

    @property
    def is_active(self) -> bool:
        return self.verify_until is None and not self.pending

    @property
    def is_next(self) -> bool:
        return self.verify_until is None and self.pending

    @property
    def became_active(self) -> datetime | None:
        """When it started to sign: `activated`, or `created` for versions made active
        before pre-rotation (their records have no `activated`)."""
        return self.activated if self.activated is not None else self.created

    def state_at(self, now: datetime) -> KeyState:
        if self.destroyed_at is not None:
            return KeyState.DESTROYED
        if self.verify_until is None:
            return KeyState.NEXT if self.pending else KeyState.ACTIVE
        return KeyState.VERIFY_ONLY if now < self.verify_until else KeyState.RETIRED

    def verifies_at(self, now: datetime) -> bool:
        return self.state_at(now) in (KeyState.ACTIVE, KeyState.VERIFY_ONLY)


@dataclass(frozen=True)
class AliasLifecycle:
    """The versions of one alias, oldest first: exactly one active, at most one next (newer
    than the active one); no version that ever signed is newer than the active one."""

    versions: tuple[VersionLifecycle, ...]

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError("an alias has at least one version")
        numbers = [v.version for v in self.versions]
        if numbers != sorted(set(numbers)):
            raise ValueError(f"versions must be unique and in order, got {numbers}")
        active = [v.version for v in self.versions if v.is_active]
        if len(active) != 1:
            raise ValueError(f"exactly one version must be active, got active {active}")
        signed_later = [v.version for v in self.versions
                        if not v.pending and v.version > active[0]]
        if signed_later:
            raise ValueError(f"exactly the newest version that signed must be active, got "
                             f"active v{active[0]} and v{signed_later[0]}")
        following = [v.version for v in self.versions if v.is_next]
        if len(following) > 1 or (following and following[0] < active[0]):
            raise ValueError(f"at most one next version, newer than the active one, got "
                             f"next {following} with active v{active[0]}")

    @property
    def active(self) -> VersionLifecycle:
        return next(v for v in self.versions if v.is_active)

    @property
    def next(self) -> VersionLifecycle | None:
        return next((v for v in self.versions if v.is_next), None)

    @property
    def new_number(self) -> int:
        """The number of a version made now: one more than any version's."""
        return self.versions[-1].version + 1

    def version(self, number: int) -> VersionLifecycle | None:
        return next((v for v in self.versions if v.version == number), None)

    def replaced(self, updated: VersionLifecycle) -> AliasLifecycle:
        return AliasLifecycle(tuple(
            updated if v.version == updated.version else v for v in self.versions
        ))


def with_next(lifecycle: AliasLifecycle, *, now: datetime) -> AliasLifecycle:
    """The lifecycle with a next version: as it is if it has one, else with a new one."""
    if lifecycle.next is not None:
        return lifecycle
    new = VersionLifecycle(version=lifecycle.new_number, created=now, pending=True)
    return AliasLifecycle((*lifecycle.versions, new))


def rotate(lifecycle: AliasLifecycle, *, now: datetime, overlap: timedelta) -> AliasLifecycle:
    """Promote the next version to active (a new one if there is none: an alias made
    before pre-rotation), open the old active version's window until now + overlap, and
    make a new next version."""
    if overlap < timedelta(0):
        raise LifecycleRuleError("overlap must not be negative")
    old = dataclasses.replace(lifecycle.active, verify_until=now + overlap)
    following = lifecycle.next
    if following is not None:
        promoted = dataclasses.replace(following, pending=False, activated=now)
        versions = tuple(old if v.is_active else promoted if v.is_next else v
                         for v in lifecycle.versions)
    else:
        promoted = VersionLifecycle(version=lifecycle.new_number, created=now, activated=now)
        versions = (*(old if v.is_active else v for v in lifecycle.versions), promoted)
    return with_next(AliasLifecycle(versions), now=now)


def retire(lifecycle: AliasLifecycle, *, alias: str, version: int,
           now: datetime) -> AliasLifecycle:
    """End a verify-only version's window now; retire the next version and make a new one
    (its replacement). Retiring a retired version changes nothing."""
    current = lifecycle.version(version)
    if current is None:
        raise LifecycleRuleError(f"{alias} has no version {version}")
    if current.is_active:
        raise LifecycleRuleError(
            f"{alias} v{version} is the active version and signs: rotate first "
            f"(custody keys rotate {alias} --overlap 0s), then retire it"
        )
    if current.is_next:
        ended = lifecycle.replaced(dataclasses.replace(current, verify_until=now,
                                                       retired_at=now))
        return with_next(ended, now=now)
    assert current.verify_until is not None  # neither active nor next
    if current.verify_until <= now:
        return lifecycle  # its window has ended already; keep when and how it ended
    return lifecycle.replaced(dataclasses.replace(current, verify_until=now, retired_at=now))


def mark_destroyed(lifecycle: AliasLifecycle, *, version: int, now: datetime) -> AliasLifecycle:
    current = lifecycle.version(version)
    if current is None or current.verify_until is None:
        raise LifecycleRuleError(f"v{version} is not a retired version")
    return lifecycle.replaced(dataclasses.replace(current, destroyed_at=now))


def rotation_due_at(lifecycle: AliasLifecycle, *, period: timedelta) -> datetime | None:
    """When the active version is due to be replaced (None: its age is unknown)."""
    since = lifecycle.active.became_active
    return since + period if since is not None else None


def rotation_due(lifecycle: AliasLifecycle, *, period: timedelta, now: datetime) -> bool:
    due = rotation_due_at(lifecycle, period=period)
    return due is not None and due <= now


def destruction_due(lifecycle: AliasLifecycle, *, retention: timedelta,
                    now: datetime) -> tuple[int, ...]:
    """Versions whose window ended at least `retention` ago and whose key is still there."""
    return tuple(
        v.version for v in lifecycle.versions
        if v.destroyed_at is None and v.verify_until is not None
        and v.verify_until + retention <= now
    )


def refusal_reason(alias: str, version: VersionLifecycle, now: datetime) -> str | None:
    """Why a signature by this version must not count at `now`, or None if it counts."""
    state = version.state_at(now)
    if state in (KeyState.ACTIVE, KeyState.VERIFY_ONLY):
        return None
    if state is KeyState.NEXT:
        return (f"{alias} v{version.version} is the next version: it signs nothing until a "
                "rotation makes it active")
    assert version.verify_until is not None  # retired or destroyed
    ended = format_time(version.verify_until)
    if version.pending:
        return (f"{alias} v{version.version} is {state}: RetireKey replaced it as the next "
                f"version at {ended}, before it ever signed")
    how = " (ended early by RetireKey)" if version.retired_at is not None else ""
    return f"{alias} v{version.version} is {state}: its window ended at {ended}{how}"
