"""Closed-loop load for the benchmarks: `in_flight` threads call as fast as they can."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

Timing = tuple[list[float], float]  # the latency of every call, and the time they took


def measure(call: Callable[[int], object], *, in_flight: int, seconds: float) -> Timing:
    """Every call's latency over `seconds`. `call` gets a number unique to the call."""
    latencies: list[list[float]] = [[] for _ in range(in_flight)]
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        own, count = latencies[index], 0
        while (began := time.perf_counter()) < deadline:
            count += 1
            call(index * 100_000_000 + count)
            own.append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(in_flight)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [x for own in latencies for x in own], time.perf_counter() - began


def summary(timing: Timing) -> dict[str, float]:
    latencies, elapsed = timing
    quantiles = statistics.quantiles(sorted(latencies), n=100)
    return {"rps": len(latencies) / elapsed, "p50_ms": quantiles[49] * 1000,
            "p99_ms": quantiles[98] * 1000}


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
