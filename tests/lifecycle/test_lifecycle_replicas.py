"""Several processes on one SoftHSM token: a rotation through one replica is picked up by
another within the cache TTL; a due rotation happens once however many replicas run; the
replicas agree on each alias's next version, made once however many make it at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from custody_api.v1 import custody_pb2 as pb
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.softhsm import SoftHsmToken

from .lifecycle_support import OPEN_POLICY, layout, sign_link, step, unique_alias
from .process_support import PYTHONPATH, Replica, within
from .process_support import start_server as _start
from .process_support import stop_server as _stop

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

    _, delay = within(CACHE_TTL + SLACK, second_knows_alias)
    link_v1 = sign_link(second.custody, step_name="build", alias=alias)
    assert link_v1.key_version == 1
    # Both replicas know the same next version, which layouts list before it signs.
    listed_next = first.key(alias).versions[1]
    assert listed_next.state == "next"
    assert second.key(alias).versions[1].keyid == listed_next.keyid

    first.key_admin.RotateKey(pb.RotateKeyRequest(alias=alias, overlap=Duration(seconds=3600)))
    link_v2, delay = within(CACHE_TTL + SLACK, lambda: (
        link if (link := sign_link(second.custody, step_name="build", alias=alias)
                 ).key_version == 2 else None))
    print(f"second replica signs with v2 {delay:.2f} s after the rotation")
    assert link_v2.keyid == listed_next.keyid  # the promoted next version
    new_next = first.key(alias).versions[2]
    assert new_next.state == "next" and second.key(alias).versions[2].keyid == new_next.keyid

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
    verdict, delay = within(CACHE_TTL + SLACK, lambda: (
        v if not (v := verify_v1()).passed else None))
    print(f"second replica refuses retired v1 {delay:.2f} s after RetireKey")
    assert f"{alias} v1 is retired: its window ended at" in verdict.failures[0].reason
    assert "(ended early by RetireKey)" in verdict.failures[0].reason
    assert link_v2.keyid != link_v1.keyid


def test_scheduled_rotation_happens_once_with_two_replicas(
        replicas: tuple[Replica, Replica]) -> None:
    second = replicas[1]
    key, _ = within(PERIOD + 5, lambda: (
        k if (k := second.key("build")).active_version >= 2 else None))
    activated = [v.activated.ToDatetime() for v in key.versions[:2]]
    late = (activated[1] - activated[0]).total_seconds() - PERIOD
    assert 0 <= late < 2, f"rotated {late:.2f} s after it was due"
    time.sleep(1.5)  # both schedulers look again, several times (every 0.2 s)
    for replica in replicas:
        assert [(v.version, v.state) for v in replica.versions("build")] == [
            (1, "verify-only"), (2, "active"), (3, "next")]
    rotations = [e for r in replicas for e in r.audit_events("key-rotate")
                 if e["custody"]["key"]["alias"] == "build"]
    assert len(rotations) == 1, rotations
    assert rotations[0]["event"]["outcome"] == "success"
    assert rotations[0]["custody"]["trigger"] == "schedule"
    key = second.key_admin.GetPublicKey(pb.GetPublicKeyRequest(alias="build")).key
    assert key.rotation_period.seconds == PERIOD
    assert key.next_rotation.ToDatetime() == activated[1] + timedelta(seconds=PERIOD)


def test_due_work_run_by_four_processes_at_once_rotates_once(
        keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    keys = KeyRing(keystore)
    alias = unique_alias("race")
    keys.create(alias, KeyAlgorithm.ECDSA_P256)
    due_at = time.time() + 1.5
    results = _race(alias, "due", softhsm_token, tmp_path,
                    # the rotation period (1 s) has passed
                    before_go=lambda: time.sleep(max(0.0, due_at - time.time())))
    rotated = [r["rotated"] for r in results]
    assert sorted(len(r) for r in rotated) == [0, 0, 0, 1], rotated
    assert all(r["guard"].startswith("flock on ") for r in results)
    fresh = keys.read_fresh(alias)
    assert fresh.key is not None
    assert [v.version for v in fresh.key.versions] == [1, 2, 3]  # v2 promoted, v3 next
    assert sorted(fresh.stored) == [1, 2, 3]  # no stray key pair either


def test_four_processes_give_an_older_alias_one_next_version(
        keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    """An alias made before pre-rotation (v1, no next version) and four processes that
    prepare next versions at the same instant (as replicas do at start): one next version,
    one key pair, which every process then sees."""
    alias = unique_alias("prep")
    keystore.generate_key(label=f"custody:{alias}:v1", algorithm=KeyAlgorithm.ECDSA_P256)
    results = _race(alias, "prepare", softhsm_token, tmp_path)
    prepared = [r["prepared"] for r in results]
    assert sorted(len(p) for p in prepared) == [0, 0, 0, 1], prepared
    assert len({r["next_keyid"] for r in results}) == 1  # all four agree
    fresh = KeyRing(keystore).read_fresh(alias)
    assert fresh.key is not None and fresh.key.next is not None
    assert [v.version for v in fresh.key.versions] == [1, 2]
    assert sorted(fresh.stored) == [1, 2]
    assert fresh.key.next.keyid == results[0]["next_keyid"]


def _race(alias: str, work: str, softhsm_token: SoftHsmToken, tmp_path: Path, *,
          before_go: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """Four worker processes on the session's token, doing `work` ("due": the scheduler's
    due work; "prepare": next versions, as at start) at the same instant."""
    env = {**os.environ, **softhsm_token.environment(), "PYTHONPATH": PYTHONPATH,
           "CUSTODY_TEST_TOKEN": softhsm_token.token_label,
           "CUSTODY_TEST_PIN_FILE": str(softhsm_token.pin_file)}
    # SoftHSM is not safe against processes logging in to one token at the same moment
    # (a reader can get a broken view), so the workers open the token one by one and
    # only the work, the race under test, starts at once.
    go_file = tmp_path / "go"
    workers = []
    for _ in range(4):
        worker = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "lifecycle_race_worker.py"), alias,
             str(go_file), work], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready", worker.communicate(timeout=30)
        workers.append(worker)
    before_go()
    go_file.touch()
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results
