"""Several processes on one SoftHSM token: a rotation through one replica is picked up by
another within the cache TTL; a due rotation happens once however many replicas run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc as pb_grpc
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.softhsm import SoftHsmToken

from .lifecycle_support import OPEN_POLICY, layout, sign_link, step, unique_alias

ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(ROOT / part) for part in ("core", "client", "server"))
CACHE_TTL = 1.0  # seconds: the documented delay for these replicas
SLACK = 1.0  # RPC and polling time on top of it
PERIOD = 8.0  # scheduled rotation of "build"
CONFIG = f"""
[tls]
insecure = true

[lifecycle]
cache_ttl = "{CACHE_TTL}s"
check_interval = "0.2s"

[lifecycle.rotation.build]
period = "{PERIOD}s"
overlap = "1h"
"""
T = TypeVar("T")


@dataclass
class Replica:
    process: subprocess.Popen[str]
    port: int
    state_dir: Path
    output: list[str]
    channel: grpc.Channel

    @property
    def custody(self) -> Any:
        return pb_grpc.CustodyStub(self.channel)  # type: ignore[no-untyped-call]

    @property
    def key_admin(self) -> Any:
        return pb_grpc.KeyAdminStub(self.channel)  # type: ignore[no-untyped-call]

    def versions(self, alias: str) -> list[Any]:
        key = self.key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias=alias)).key
        return list(key.versions)

    def audit_events(self, action: str) -> list[dict[str, Any]]:
        events = []
        for path in sorted((self.state_dir / "audit").glob("audit*.log*")):
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("event", {}).get("action") == action:
                    events.append(entry)
        return events


def _start(state_dir: Path, config: Path) -> Replica:
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
    raise AssertionError("replica did not start:\n" + "".join(output))


def _stop(replica: Replica) -> None:
    replica.channel.close()
    replica.process.terminate()
    try:
        replica.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        replica.process.kill()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, Replica]]:
    """Two server processes with their own state directories and one SoftHSM token: the
    second one's hsm/ is the first one's."""
    base = tmp_path_factory.mktemp("replicas")
    config = base / "custody.toml"
    config.write_text(CONFIG)
    first_dir, second_dir = base / "a", base / "b"
    for directory in (first_dir, second_dir):
        directory.mkdir(mode=0o700)
        (directory / "policy.toml").write_text(OPEN_POLICY)
    first = _start(first_dir, config)  # makes the token and the default keys
    (second_dir / "hsm").symlink_to(first_dir / "hsm")
    try:
        second = _start(second_dir, config)
    except BaseException:
        _stop(first)
        raise
    yield first, second
    for replica in (first, second):
        _stop(replica)


def _within(seconds: float, probe: Callable[[], T | None]) -> tuple[T, float]:
    """Poll `probe` until it returns a value; the value and how long it took."""
    started = time.monotonic()
    while True:
        value = probe()
        elapsed = time.monotonic() - started
        if value is not None:
            return value, elapsed
        assert elapsed < seconds, f"not seen within {seconds} s"
        time.sleep(0.05)


def test_rotation_through_one_replica_is_enforced_by_the_other(
        replicas: tuple[Replica, Replica]) -> None:
    first, second = replicas
    alias = unique_alias("relay")
    first.key_admin.CreateKey(pb.CreateKeyRequest(alias=alias))

    def second_knows_alias() -> bool | None:
        try:
            return bool(second.versions(alias)) or None
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            return None

    _, delay = _within(CACHE_TTL + SLACK, second_knows_alias)
    link_v1 = sign_link(second.custody, step_name="build", alias=alias)
    assert link_v1.key_version == 1

    first.key_admin.RotateKey(pb.RotateKeyRequest(alias=alias, overlap=Duration(seconds=3600)))
    link_v2, delay = _within(CACHE_TTL + SLACK, lambda: (
        link if (link := sign_link(second.custody, step_name="build", alias=alias)
                 ).key_version == 2 else None))
    print(f"second replica signs with v2 {delay:.2f} s after the rotation")

    # A layout from the first replica lists both versions; the second verifies v1's link.
    signed = first.custody.SignLayout(pb.SignLayoutRequest(
        layout=layout(step("build", [f"alias:{alias}"])), key_alias="owner")).signed

    def verify_v1() -> pb.VerifyResponse:
        response: pb.VerifyResponse = second.custody.Verify(pb.VerifyRequest(
            layout=signed, layout_keys=[pb.TrustedKey(alias="owner")],
            links=[pb.MetadataFile(path=link_v1.file_name, content=link_v1.signed)]))
        return response

    assert verify_v1().passed
    first.key_admin.RetireKey(pb.RetireKeyRequest(alias=alias, version=1))
    verdict, delay = _within(CACHE_TTL + SLACK, lambda: (
        v if not (v := verify_v1()).passed else None))
    print(f"second replica refuses retired v1 {delay:.2f} s after RetireKey")
    assert f"{alias} v1 is retired: its window ended at" in verdict.failures[0].reason
    assert "(ended early by RetireKey)" in verdict.failures[0].reason
    assert link_v2.keyid != link_v1.keyid


def test_scheduled_rotation_happens_once_with_two_replicas(
        replicas: tuple[Replica, Replica]) -> None:
    second = replicas[1]
    versions, _ = _within(PERIOD + 5, lambda: (
        v if len(v := second.versions("build")) >= 2 else None))
    created = [v.created.ToDatetime() for v in versions]
    late = (created[1] - created[0]).total_seconds() - PERIOD
    assert 0 <= late < 2, f"rotated {late:.2f} s after it was due"
    time.sleep(1.5)  # both schedulers look again, several times (every 0.2 s)
    for replica in replicas:
        assert [v.version for v in replica.versions("build")] == [1, 2]
    rotations = [e for r in replicas for e in r.audit_events("key-rotate")
                 if e["custody"]["key"]["alias"] == "build"]
    assert len(rotations) == 1, rotations
    assert rotations[0]["event"]["outcome"] == "success"
    assert rotations[0]["custody"]["trigger"] == "schedule"
    key = second.key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias="build")).key
    assert key.rotation_period.seconds == PERIOD
    assert key.next_rotation.ToDatetime() == created[1] + timedelta(seconds=PERIOD)


def test_due_work_run_by_four_processes_at_once_rotates_once(
        keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    keys = KeyRing(keystore)
    alias = unique_alias("race")
    keys.create(alias, KeyAlgorithm.ECDSA_P256)
    due_at = time.time() + 1.5
    env = {**os.environ, **softhsm_token.environment(), "PYTHONPATH": PYTHONPATH,
           "CUSTODY_TEST_TOKEN": softhsm_token.token_label,
           "CUSTODY_TEST_PIN_FILE": str(softhsm_token.pin_file)}
    # SoftHSM is not safe against processes logging in to one token at the same moment
    # (a reader can get a broken view), so the workers open the token one by one and
    # only the due work, the race under test, starts at once.
    go_file = tmp_path / "go"
    workers = []
    for _ in range(4):
        worker = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "lifecycle_race_worker.py"), alias,
             str(go_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready", worker.communicate(timeout=30)
        workers.append(worker)
    time.sleep(max(0.0, due_at - time.time()))  # the rotation period (1 s) has passed
    go_file.touch()
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    rotated = [r["rotated"] for r in results]
    assert sorted(len(r) for r in rotated) == [0, 0, 0, 1], rotated
    assert all(r["guard"].startswith("flock on ") for r in results)
    fresh = keys.read_fresh(alias)
    assert fresh.key is not None
    assert [v.version for v in fresh.key.versions] == [1, 2]
    assert sorted(fresh.stored) == [1, 2]  # no stray key pair either
