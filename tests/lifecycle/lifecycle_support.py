"""Helpers for the lifecycle tests: a fake clock, an in-process server on it, layouts."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from policy_support import open_policy
from venv_tools import venv_tool

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc
from custody_server.audit_events import AuditEvent, MemoryAuditSink
from custody_server.config import ServerConfig, TlsConfig
from custody_server.keystore import Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.lifecycle.manager import KeyLifecycle
from custody_server.lifecycle.settings import LifecycleSettings

# Near the real time, so that layouts and reference tools (which use the real clock) agree.
T0 = datetime.now(UTC).replace(microsecond=0)
EXPIRES = "2099-01-01T00:00:00Z"
FOO = {"foo.py": {"sha256": "1" * 64}}
# Plaintext test servers: every caller is "anonymous", which may do everything.
OPEN_POLICY = open_policy("anonymous")


class FakeClock:
    """Wall time and the monotonic time of the cache TTL, moved only by `advance`."""

    def __init__(self, start: datetime = T0) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._monotonic = 1000.0

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            self._monotonic += delta.total_seconds()
            return self._now


def unique_alias(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class ClockedService:
    clock: FakeClock
    keys: KeyRing
    audit: MemoryAuditSink
    lifecycle: KeyLifecycle  # the same settings as the server's: for its due work
    custody: Any
    key_admin: Any
    address: str

    def events(self, action: str, alias: str) -> list[AuditEvent]:
        return [e for e in self.audit.events
                if e.action == action and e.details.get("key_alias") == alias]


@contextmanager
def clocked_service(store: Pkcs11KeyStore, state_dir: Path, *,
                    settings: LifecycleSettings) -> Iterator[ClockedService]:
    """A real server (real SoftHSM token) whose every clock is a FakeClock."""
    from custody_server.app import build_server

    clock = FakeClock()
    keys = KeyRing(store, clock=clock.now, monotonic=clock.monotonic,
                   cache_ttl=settings.cache_ttl_seconds)
    audit = MemoryAuditSink()
    (state_dir / "policy.toml").write_text(OPEN_POLICY)
    config = ServerConfig(listen="127.0.0.1:0", state_dir=state_dir,
                          tls=TlsConfig(insecure=True), lifecycle=settings)
    running = build_server(config=config, keys=keys, audit=audit, clock=clock.now)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield ClockedService(
                clock=clock, keys=keys, audit=audit,
                lifecycle=KeyLifecycle(keys=keys, audit=audit, clock=clock.now,
                                       settings=settings),
                custody=pb_grpc.CustodyStub(channel),  # type: ignore[no-untyped-call]
                key_admin=pb_grpc.KeyAdminStub(channel),  # type: ignore[no-untyped-call]
                address=f"127.0.0.1:{running.port}",
            )
    finally:
        running.stop(grace=1).wait()


def clocked_fixture(name: str, settings: LifecycleSettings) -> object:
    """A module's `clocked` fixture: one clocked service with these settings for the whole
    module, its state in a temp dir named `name` (`clocked = clocked_fixture(...)`)."""

    @pytest.fixture(scope="module")
    def clocked(keystore: Pkcs11KeyStore, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ClockedService]:
        with clocked_service(keystore, tmp_path_factory.mktemp(name),
                             settings=settings) as service:
            yield service

    return clocked


def step(name: str, pubkeys: list[str], *, threshold: int = 1) -> dict[str, Any]:
    return {"_type": "step", "name": name, "threshold": threshold, "pubkeys": pubkeys,
            "expected_command": [], "expected_materials": [["DISALLOW", "*"]],
            "expected_products": [["CREATE", "foo.py"], ["DISALLOW", "*"]]}


def layout(*steps: dict[str, Any]) -> bytes:
    return json.dumps({"_type": "layout", "expires": EXPIRES, "readme": "lifecycle",
                       "keys": {}, "steps": list(steps), "inspect": []}).encode()


def sign_link(custody: Any, *, step_name: str, alias: str) -> pb.SignLinkResponse:
    products = [pb.Artifact(path=p, digest=d) for p, d in FOO.items()]
    response: pb.SignLinkResponse = custody.SignLink(pb.SignLinkRequest(
        step_name=step_name, key_alias=alias, products=products))
    return response


def verify(custody: Any, signed_layout: bytes, links: list[pb.SignLinkResponse], *,
           owner: str) -> pb.VerifyResponse:
    response: pb.VerifyResponse = custody.Verify(pb.VerifyRequest(
        layout=signed_layout,
        layout_keys=[pb.TrustedKey(alias=owner)],
        links=[pb.MetadataFile(path=link.file_name, content=link.signed) for link in links],
    ))
    return response


def reference_verify(directory: Path, *, signed_layout: bytes, owner_pem: str,
                     links: list[tuple[str, bytes]]) -> subprocess.CompletedProcess[str]:
    """The reference in-toto-verify (in-toto 3.1) over these files, in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "root.layout").write_bytes(signed_layout)
    (directory / "owner.pub").write_text(owner_pem)
    for name, content in links:
        (directory / name).write_bytes(content)
    return subprocess.run(
        [venv_tool("in-toto-verify"), "-l", "root.layout", "--verification-keys", "owner.pub"],
        cwd=directory, capture_output=True, text=True, timeout=60, check=False,
    )
