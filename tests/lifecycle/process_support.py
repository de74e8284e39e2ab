"""Custody server processes for the lifecycle tests: each with its own state directory
(the embedded default: a SoftHSM token in state_dir/hsm, unless that is a link to another
one's), plaintext, started on port 0; and polling with a deadline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(ROOT / part) for part in ("core", "client", "server"))
T = TypeVar("T")


@dataclass
class Replica:
    process: subprocess.Popen[str]
    port: int
    state_dir: Path
    output: list[str]
    channel: grpc.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def custody(self) -> Any:
        return pb_grpc.CustodyStub(self.channel)  # type: ignore[no-untyped-call]

    @property
    def key_admin(self) -> Any:
        return pb_grpc.KeyAdminStub(self.channel)  # type: ignore[no-untyped-call]

    def key(self, alias: str) -> Any:
        return self.key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias=alias)).key

    def versions(self, alias: str) -> list[Any]:
        return list(self.key(alias).versions)

    def audit_events(self, action: str) -> list[dict[str, Any]]:
        events = []
        for path in sorted((self.state_dir / "audit").glob("audit*.log*")):
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("event", {}).get("action") == action:
                    events.append(entry)
        return events


def start_server(state_dir: Path, config: Path) -> Replica:
    """A server process on `config`, once it says where it listens."""
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF",)}
    env["PYTHONPATH"] = PYTHONPATH
    process = subprocess.Popen(
        [sys.executable, "-m", "custody_server.main", "--config", str(config),
         "--state-dir", str(state_dir), "--listen", "127.0.0.1:0", "--log-format", "console",
         "--log-level", "warning", "--audit-checkpoint-seconds", "3600",
         "--audit-node", state_dir.name],  # replicas on one token: a trail each
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    assert process.stderr is not None
    output: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        output.append(line)
        if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
            threading.Thread(target=lambda: output.extend(process.stderr or ()),
                             daemon=True).start()  # keep draining, or the pipe fills
            channel = grpc.insecure_channel(f"127.0.0.1:{match[1]}")
            return Replica(process, int(match[1]), state_dir, output, channel)
    process.kill()
    raise AssertionError("server did not start:\n" + "".join(output))


def stop_server(replica: Replica) -> None:
    replica.channel.close()
    replica.process.terminate()
    try:
        replica.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        replica.process.kill()


def within(seconds: float, probe: Callable[[], T | None]) -> tuple[T, float]:
    """Poll `probe` until it returns a value; the value and how long it took."""
    started = time.monotonic()
    while True:
        value = probe()
        elapsed = time.monotonic() - started
        if value is not None:
            return value, elapsed
        assert elapsed < seconds, f"not seen within {seconds} s"
        time.sleep(0.05)
