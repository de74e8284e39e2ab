"""How long a layout Custody signs keeps verifying, given its aliases' rotation schedules.

With pre-rotation a layout lists each alias's active and next versions, so it survives one
rotation of each (none for a threshold step that lists only the active version):

- a functionary alias rotated every `period`: links signed after its second scheduled
  rotation (after its first, when the layout does not list its next version) are by a
  version the layout does not list;
- the owner alias: Custody's Verify accepts the owner version's signature until its
  window ends, `overlap` after the owner's next scheduled rotation.

Aliases without a schedule give no bound. Pure: the caller gives the time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from custody_server.lifecycle.durations import format_duration
from custody_server.lifecycle.model import ServiceKey
from custody_server.lifecycle.rotation import format_time, rotation_due_at
from custody_server.lifecycle.settings import RotationSchedule

_RESIGN = "re-sign it before then (custody sign-layout --refresh) or let it expire sooner"


def lifetime_warnings(*, expires: datetime,
                      functionaries: Iterable[tuple[ServiceKey, bool]],
                      owners: Iterable[ServiceKey],
                      schedules: Mapping[str, RotationSchedule], now: datetime) -> list[str]:
    """One line for each alias whose schedule ends the layout's use before it expires.

    `functionaries`: each alias the layout names, and whether it lists its next version."""
    warnings = []
    for key, lists_next in functionaries:
        schedule = schedules.get(key.alias)
        first = _next_rotation(key, schedule, now)
        if schedule is None or first is None:
            continue
        breaks = first + schedule.period if lists_next else first
        if expires > breaks:
            which = "second rotation" if lists_next else "next rotation"
            warnings.append(
                f"the layout expires {format_time(expires)}, but {key.alias} rotates every "
                f"{format_duration(schedule.period)} (next {format_time(first)}): links "
                f"signed after its {which}, at {format_time(breaks)}, are by a version this "
                f"layout does not list: {_RESIGN}"
            )
    for key in owners:
        schedule = schedules.get(key.alias)
        first = _next_rotation(key, schedule, now)
        if schedule is None or first is None:
            continue
        breaks = first + schedule.overlap
        if expires > breaks:
            warnings.append(
                f"the layout expires {format_time(expires)}, but its owner key {key.alias} "
                f"rotates every {format_duration(schedule.period)} (next "
                f"{format_time(first)}), and Custody's Verify accepts {key.active.name}'s "
                f"signature for its overlap of {format_duration(schedule.overlap)} after "
                f"that, until {format_time(breaks)}: {_RESIGN}"
            )
    return warnings


def _next_rotation(key: ServiceKey, schedule: RotationSchedule | None,
                   now: datetime) -> datetime | None:
    if schedule is None:
        return None
    due = rotation_due_at(key.lifecycle, period=schedule.period)
    return None if due is None else max(due, now)  # overdue: at the scheduler's next run
