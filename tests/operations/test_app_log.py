"""The application log's JSON lines are ECS-shaped: nothing in them collides with an ECS
object (a string `event` did), so one index can hold them beside the audit entries."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from ecs_support import problems

from .ops_support import PYTHONPATH, ROOT

SCRIPT = """
import structlog
from custody_server.logging_setup import configure_logging

configure_logging(level="info")
structlog.contextvars.bind_contextvars(request_id="ab" * 16, rpc="/custody.v1.Custody/Verify")
log = structlog.get_logger("custody.server")
log.info("server.start", listen="127.0.0.1:1", error="a string", file="x", code=3)
try:
    raise ValueError("boom")
except ValueError:
    log.exception("server.failed")
log.debug("not shown")
"""


def log_lines() -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env={"PYTHONPATH": PYTHONPATH}, cwd=ROOT, timeout=60, check=True)
    assert result.stdout == ""
    return [json.loads(line) for line in result.stderr.splitlines()]


def test_json_lines_are_ecs_documents() -> None:
    start, failed = log_lines()
    assert start["message"] == "server.start"
    assert start["log"] == {"level": "info", "logger": "custody.server"}
    assert start["event"] == {"dataset": "custody.log"}
    assert start["custody"] == {"listen": "127.0.0.1:1", "error": "a string", "file": "x",
                                "code": 3, "request_id": "ab" * 16,
                                "rpc": "/custody.v1.Custody/Verify"}
    assert failed["log"]["level"] == "error"
    assert "ValueError: boom" in failed["error"]["stack_trace"]
    for line in (start, failed):
        # valid ECS wherever ECS names a field: only the audit entry's own fields are absent
        audit_only = {"event.kind", "event.action", "event.category", "event.type",
                      "event.outcome", "event.id", "host.name"}
        assert [p for p in problems(line) if p.split(":")[0] not in audit_only] == []
