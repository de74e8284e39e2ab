"""The pure rotation policy: states over time, rotate/retire/destroy, due work, reasons, and
pre-rotation (the next version made ahead, promoted by a rotation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custody_server.lifecycle import rotation
from custody_server.lifecycle.durations import format_duration, parse_duration
from custody_server.lifecycle.rotation import AliasLifecycle, KeyState, VersionLifecycle

T0 = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def fresh() -> AliasLifecycle:
    """As CreateKey leaves an alias: v1 active, v2 its next version."""
    return rotation.with_next(AliasLifecycle((
        VersionLifecycle(version=1, created=T0, activated=T0),)), now=T0)


def legacy() -> AliasLifecycle:
    """An alias made before pre-rotation: no next version."""
    return AliasLifecycle((VersionLifecycle(version=1, created=T0),))


def test_a_new_alias_has_a_next_version_that_signs_and_verifies_nothing() -> None:
    active, following = fresh().versions
    assert active.is_active and following.is_next and following.version == 2
    assert following.state_at(T0 + 1000 * HOUR) is KeyState.NEXT
    assert not following.verifies_at(T0)
    assert rotation.refusal_reason("build", following, T0) == (
        "build v2 is the next version: it signs nothing until a rotation makes it active")


def test_rotation_promotes_the_next_version_and_makes_a_new_one() -> None:
    rotated = rotation.rotate(fresh(), now=T0 + HOUR, overlap=72 * HOUR)
    _, new, following = rotated.versions
    assert new.version == 2 and new.is_active and new.created == T0  # made ahead, at T0
    assert new.activated == T0 + HOUR and new.became_active == T0 + HOUR
    assert following.version == 3 and following.is_next and following.created == T0 + HOUR
    assert rotated.active == new and rotated.next == following


def test_rotating_an_alias_without_a_next_version_makes_both() -> None:
    rotated = rotation.rotate(legacy(), now=T0 + HOUR, overlap=HOUR)
    assert [(v.version, v.state_at(T0 + HOUR)) for v in rotated.versions] == [
        (1, KeyState.VERIFY_ONLY), (2, KeyState.ACTIVE), (3, KeyState.NEXT)]
    assert rotation.with_next(legacy(), now=T0).next == VersionLifecycle(
        version=2, created=T0, pending=True)


def test_retiring_the_next_version_replaces_it() -> None:
    retired = rotation.retire(fresh(), alias="build", version=2, now=T0 + HOUR)
    _, old_next, new_next = retired.versions
    assert old_next.state_at(T0 + HOUR) is KeyState.RETIRED and old_next.pending
    assert new_next.version == 3 and new_next.is_next
    assert rotation.refusal_reason("build", old_next, T0 + 2 * HOUR) == (
        "build v2 is retired: RetireKey replaced it as the next version at "
        "2030-01-01T01:00:00Z, before it ever signed")
    # A rotation then promotes the replacement; the retired one never signs.
    rotated = rotation.rotate(retired, now=T0 + 2 * HOUR, overlap=HOUR)
    assert rotated.active.version == 3 and rotated.next is not None
    assert rotated.next.version == 4
    assert rotation.retire(retired, alias="build", version=2, now=T0 + 5 * HOUR) == retired
    # Its key pair is destroyed after the retention, like any retired version's.
    assert rotation.destruction_due(retired, retention=HOUR, now=T0 + 2 * HOUR) == (2,)


def test_rotation_opens_a_window_for_the_old_version() -> None:
    rotated = rotation.rotate(fresh(), now=T0 + HOUR, overlap=72 * HOUR)
    old, new, _ = rotated.versions
    assert new.version == 2 and new.is_active
    assert old.verify_until == T0 + 73 * HOUR
    assert old.state_at(T0 + HOUR) is KeyState.VERIFY_ONLY
    assert old.state_at(T0 + 73 * HOUR - timedelta(microseconds=1)) is KeyState.VERIFY_ONLY
    assert old.state_at(T0 + 73 * HOUR) is KeyState.RETIRED  # the end is exclusive
    assert new.state_at(T0 + 1000 * HOUR) is KeyState.ACTIVE


def test_overlap_zero_retires_at_once() -> None:
    old, _, _ = rotation.rotate(fresh(), now=T0, overlap=timedelta(0)).versions
    assert old.state_at(T0) is KeyState.RETIRED


def test_retire_ends_the_window_now_and_says_so() -> None:
    rotated = rotation.rotate(fresh(), now=T0, overlap=72 * HOUR)
    retired = rotation.retire(rotated, alias="build", version=1, now=T0 + HOUR)
    old = retired.versions[0]
    assert old.verify_until == T0 + HOUR and old.retired_at == T0 + HOUR
    assert old.state_at(T0 + HOUR) is KeyState.RETIRED
    reason = rotation.refusal_reason("build", old, T0 + 2 * HOUR)
    assert reason == ("build v1 is retired: its window ended at 2030-01-01T01:00:00Z "
                      "(ended early by RetireKey)")
    # Retiring again, or after the window ended by itself, changes nothing.
    assert rotation.retire(retired, alias="build", version=1, now=T0 + 5 * HOUR) == retired


def test_the_active_version_cannot_be_retired() -> None:
    with pytest.raises(rotation.LifecycleRuleError, match=r"build v1 is the active version"):
        rotation.retire(fresh(), alias="build", version=1, now=T0)
    with pytest.raises(rotation.LifecycleRuleError, match=r"build has no version 7"):
        rotation.retire(fresh(), alias="build", version=7, now=T0)
    with pytest.raises(ValueError, match="the next version cannot be retired or destroyed"):
        VersionLifecycle(version=2, created=T0, pending=True, destroyed_at=T0)


def test_refusal_reason_names_alias_version_and_window_end() -> None:
    old = rotation.rotate(fresh(), now=T0, overlap=HOUR).versions[0]
    assert rotation.refusal_reason("build", old, T0 + HOUR / 2) is None
    assert rotation.refusal_reason("build", old, T0 + HOUR) == (
        "build v1 is retired: its window ended at 2030-01-01T01:00:00Z")
    destroyed = rotation.mark_destroyed(rotation.rotate(fresh(), now=T0, overlap=HOUR),
                                        version=1, now=T0 + 2 * HOUR).versions[0]
    assert rotation.refusal_reason("build", destroyed, T0 + 3 * HOUR) == (
        "build v1 is destroyed: its window ended at 2030-01-01T01:00:00Z")


def test_due_work() -> None:
    lifecycle = fresh()
    assert rotation.rotation_due_at(lifecycle, period=24 * HOUR) == T0 + 24 * HOUR
    assert not rotation.rotation_due(lifecycle, period=24 * HOUR, now=T0 + 23 * HOUR)
    assert rotation.rotation_due(lifecycle, period=24 * HOUR, now=T0 + 24 * HOUR)
    unknown_age = AliasLifecycle((VersionLifecycle(version=1, created=None),))
    assert not rotation.rotation_due(unknown_age, period=HOUR, now=T0)
    # The period runs from the promotion, not from when the next version was made.
    promoted = rotation.rotate(lifecycle, now=T0 + 10 * HOUR, overlap=HOUR)
    assert rotation.rotation_due_at(promoted, period=24 * HOUR) == T0 + 34 * HOUR

    rotated = rotation.rotate(lifecycle, now=T0, overlap=HOUR)
    assert rotation.destruction_due(rotated, retention=HOUR, now=T0 + 2 * HOUR - HOUR / 2) == ()
    assert rotation.destruction_due(rotated, retention=HOUR, now=T0 + 2 * HOUR) == (1,)
    destroyed = rotation.mark_destroyed(rotated, version=1, now=T0 + 2 * HOUR)
    assert rotation.destruction_due(destroyed, retention=HOUR, now=T0 + 9 * HOUR) == ()


@pytest.mark.parametrize("versions", [
    (),
    (VersionLifecycle(version=1, created=T0, verify_until=T0),),  # nobody active
    (VersionLifecycle(version=1, created=T0), VersionLifecycle(version=2, created=T0)),
    (VersionLifecycle(version=2, created=T0, verify_until=T0),
     VersionLifecycle(version=1, created=T0)),  # out of order
    (VersionLifecycle(version=1, created=T0, pending=True),
     VersionLifecycle(version=2, created=T0)),  # the next version older than the active
    (VersionLifecycle(version=1, created=T0),
     VersionLifecycle(version=2, created=T0, pending=True),
     VersionLifecycle(version=3, created=T0, pending=True)),  # two next versions
    (VersionLifecycle(version=1, created=T0, verify_until=T0),
     VersionLifecycle(version=2, created=T0, pending=True)),  # only a next version
])
def test_invariants_are_checked(versions: tuple[VersionLifecycle, ...]) -> None:
    with pytest.raises(ValueError):
        AliasLifecycle(versions)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        VersionLifecycle(version=1, created=datetime(2030, 1, 1))


operations = st.lists(st.tuples(
    st.sampled_from(["rotate", "retire", "destroy", "prepare"]),
    st.integers(min_value=0, max_value=100),  # hours since the previous operation
    st.integers(min_value=0, max_value=100),  # overlap hours, or which version
), max_size=25)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_any_sequence_keeps_exactly_one_signer(ops: list[tuple[str, int, int]]) -> None:
    lifecycle, now = fresh(), T0
    for name, step, value in ops:
        now += step * HOUR
        try:
            if name == "rotate":
                previous_next = lifecycle.next
                lifecycle = rotation.rotate(lifecycle, now=now, overlap=value * HOUR)
                # the version that signs after a rotation is the one layouts listed as next
                assert previous_next is None or lifecycle.active.version == previous_next.version
            elif name == "prepare":
                lifecycle = rotation.with_next(lifecycle, now=now)
            elif name == "retire":
                lifecycle = rotation.retire(lifecycle, alias="a", version=value % 5 + 1, now=now)
            else:
                due = rotation.destruction_due(lifecycle, retention=value * HOUR, now=now)
                for number in due:
                    lifecycle = rotation.mark_destroyed(lifecycle, version=number, now=now)
        except rotation.LifecycleRuleError:
            continue
        states = [v.state_at(now) for v in lifecycle.versions]
        assert states.count(KeyState.ACTIVE) == 1
        assert states.count(KeyState.NEXT) <= 1
        assert [v.version for v in lifecycle.versions if not v.pending][-1] == \
            lifecycle.active.version  # no version that signed is newer than the signer
        # A window never reopens: a retired or destroyed version stays so later on.
        for version in lifecycle.versions:
            if not version.verifies_at(now) and not version.is_next:
                assert not version.verifies_at(now + 1000 * HOUR)


@pytest.mark.parametrize(("text", "seconds"), [
    ("72h", 259200), ("90d", 7776000), ("1d12h", 129600), ("30s", 30), ("1.5s", 1.5),
    ("250ms", 0.25), ("2w", 1209600), ("0s", 0), (5, 5), (0.5, 0.5),
])
def test_durations(text: str | float, seconds: float) -> None:
    value = parse_duration(text, what="x")
    assert value.total_seconds() == seconds
    assert parse_duration(format_duration(value), what="x") == value


@pytest.mark.parametrize("text", ["", "h", "72", "-1h", "3x", "1h 2m", "1e9d", True, -1])
def test_bad_durations_name_the_setting(text: str | float) -> None:
    with pytest.raises(ValueError, match="overlap"):
        parse_duration(text, what="overlap")
