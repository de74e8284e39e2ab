"""Batch benchmark: 1,000 links as SignLinks batches of 100 against 1,000 single SignLink
calls, in one run, durable audit on.

Starts `custody-server` as a separate process on a fresh embedded state directory (mTLS
with its local certificates, the audit trail on disk with its synchronous writes), then
signs the same 1,000 links (five materials and one product each, Metablock) in
alternating rounds (--rounds):
  - single: one SignLink call after another, as an agent recording its steps one by one
    does (the batch's use case), and with 8 calls in flight, for comparison;
  - batch: ten SignLinks calls of 100 links, one after another.
Prints the time and links per second of each, the ratio of batch to single (target of
issue 19: >= 3x), and the server's and this client's CPU per link.

    python benchmarks/bench_batch.py [--links 1000] [--batch 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from bench_service import local_credentials, start_server
from timing import process_cpu_seconds

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc


def link(index: int) -> pb.SignLinkRequest:
    return pb.SignLinkRequest(
        step_name=f"build-{index}", command=["make", str(index)], key_alias="build",
        materials=[pb.Artifact(path=f"src/{i}.c", digest={"sha256": "ab" * 32})
                   for i in range(5)],
        products=[pb.Artifact(path=f"bin/app-{index}", digest={"sha256": "cd" * 32})])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="links per SignLinks call")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="custody-bench-batch-"))
    process, address = start_server(state)
    load_before = os.getloadavg()[0]
    try:
        credentials = local_credentials(state)
        channel = grpc.secure_channel(address, credentials)
        grpc.channel_ready_future(channel).result(timeout=30)
        custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
        links = [link(n) for n in range(options.links)]
        batches = [pb.SignLinksRequest(links=links[start:start + options.batch])
                   for start in range(0, len(links), options.batch)]
        custody.SignLink(links[0])  # warm up: key handle cache, connection
        pool = ThreadPoolExecutor(8)

        def single() -> None:
            for request in links:
                custody.SignLink(request)

        def single_8() -> None:
            list(pool.map(custody.SignLink, links))

        def batch() -> None:
            for request in batches:
                response = custody.SignLinks(request)
                if any(r.WhichOneof("result") != "signed" for r in response.results):
                    raise SystemExit(f"a link was refused: {response.results[0]}")

        runs: dict[str, Callable[[], None]] = {
            "single SignLink, 1 in flight": single,
            "single SignLink, 8 in flight": single_8,
            f"SignLinks, batches of {options.batch}": batch}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [0.0, 0.0] for name in runs}
        for number in range(options.rounds):
            for name in (list(runs) if number % 2 == 0 else list(runs)[::-1]):
                server_before, client_before = (process_cpu_seconds(process.pid),
                                                time.process_time())
                began = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - began)
                cpu[name][0] += process_cpu_seconds(process.pid) - server_before
                cpu[name][1] += time.process_time() - client_before
        channel.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"{options.links} links, {options.rounds} alternating rounds, durable audit on")
    print(f"{'':<36}{'median s':>9} {'links/s':>9}   server, client CPU per link")
    median = {name: statistics.median(times) for name, times in seconds.items()}
    for name in runs:
        per_link = [c / (options.links * options.rounds) * 1e6 for c in cpu[name]]
        print(f"{name:<36}{median[name]:>9.2f} {options.links / median[name]:>9.0f}"
              f"   {per_link[0]:>6.0f} us, {per_link[1]:>5.0f} us")
    names = list(runs)
    for base in names[:2]:
        ratio = median[base] / median[names[2]]
        per_round = [s / b for s, b in zip(seconds[base], seconds[names[2]], strict=True)]
        print(f"batch vs {base}: {ratio:.1f}x (rounds {min(per_round):.1f}x to "
              f"{max(per_round):.1f}x)")
    met = median[names[0]] / median[names[2]] >= 3
    print(f"issue 19 target (batches >= 3x single calls): {'met' if met else 'NOT met'}")
    print(f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (client and server share them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
