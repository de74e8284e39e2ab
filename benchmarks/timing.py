"""Closed-loop load for the benchmarks: `in_flight` threads call as fast as they can."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping
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


def alternate(calls: Mapping[str, Callable[[int], object]], *, in_flight: int, seconds: float,
              rounds: int, server_pids: Mapping[str, int]
              ) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Each call for seconds/rounds per round, in alternating order, so that other load
    on a shared machine hits all of them alike. Returns per call the summary of all its
    rounds with the CPU per call of its server process (`server_us`) and of this one
    (`client_us`), and each round's throughput ratio of the second call to the first."""
    totals: dict[str, Timing] = {name: ([], 0.0) for name in calls}
    cpu = {name: [0.0, 0.0] for name in calls}  # server, client seconds
    ratios: list[float] = []
    for round_number in range(rounds):
        names = list(calls) if round_number % 2 == 0 else list(calls)[::-1]
        this_round: dict[str, float] = {}
        for name in names:
            server_before = process_cpu_seconds(server_pids[name])
            client_before = time.process_time()
            latencies, elapsed = measure(calls[name], in_flight=in_flight,
                                         seconds=seconds / rounds)
            cpu[name][0] += process_cpu_seconds(server_pids[name]) - server_before
            cpu[name][1] += time.process_time() - client_before
            this_round[name] = len(latencies) / elapsed
            totals[name] = (totals[name][0] + latencies, totals[name][1] + elapsed)
        first, second = list(calls)
        ratios.append(this_round[second] / this_round[first])
    results: dict[str, dict[str, float]] = {}
    for name, timing in totals.items():
        calls_made = max(1, len(timing[0]))
        results[name] = {**summary(timing), "server_us": cpu[name][0] / calls_made * 1e6,
                         "client_us": cpu[name][1] / calls_made * 1e6}
    return results, ratios
