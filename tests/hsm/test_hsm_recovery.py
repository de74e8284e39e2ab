"""Recovery against the real token: the module finalized under the store, the token's files
gone and back, a peer process changing the token, and the backoff while the token is dead."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pkcs11
import pytest

from custody_server.keystore import (
    KeyAlgorithm,
    KeyNotFoundError,
    KeystoreUnavailableError,
    Pkcs11KeyStore,
)
from custody_server.softhsm import SoftHsmToken

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def eventually(call: Callable[[], T], *, timeout: float = 10.0) -> T:
    """`call()` once the store has reconnected (it raises KeystoreUnavailableError until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KeystoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def signing_key(keystore: Pkcs11KeyStore, unique_label: str) -> Iterator[str]:
    keystore.generate_key(label=unique_label, algorithm=KeyAlgorithm.ECDSA_P256)
    keystore.sign(unique_label, b"warm the handle cache")
    yield unique_label
    eventually(lambda: keystore.list_keys())  # leave the shared store connected
    with contextlib.suppress(KeyNotFoundError):
        keystore.destroy_key(unique_label)


def test_recovers_after_the_module_is_finalized_under_it(
    keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, signing_key: str
) -> None:
    # Another component of the process calls C_Finalize: every session and handle dies.
    pkcs11.lib(softhsm_token.module_path).finalize()

    with pytest.raises(KeystoreUnavailableError, match="will be reopened"):
        keystore.sign(signing_key, b"payload")

    signature = eventually(lambda: keystore.sign(signing_key, b"payload"))
    assert keystore.public_key(signing_key).verify(signature, b"payload")


def test_recovers_when_the_token_disappears_and_comes_back(
    keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, signing_key: str
) -> None:
    (token_files,) = (softhsm_token.directory / "tokens").iterdir()
    parked = softhsm_token.directory / "parked-token"
    shutil.move(token_files, parked)  # the volume holding the token goes away
    try:
        # A dead token is "unavailable", never "key not found": the keys are not gone.
        with pytest.raises(KeystoreUnavailableError):
            keystore.sign(signing_key, b"payload")
        with pytest.raises(KeystoreUnavailableError):
            keystore.public_key(f"{signing_key}-uncached")
        # Once the backoff has passed, a real attempt to reopen the session is refused the
        # same way (until then the store refuses without trying: "next attempt in").
        deadline = time.monotonic() + 10
        while True:
            with pytest.raises(KeystoreUnavailableError) as refused:
                keystore.sign(signing_key, b"payload")
            if "next attempt in" not in str(refused.value):
                break
            assert time.monotonic() < deadline, "the store never tried the token again"
            time.sleep(0.01)
    finally:
        shutil.move(parked, token_files)  # ... and comes back

    signature = eventually(lambda: keystore.sign(signing_key, b"payload"))
    assert keystore.public_key(signing_key).verify(signature, b"payload")


def test_listeners_hear_the_token_go_and_come_back(
    keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, signing_key: str
) -> None:
    """What the server's health follows (custody_server.token_health): one False when a
    call finds the token gone, however many calls fail after it, one True on reconnect."""
    (token_files,) = (softhsm_token.directory / "tokens").iterdir()
    parked = softhsm_token.directory / "parked-token"
    heard: list[bool] = []
    remove = keystore.add_availability_listener(heard.append)
    try:
        keystore.probe()
        assert keystore.available and heard == []
        shutil.move(token_files, parked)
        for _ in range(3):
            with pytest.raises(KeystoreUnavailableError):
                keystore.sign(signing_key, b"payload")
        assert heard == [False] and not keystore.available
        with pytest.raises(KeystoreUnavailableError):
            keystore.probe()
        shutil.move(parked, token_files)
        eventually(keystore.probe)
        assert heard == [False, True] and keystore.available
    finally:
        remove()
        if parked.exists():
            shutil.move(parked, token_files)
    eventually(lambda: keystore.sign(signing_key, b"payload"))
    assert heard == [False, True]  # removed: hears nothing more


def test_a_dead_token_is_not_hammered(
    keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, signing_key: str
) -> None:
    (token_files,) = (softhsm_token.directory / "tokens").iterdir()
    parked = softhsm_token.directory / "parked-token"
    calls = attempts = 0
    shutil.move(token_files, parked)
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            calls += 1
            try:
                keystore.sign(signing_key, b"payload")
            except KeystoreUnavailableError as error:
                if "next attempt in" not in str(error):
                    attempts += 1  # this call really went to the token
    finally:
        shutil.move(parked, token_files)
    # Backoff 0.05 s doubling: within 0.5 s at most ~5 real attempts, out of many calls.
    assert calls > 100
    assert 2 <= attempts <= 7
    eventually(lambda: keystore.sign(signing_key, b"payload"))


def test_a_peer_process_sharing_the_token_sees_and_changes_the_same_state(
    keystore: Pkcs11KeyStore, softhsm_token: SoftHsmToken, signing_key: str, unique_label: str
) -> None:
    """Replicas share the token: objects one writes, the other reads; a key one destroys
    stops signing in the other (first UNAVAILABLE for the stale handle, then not found)."""
    state_label = f"{unique_label}-state"
    keystore.write_object(state_label, b"written by us")
    peer = textwrap.dedent(
        f"""
        from custody_server.keystore import Pkcs11KeyStore
        store = Pkcs11KeyStore.open(module_path={softhsm_token.module_path!r},
                                    token_label={softhsm_token.token_label!r},
                                    pin=open({str(softhsm_token.pin_file)!r}).read().strip())
        assert store.read_object({state_label!r}) == b"written by us"
        store.write_object({state_label!r}, b"written by the peer")
        store.destroy_key({signing_key!r})
        store.close()
        """
    )
    environment = {
        **os.environ,
        "SOFTHSM2_CONF": str(softhsm_token.conf_path),
        "PYTHONPATH": os.pathsep.join(str(REPO / part) for part in ("core", "server")),
    }
    subprocess.run([sys.executable, "-c", peer], env=environment, check=True, timeout=60)

    assert keystore.read_object(state_label) == b"written by the peer"
    with pytest.raises(KeystoreUnavailableError):
        keystore.sign(signing_key, b"payload")  # our cached handle went stale
    with pytest.raises(KeyNotFoundError):
        eventually(lambda: keystore.sign(signing_key, b"payload"))
    keystore.delete_object(state_label)
