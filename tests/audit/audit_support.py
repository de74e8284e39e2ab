"""Helpers for the audit tests: plaintext configs, a real `custody-server` process, load."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server.config import ServerConfig, TlsConfig

ROOT = Path(__file__).resolve().parents[2]
_PLAINTEXT = "insecure" in TlsConfig.__dataclass_fields__


def plaintext_config(state_dir: Path) -> ServerConfig:
    """Port 0, no TLS: these tests are about the audit trail, not the transport."""
    tls = TlsConfig(insecure=True) if _PLAINTEXT else TlsConfig()
    return ServerConfig(listen="127.0.0.1:0", state_dir=state_dir, tls=tls)


def link_request(index: int) -> pb.SignLinkRequest:
    return pb.SignLinkRequest(
        step_name=f"step-{index}", key_alias="build",
        products=[pb.Artifact(path=f"out/{index}", digest={"sha256": "ab" * 32})],
        envelope=(pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE)[index % 2],
    )


def signed_digests(log: bytes) -> collections.Counter[str]:
    """How often each signed digest appears among the successful signing entries."""
    digests: collections.Counter[str] = collections.Counter()
    for line in log.splitlines():
        entry = json.loads(line)
        if entry["event"]["action"] == "sign-link" and entry["event"]["outcome"] == "success":
            digests[entry["custody"]["signed_sha256"]] += 1
    return digests


def custody_stub(channel: grpc.Channel) -> Any:
    return custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]


def health_status(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def wait_for_health(channel: grpc.Channel, status: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while health_status(channel) != status:
        assert time.monotonic() < deadline, f"health did not become {status}"
        time.sleep(0.01)


class SigningLoad:
    """Clients that sign until stopped, keeping every returned response and error code."""

    def __init__(self, address: str, *, clients: int = 8) -> None:
        self.address = address
        self.returned: list[pb.SignLinkResponse] = []
        self.codes: collections.Counter[str] = collections.Counter()
        self.details: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                         for n in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, worker: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = custody_stub(channel)
            index = worker * 10_000_000 + int(time.monotonic() * 1000) % 1_000_000 * 10
            while not self._stop.is_set():
                index += 1
                try:
                    response = stub.SignLink(link_request(index), timeout=30)
                except grpc.RpcError as error:
                    with self._lock:
                        self.codes[error.code().name] += 1
                        self.details.add(error.details() or "")
                    if error.code() is not grpc.StatusCode.UNAVAILABLE:
                        continue
                    time.sleep(0.005)  # the server may be gone: do not spin
                    continue
                with self._lock:
                    self.codes["OK"] += 1
                    self.returned.append(response)

    def ok(self) -> int:
        with self._lock:
            return self.codes["OK"]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def server_command(state: Path, args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a plaintext `custody-server` on `state`."""
    config_args: tuple[str, ...] = ()
    if _PLAINTEXT:
        config = state.parent / f"{state.name}.toml"
        config.write_text(f'state_dir = "{state}"\n[tls]\ninsecure = true\n')
        config_args = ("--config", str(config))
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env["PYTHONFAULTHANDLER"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("core", "client", "server"))
    command = [sys.executable, "-m", "custody_server.main", *config_args, "--state-dir",
               str(state), "--listen", "127.0.0.1:0", "--log-level", "debug", "--audit-stdout",
               "--metrics-listen", "127.0.0.1:0", *args]
    return command, env


def run_server_to_end(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A server start that is expected to end by itself (a refusal, or an operator
    command such as --new-audit-segment)."""
    command, env = server_command(state, args)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                          check=False)


class ServerProcess:
    """`custody-server` in its own process; its stdout and stderr are collected (pipes:
    a file-size limit on the process must not hit its logs)."""

    def __init__(self, state: Path, *, args: tuple[str, ...] = ()) -> None:
        command, env = server_command(state, args)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env)
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._readers = [
            threading.Thread(target=_drain, args=(self.process.stdout, self.stdout), daemon=True),
            threading.Thread(target=_drain, args=(self.process.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.address = self._wait_for(rb"listening on (\S+)")
        self.metrics_port = int(self._wait_for(rb"metrics on port (\d+)"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_for(self, pattern: bytes, seconds: float = 60.0) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if match := re.search(pattern, bytes(self.stderr)):
                return match.group(1).decode()
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"server did not start: {bytes(self.stderr).decode()[-2000:]}")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no shutdown, no closing checkpoint
        self.wait()

    def wait(self, seconds: float = 30.0) -> int:
        try:
            code = self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)  # faulthandler prints every thread
            self.process.wait(timeout=30)
            for reader in self._readers:
                reader.join(timeout=10)
            raise AssertionError("server did not stop:\n"
                                 + bytes(self.stderr).decode()[-8000:]) from None
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def output(self) -> bytes:
        return bytes(self.stdout) + bytes(self.stderr)


def _drain(stream: Any, into: bytearray) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        into.extend(chunk)


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `custody audit verify` in its own process, agent side only on the path."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("core", "client"))}
    return subprocess.run([sys.executable, "-m", "custody_client", "audit", "verify", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def audit_key_file(state: Path, process: ServerProcess) -> Path:
    """The audit public key as `custody keys get audit` would give it."""
    with grpc.insecure_channel(process.address) as channel:
        admin = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
        key = admin.GetPublicKey(pb.GetPublicKeyRequest(alias="audit"), timeout=10).key
    path = state.parent / f"{state.name}-audit.pub"
    path.write_text(key.public_key_json)
    return path


def audit_files(state: Path) -> list[Path]:
    """The trail's files in chain order (rotated ones, then audit.log)."""
    return sorted((state / "audit").glob("audit*.log"))


def audit_log(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in audit_files(state))


def verify_state(state: Path, key: Path) -> str:
    result = run_verify(*map(str, audit_files(state)), "--key", str(key))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
