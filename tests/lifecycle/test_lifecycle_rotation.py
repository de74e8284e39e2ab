"""The pure rotation policy: states over time, rotate/retire/destroy, due work, reasons."""

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
    return AliasLifecycle((VersionLifecycle(version=1, created=T0),))


def test_rotation_opens_a_window_for_the_old_version() -> None:
    rotated = rotation.rotate(fresh(), now=T0 + HOUR, overlap=72 * HOUR)
    old, new = rotated.versions
    assert new.version == 2 and new.is_active and new.created == T0 + HOUR
    assert old.verify_until == T0 + 73 * HOUR
    assert old.state_at(T0 + HOUR) is KeyState.VERIFY_ONLY
    assert old.state_at(T0 + 73 * HOUR - timedelta(microseconds=1)) is KeyState.VERIFY_ONLY
    assert old.state_at(T0 + 73 * HOUR) is KeyState.RETIRED  # the end is exclusive
    assert new.state_at(T0 + 1000 * HOUR) is KeyState.ACTIVE


def test_overlap_zero_retires_at_once() -> None:
    old, _ = rotation.rotate(fresh(), now=T0, overlap=timedelta(0)).versions
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
])
def test_invariants_are_checked(versions: tuple[VersionLifecycle, ...]) -> None:
    with pytest.raises(ValueError):
        AliasLifecycle(versions)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        VersionLifecycle(version=1, created=datetime(2030, 1, 1))


operations = st.lists(st.tuples(
    st.sampled_from(["rotate", "retire", "destroy"]),
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
                lifecycle = rotation.rotate(lifecycle, now=now, overlap=value * HOUR)
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
        assert states[-1] is KeyState.ACTIVE
        # A window never reopens: a retired or destroyed version stays so later on.
        for version in lifecycle.versions[:-1]:
            if not version.verifies_at(now):
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
