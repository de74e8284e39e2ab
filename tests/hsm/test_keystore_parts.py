"""The key store's pieces that need no token: FIFO lock, backoff, algorithm names."""

from __future__ import annotations

import threading
import time

import pytest

from custody_server.keystore import KeyAlgorithm, ReconnectBackoff
from custody_server.keystore._fifo_lock import FifoLock


def test_fifo_lock_excludes_and_hands_over_in_arrival_order() -> None:
    lock = FifoLock()
    order: list[int] = []
    inside = 0
    overlap = False

    def worker(index: int) -> None:
        nonlocal inside, overlap
        with lock:
            inside += 1
            overlap = overlap or inside > 1
            order.append(index)
            time.sleep(0.001)
            inside -= 1

    lock.acquire()
    threads = []
    for index in range(8):
        thread = threading.Thread(target=worker, args=(index,))
        thread.start()
        threads.append(thread)
        while len(lock._waiters) < index + 1:  # wait until it queues, to fix the order
            time.sleep(0.0005)
    lock.release()
    for thread in threads:
        thread.join(timeout=5)
    assert order == list(range(8))
    assert not overlap
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


def test_backoff_doubles_and_caps() -> None:
    backoff = ReconnectBackoff(initial_seconds=0.05, factor=2.0, max_seconds=0.3)
    assert [backoff.delay(n) for n in range(6)] == [0.0, 0.05, 0.1, 0.2, 0.3, 0.3]
    with pytest.raises(ValueError):
        ReconnectBackoff(initial_seconds=1.0, max_seconds=0.5)
    with pytest.raises(ValueError):
        ReconnectBackoff(factor=0.5)


def test_algorithms_carry_in_toto_names() -> None:
    assert {(a.value, a.keytype, a.scheme) for a in KeyAlgorithm} == {
        ("ecdsa-p256", "ecdsa", "ecdsa-sha2-nistp256"),
        ("ecdsa-p384", "ecdsa", "ecdsa-sha2-nistp384"),
        ("ed25519", "ed25519", "ed25519"),
        ("rsa-3072", "rsa", "rsassa-pss-sha256"),
    }
