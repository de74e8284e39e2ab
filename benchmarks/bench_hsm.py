"""Raw signing throughput of the PKCS#11 key store on SoftHSM2, per algorithm.

For each algorithm: 1 thread, and 8 threads through the store as it is (its FIFO module
lock); then, for the choice made in custody_server/keystore/_connection.py, 8 threads
through a plain threading.Lock swapped in, and through one owner thread (a single-worker
executor that every call is handed to).
Prints signatures/s and p50/p99 latency per call. Makes its own token in a temp dir.

    python benchmarks/bench_hsm.py [--seconds 2] [--payload-bytes 1024] [--no-compare]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "core"), str(REPO / "server")]

from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore  # noqa: E402
from custody_server.softhsm import init_token  # noqa: E402


def measure(call: Callable[[], object], *, threads: int, seconds: float) -> dict[str, float]:
    """Run `call` in `threads` threads for `seconds`; throughput and latency percentiles."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    deadline = 0.0

    def worker(index: int) -> None:
        own = latencies[index]
        start.wait()
        while (now := time.perf_counter()) < deadline:
            call()
            own.append(time.perf_counter() - now)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    deadline = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - began
    merged = sorted(latency for own in latencies for latency in own)
    quantiles = statistics.quantiles(merged, n=100)
    return {
        "per_second": len(merged) / elapsed,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
        "count": len(merged),
    }


def report(name: str, result: dict[str, float]) -> None:
    print(
        f"{name:<34} {result['per_second']:>10,.0f}/s   p50 {result['p50_ms']:7.3f} ms"
        f"   p99 {result['p99_ms']:7.3f} ms   (n={int(result['count'])})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument(
        "--no-compare", dest="compare", action="store_false",
        help="skip the plain-Lock and owner-thread lines",
    )
    args = parser.parse_args()
    payload = os.urandom(args.payload_bytes)

    with tempfile.TemporaryDirectory(prefix="custody-bench-hsm-") as directory:
        token = init_token(Path(directory), label="bench")
        os.environ["SOFTHSM2_CONF"] = str(token.conf_path)  # before the module loads
        store = Pkcs11KeyStore.open(
            module_path=token.module_path, token_label=token.token_label, pin=token.read_pin()
        )
        print(f"SoftHSM2 token in {directory}; payload {args.payload_bytes} bytes; "
              f"{args.seconds:g} s per line")
        for algorithm in KeyAlgorithm:
            label = f"bench-{algorithm.value}"
            store.generate_key(label=label, algorithm=algorithm)

            def sign(label: str = label) -> bytes:
                return store.sign(label, payload)

            sign()
            name = algorithm.value
            report(f"{name} 1 thread", measure(sign, threads=1, seconds=args.seconds))
            report(f"{name} 8 threads (FIFO lock)", measure(sign, threads=8, seconds=args.seconds))
            if args.compare:
                module = store._live().module  # the benchmark swaps the lock; nothing else may
                fifo_lock = module.lock
                module.lock = threading.Lock()
                report(
                    f"{name} 8 threads (plain Lock)",
                    measure(sign, threads=8, seconds=args.seconds),
                )
                module.lock = fifo_lock
                with ThreadPoolExecutor(max_workers=1) as owner:

                    def sign_via_owner() -> bytes:
                        return owner.submit(sign).result()

                    report(
                        f"{name} 8 threads (owner thread)",
                        measure(sign_via_owner, threads=8, seconds=args.seconds),
                    )
        store.close()


if __name__ == "__main__":
    main()
