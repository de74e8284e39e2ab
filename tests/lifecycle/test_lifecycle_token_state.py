"""Lifecycle records in the token, crash recovery, keys made before tracking, the guard,
and audit failures (real SoftHSM token, fake clock)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from custody_server.audit_events import AuditEvent, MemoryAuditSink
from custody_server.errors import AuditUnavailableError
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.lifecycle.guard import (
    FileLockGuard,
    LifecycleBusyError,
    default_guard,
)
from custody_server.lifecycle.keyring import KeyRing
from custody_server.lifecycle.manager import KeyLifecycle
from custody_server.lifecycle.settings import LifecycleSettings, RotationSchedule
from custody_server.lifecycle.token_state import (
    LifecycleStateError,
    decode_record,
    encode_record,
    lifecycle_label,
)
from custody_server.softhsm import SoftHsmToken

from .lifecycle_support import FakeClock, unique_alias

HOUR = timedelta(hours=1)


def _ring(store: Pkcs11KeyStore, clock: FakeClock) -> KeyRing:
    return KeyRing(store, clock=clock.now, monotonic=clock.monotonic)


def _manager(keys: KeyRing, clock: FakeClock, *, audit: object | None = None,
             settings: LifecycleSettings | None = None) -> KeyLifecycle:
    return KeyLifecycle(keys=keys, audit=audit or MemoryAuditSink(),  # type: ignore[arg-type]
                        clock=clock.now, settings=settings)


def test_record_round_trip_and_damage_is_named(keystore: Pkcs11KeyStore) -> None:
    clock = FakeClock()
    keys, alias = _ring(keystore, clock), unique_alias("rec")
    created = keys.create(alias, KeyAlgorithm.ED25519)
    _manager(keys, clock).rotate(alias, overlap=HOUR, caller="test")
    key = keys.get(alias)
    assert decode_record(alias, encode_record(alias, key.versions)) == key.versions
    assert key.versions[0].public_key == created.active.public_key

    stored = keystore.read_object(lifecycle_label(alias))
    assert stored is not None and b'"format":"custody.key-lifecycle/v2"' in stored
    for damaged, message in [
        (b"{", "is damaged"),
        (stored.replace(b"custody.key-lifecycle/v2", b"v9"), "unknown format"),
        (stored.replace(b'"verify_until":null', b'"verify_until":"2030-01-01T00:00:00+00:00"'),
         "a next version ends only by RetireKey"),
        (stored.replace(b'"next":true', b'"next":false'),  # v3 would sign beside v2
         "exactly one version must be active"),
        (stored.replace(b'"next":true', b'"next":"yes"'), "next must be true or false"),
    ]:
        with pytest.raises(LifecycleStateError, match=message):
            decode_record(alias, damaged)
    with pytest.raises(LifecycleStateError, match="names alias"):
        decode_record("other", stored)


def test_a_record_written_before_pre_rotation_is_read(keystore: Pkcs11KeyStore) -> None:
    """A v1 record: every version was activated when it was created, none is next; the
    alias gets its next version from `ensure_next`, once."""
    clock = FakeClock()
    keys, alias = _ring(keystore, clock), unique_alias("v1rec")
    public_key = keystore.generate_key(label=f"custody:{alias}:v1",
                                       algorithm=KeyAlgorithm.ECDSA_P256)
    keystore.write_object(lifecycle_label(alias), json.dumps({
        "format": "custody.key-lifecycle/v1", "alias": alias, "versions": [{
            "version": 1, "algorithm": "ecdsa-p256", "public_key": public_key.to_dict(),
            "created": "2030-01-01T00:00:00+00:00", "verify_until": None,
            "retired_at": None, "destroyed_at": None}]}).encode())
    old = keys.get(alias)
    assert old.next is None and old.active.lifecycle.became_active == datetime(
        2030, 1, 1, tzinfo=UTC)
    audit = MemoryAuditSink()
    manager = _manager(keys, clock, audit=audit)
    prepared = manager.ensure_next(alias, trigger="start", caller="test").next
    assert prepared is not None and prepared.version == 2
    assert manager.ensure_next(alias, trigger="start", caller="test").next == prepared
    assert [(e.details["key_version"], e.details["trigger"]) for e in audit.events
            if e.action == "key-prepare"] == [(2, "start")]
    assert keys.signer(alias)[0].version == 1  # the next version signs nothing


def test_a_rotation_that_died_before_its_record_is_adopted(keystore: Pkcs11KeyStore) -> None:
    clock = FakeClock()
    keys, alias = _ring(keystore, clock), unique_alias("crash")
    created = keys.create(alias, KeyAlgorithm.ECDSA_P256)
    assert [v.version for v in created.versions] == [1, 2] and created.next is not None
    # A rotation generated the new next version v3 and died before writing the record.
    leftover = keystore.generate_key(label=f"custody:{alias}:v3",
                                     algorithm=KeyAlgorithm.ECDSA_P384)
    keys.refresh()
    assert [v.version for v in keys.get(alias).versions] == [1, 2]  # v3 is in no record
    assert keys.signer(alias)[0].version == 1
    rotation = _manager(keys, clock).rotate(alias, overlap=HOUR, caller="test")
    assert rotation.new == created.next.__class__(**{**created.next.__dict__,
                                                     "lifecycle": rotation.new.lifecycle})
    assert rotation.next.version == 3
    assert rotation.next.public_key == leftover  # adopted, not generated again
    assert rotation.next.algorithm is KeyAlgorithm.ECDSA_P384
    assert keys.signer(alias)[0].public_key == created.next.public_key


def test_a_key_made_before_tracking_is_adopted_by_the_scheduler(
        keystore: Pkcs11KeyStore) -> None:
    clock = FakeClock()
    keys, alias = _ring(keystore, clock), unique_alias("legacy")
    public_key = keystore.generate_key(label=f"custody:{alias}:v1",
                                       algorithm=KeyAlgorithm.ECDSA_P256)
    legacy = keys.get(alias)
    assert legacy.active.public_key == public_key and legacy.active.lifecycle.created is None
    settings = LifecycleSettings(schedules={alias: RotationSchedule(period=HOUR)})
    manager = _manager(keys, clock, settings=settings)
    assert manager.run_due().adopted == (alias,)
    assert keys.get(alias).active.lifecycle.created == clock.now()  # its period starts now
    assert manager.run_due().rotated == ()
    clock.advance(HOUR)
    assert manager.run_due().rotated == (f"{alias} v1 -> v2",)
    assert manager.run_due().rotated == ()


class _FailingAudit:
    def __init__(self) -> None:
        self.fail = False

    def record(self, event: AuditEvent) -> None:
        if self.fail:
            raise OSError("disk full")


def test_a_change_whose_audit_record_fails_says_so(keystore: Pkcs11KeyStore) -> None:
    clock, audit = FakeClock(), _FailingAudit()
    keys, alias = _ring(keystore, clock), unique_alias("aud")
    manager = _manager(keys, clock, audit=audit)
    manager.create(alias, KeyAlgorithm.ECDSA_P256, caller="test")
    audit.fail = True
    with pytest.raises(AuditUnavailableError,
                       match="key-rotate was done but its audit record could not be written"):
        manager.rotate(alias, overlap=HOUR, caller="test")
    assert keys.get(alias).active.version == 2  # the change stands; the caller is told


def test_the_guard_lives_beside_the_softhsm_token(softhsm_token: SoftHsmToken) -> None:
    guard = default_guard()
    assert isinstance(guard, FileLockGuard)
    assert guard.path == softhsm_token.directory / ".tokens.custody-lifecycle.lock"
    # Nothing but the token itself in the token directory (the HSM tests count on it).
    assert len(list((softhsm_token.directory / "tokens").iterdir())) == 1
    assert isinstance(default_guard(Path("/x/y.lock")), FileLockGuard)


def test_a_held_guard_makes_others_wait_then_give_up(tmp_path: Path) -> None:
    lock = tmp_path / "held.lock"
    holder = subprocess.Popen([sys.executable, "-c", (  # holds the lock until told to go
        "import fcntl, os, sys\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
    )], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        acquired: list[float] = []

        def wait_for_the_lock() -> None:
            with FileLockGuard(lock, timeout=30).hold():
                acquired.append(time.monotonic())

        patient = threading.Thread(target=wait_for_the_lock)
        patient.start()
        impatient = FileLockGuard(lock, timeout=0.2)
        with pytest.raises(LifecycleBusyError, match="another replica holds"), impatient.hold():
            pass
        assert acquired == []  # still waiting, as long as the holder holds
        released = time.monotonic()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        patient.join(timeout=30)
        assert acquired and acquired[0] > released  # ... then it has the lock
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_retired_versions_are_destroyed_once_and_keep_their_keyids(
        keystore: Pkcs11KeyStore) -> None:
    clock = FakeClock()
    keys, alias = _ring(keystore, clock), unique_alias("dest")

    def mine(done: tuple[str, ...]) -> list[str]:  # the token is shared with other tests
        return [item for item in done if item.startswith(f"{alias} ")]

    settings = LifecycleSettings(destroy_after=2 * HOUR)
    audit = MemoryAuditSink()
    manager = _manager(keys, clock, audit=audit, settings=settings)
    manager.create(alias, KeyAlgorithm.ECDSA_P256, caller="test")
    old = manager.rotate(alias, overlap=HOUR, caller="test").previous
    clock.advance(3 * HOUR - timedelta(seconds=1))
    assert mine(manager.run_due().destroyed) == []
    clock.advance(timedelta(seconds=1))
    assert mine(manager.run_due().destroyed) == [f"{alias} v1"]
    destroyed = keys.get(alias).version(1)
    assert destroyed is not None
    assert destroyed.keyid == old.keyid
    assert dataclasses.replace(destroyed.lifecycle, destroyed_at=None) == old.lifecycle
    assert f"custody:{alias}:v1" not in {k.label for k in keystore.list_keys()}
    assert mine(manager.run_due().destroyed) == []
    assert [e.details["key_version"] for e in audit.events
            if e.action == "key-destroy" and e.details["key_alias"] == alias] == [1]
