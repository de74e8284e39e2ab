"""Helpers for the operations tests: a real `custody-server` process, a metrics scrape."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(ROOT / part) for part in ("core", "client", "server"))


class ServerProcess:
    """`python -m custody_server.main ARGS`, its stdout and stderr collected as it runs."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        env["PYTHONPATH"] = PYTHONPATH
        self.process = subprocess.Popen(
            [sys.executable, "-m", "custody_server.main", "--log-level", "warning", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
        )
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._readers = [threading.Thread(target=_drain, args=(stream, into), daemon=True)
                         for stream, into in ((self.process.stdout, self.stdout),
                                              (self.process.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def wait_for(self, pattern: str, seconds: float = 60.0) -> str:
        """The first group of `pattern` in stderr once it appears."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if match := re.search(pattern.encode(), bytes(self.stderr)):
                return match.group(1).decode()
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"not in the server's output: {pattern}\n"
                             + bytes(self.stderr).decode(errors="replace")[-3000:])

    def terminate(self, seconds: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(seconds)

    def wait(self, seconds: float = 30.0) -> int:
        try:
            code = self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the server did not stop") from None
        for reader in self._readers:
            reader.join(timeout=10)
        return code


def _drain(stream: IO[bytes] | None, into: bytearray) -> None:
    assert stream is not None
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        into.extend(chunk)


def scrape(port: int) -> dict[str, float]:
    """GET /metrics on 127.0.0.1:port: {series (name and labels as written): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def stop_group(process: subprocess.Popen[bytes], how: signal.Signals, *,
               log: str | None = None) -> int:
    """Signal a server process (SIGKILL: its whole process group, workers included) and
    wait for its exit status; a process that does not stop is killed and fails the test."""
    if how == signal.SIGKILL:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.send_signal(how)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("did not stop:\n" + (log or "")) from None
