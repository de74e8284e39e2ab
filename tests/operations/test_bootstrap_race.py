"""Replicas that cold-start at the same moment on one token: each default key and the audit
key is made once, and every replica starts with it (KeyExistsError means "made elsewhere").

Each racer warms its key ring first, so that it believes every alias is missing, and all
of them start together: the race is forced, not hoped for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from custody_server.audit import AuditSettings, open_audit_trail
from custody_server.bootstrap import ensure_default_keys
from custody_server.keystore import Pkcs11KeyStore
from custody_server.lifecycle.guard import LifecycleGuard, ProcessGuard, default_guard
from custody_server.lifecycle.keyring import KeyRing
from custody_server.softhsm import SoftHsmToken

from .ops_support import PYTHONPATH

RACERS = 4


def _aliases() -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"race-build-{tag}", f"race-owner-{tag}", f"race-audit-{tag}"


def _check_made_once(keystore: Pkcs11KeyStore, aliases: tuple[str, ...],
                     results: list[dict[str, Any]]) -> None:
    """One key pair per version (v1 and its next version v2) per alias on the token; every
    racer uses v1; one racer made it."""
    keys = KeyRing(keystore)
    for alias in aliases:
        fresh = keys.read_fresh(alias)
        assert fresh.key is not None and fresh.has_record, alias
        assert [(v.version, v.lifecycle.is_next) for v in fresh.key.versions] == [
            (1, False), (2, True)]
        assert sorted(fresh.stored) == [1, 2]  # no stray key pair
        assert {r["keyids"][alias] for r in results} == {fresh.key.active.keyid}
    for alias in aliases[:2]:
        makers = [r for r in results if any(f"created key {alias!r}" in n for n in r["notes"])]
        assert len(makers) == 1, (alias, results)


@pytest.mark.parametrize("guard", [default_guard, ProcessGuard],
                         ids=["shared-lock-file", "no-shared-lock"])
def test_threads_racing_to_create_the_same_keys(
        keystore: Pkcs11KeyStore, tmp_path: Path, guard: Callable[[], LifecycleGuard]) -> None:
    """With the lock file the losers find the key under the lock; without one (a network
    HSM and no lifecycle.lock_file) the token refuses the taken label. Both: started."""
    link, layout, audit = _aliases()
    start = threading.Barrier(RACERS)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def replica(number: int) -> None:
        try:
            keys = KeyRing(keystore, cache_ttl=60.0, guard=guard())
            keys.all()  # warm: every alias looks missing
            start.wait(timeout=30)
            notes = ensure_default_keys(keys, (link, layout))
            trail = open_audit_trail(AuditSettings(directory=tmp_path / f"audit-{number}",
                                                   key_alias=audit), keys=keys,
                                     store=keystore, node=f"race-{uuid.uuid4().hex[:12]}")
            trail.close()
            results.append({"notes": notes, "keyids": {
                alias: keys.get(alias).active.keyid for alias in (link, layout, audit)}})
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, [(e, e.__cause__, e.__context__) for e in errors]
    assert len(results) == RACERS
    _check_made_once(keystore, (link, layout, audit), results)


def test_processes_racing_to_create_the_same_keys(
        keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    aliases = _aliases()
    env = {**os.environ, **softhsm_token.environment(), "PYTHONPATH": PYTHONPATH,
           "CUSTODY_TEST_TOKEN": softhsm_token.token_label,
           "CUSTODY_TEST_PIN_FILE": str(softhsm_token.pin_file)}
    worker = Path(__file__).parent / "bootstrap_race_worker.py"
    processes: list[subprocess.Popen[str]] = []
    try:
        # One by one until each is warm (SoftHSM processes that log in at the same moment
        # can break each other's view of the token); then all of them start at once.
        for n in range(RACERS):
            process = subprocess.Popen(
                [sys.executable, str(worker), *aliases, str(tmp_path / f"audit-{n}")],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            processes.append(process)
            assert process.stdout is not None and process.stderr is not None
            if process.stdout.readline().strip() != "ready":
                process.kill()
                raise AssertionError(f"a racer did not start: {process.stderr.read()}")
        results = []
        for process in processes:
            out, err = process.communicate("go\n", timeout=60)
            assert process.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert all(r["guard"].startswith("flock on ") for r in results)
    _check_made_once(keystore, aliases, results)
