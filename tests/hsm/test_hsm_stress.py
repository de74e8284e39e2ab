"""Many threads signing at once with every key type: no crash, no failure, all valid.

python-pkcs11 releases the GIL inside PKCS#11 calls and SoftHSM's locking is off, so without
the store's serialization this crashes the process within seconds (softhsm/README.md,
"Hazards").
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from custody_core.keys import PublicKey
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore

THREADS = 16
SIGNATURES_PER_THREAD = 128  # 2,048 in all; a quarter of them RSA-3072 (the slow one)


@pytest.fixture(scope="module")
def one_key_per_algorithm(keystore: Pkcs11KeyStore) -> Iterator[list[tuple[str, PublicKey]]]:
    keys = []
    for algorithm in KeyAlgorithm:
        label = f"stress-{algorithm.value}-{uuid.uuid4().hex}"
        keys.append((label, keystore.generate_key(label=label, algorithm=algorithm)))
    yield keys
    for label, _ in keys:
        keystore.destroy_key(label)


@pytest.mark.slow
def test_sixteen_threads_sign_with_every_key_type_without_a_failure(
    keystore: Pkcs11KeyStore, one_key_per_algorithm: list[tuple[str, PublicKey]]
) -> None:
    start = threading.Barrier(THREADS)
    failures: list[BaseException] = []
    signed: list[list[tuple[int, bytes, bytes]]] = [[] for _ in range(THREADS)]

    def work(thread: int) -> None:
        start.wait()
        for index in range(SIGNATURES_PER_THREAD):
            key_index = (thread + index) % len(one_key_per_algorithm)
            label, _ = one_key_per_algorithm[key_index]
            data = f"thread {thread} signature {index}".encode()
            try:
                signed[thread].append((key_index, data, keystore.sign(label, data)))
            except BaseException as error:  # any failure at all fails the test
                failures.append(error)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    elapsed = time.perf_counter() - began

    assert not any(worker.is_alive() for worker in workers)
    assert failures == []
    results = [result for per_thread in signed for result in per_thread]
    assert len(results) == THREADS * SIGNATURES_PER_THREAD >= 2000
    invalid = [
        (key_index, data)
        for key_index, data, signature in results
        if not one_key_per_algorithm[key_index][1].verify(signature, data)
    ]
    assert invalid == []
    assert elapsed < 20, f"{len(results)} signatures took {elapsed:.1f}s"
