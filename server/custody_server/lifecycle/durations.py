"""Durations as operators write them: "72h", "90d", "30m", "5s", "1d12h", or plain seconds."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: str | int | float, *, what: str) -> timedelta:
    """A non-negative duration; ValueError names `what` and the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        position, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match[1]) * _UNIT_SECONDS[match[2]]
            position = match.end()
        if not text or position != len(text):
            raise ValueError(
                f"{what}: {value[:40]!r} is not a duration (e.g. \"72h\", \"90d\", \"1d12h\", "
                "\"30s\")"
            )
    if seconds < 0 or seconds != seconds or seconds > 100 * 365 * 86400:
        raise ValueError(f"{what}: duration must be between 0 and 100 years")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact form: 259200 s -> "3d", 5400 s -> "1h30m", 1.5 s -> "1.5s"."""
    total = value.total_seconds()
    if total == 0:
        return "0s"
    parts: list[str] = []
    whole = int(total)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    rest = whole + (total - int(total))
    if rest:
        parts.append(f"{rest:g}s")
    return "".join(parts)
