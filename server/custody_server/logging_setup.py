"""structlog in production shape: JSON lines on stderr, context from contextvars.

The JSON lines are ECS-shaped, so that a shipper that collects a container's two streams
(this log on stderr, the audit trail's copy on stdout) into one index meets no mapping
conflict: the event name is `message` (never a string `event`, which ECS makes an
object), the level and the logger are `log.level` and `log.logger`, the time is
`@timestamp`, and every other field sits under `custody.*` (where `request_id` and `rpc`
are the audit entries' own, to join the two). An exception's trace is
`error.stack_trace`. `--log-format console` keeps structlog's line for people.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from custody_server import __version__

ECS_VERSION = "8.11.0"
DATASET = "custody.log"
SERVICE_NAME = "custody"


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that remembers the name it was asked for (`log.logger`)."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self._file, str(args[0]) if args else "custody")


def ecs_shape(logger: Any, method_name: str,
              event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's event dict as an ECS document (after add_log_level, TimeStamper and
    format_exc_info)."""
    shaped: dict[str, Any] = {
        "@timestamp": event_dict.pop("timestamp", None),
        "message": str(event_dict.pop("event", "")),
        "log": {"level": event_dict.pop("level", method_name),
                "logger": getattr(logger, "name", SERVICE_NAME)},
        "ecs": {"version": ECS_VERSION},
        "service": {"name": SERVICE_NAME, "version": __version__},
        "event": {"dataset": DATASET},
    }
    trace = event_dict.pop("exception", None)
    if trace:
        shaped["error"] = {"stack_trace": str(trace)}
    if event_dict:
        shaped["custody"] = dict(event_dict)
    return shaped


def configure_logging(*, level: str = "info", json_output: bool = True,
                      file: TextIO | None = None) -> None:
    """`file`: where the lines go (default: stderr)."""
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if json_output:
        processors += [ecs_shape, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_NamedPrintLoggerFactory(file or sys.stderr),
        cache_logger_on_first_use=True,
    )
