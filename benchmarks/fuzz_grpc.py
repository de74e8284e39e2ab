"""Fuzz a running server at the protobuf layer: >= 100,000 inputs over mTLS.

Starts `custody-server` (the embedded default: its own SoftHSM token, local mTLS, a real
audit trail) in a temporary state directory, has it sign the seeds, then sends random
bytes and wire- and message-level mutations of valid requests to every Custody and
KeyAdmin RPC as raw bytes (tests/security/grpc_fuzz.py). At the end the server must still
be running, say SERVING and sign a valid request.

Prints the status codes per RPC and in all, how the inputs were made, time and rate, the
slowest answer, and the server's memory (RSS) before and after the run and its peak; with
--baseline, the same figures for N valid SignLink calls first, the same way, as the
baseline of this run. Exits 1 on any finding: INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED,
UNAVAILABLE, a call not answered within --deadline, a dead or unhealthy server.

    python benchmarks/fuzz_grpc.py [--inputs 100000] [--seed 1] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from repo_paths import add_to_path

add_to_path("core", "client", "server", "tests/security")

import grpc  # noqa: E402
from grpc_fuzz import (  # noqa: E402
    KINDS,
    REQUEST_TYPES,
    FuzzTally,
    GrpcFuzzer,
    make_seeds,
    memory_kib,
    start_fuzz_server,
    still_serving,
)


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def _progress(tally: FuzzTally) -> None:
    print(f"  ... {tally.inputs} answered, {sum(tally.findings_by_code.values())} findings",
          flush=True)


def _baseline(channel: grpc.Channel, seeds: dict[str, list[bytes]], count: int) -> float:
    """Seconds for `count` valid SignLink calls, 8 at a time: what the server does anyway."""
    from concurrent.futures import ThreadPoolExecutor

    sign = channel.unary_unary(
        "/custody.v1.Custody/SignLink", request_serializer=lambda b: b,
        response_deserializer=lambda b: b)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: sign(seeds["SignLink"][0], timeout=60), range(count)))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs in all (100000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight (8)")
    parser.add_argument("--deadline", type=float, default=30.0,
                        help="seconds each call may take before it counts as a hang (30)")
    parser.add_argument("--baseline", type=int, default=2000, metavar="N",
                        help="valid SignLink calls timed first, for comparison (2000; 0: none)")
    options = parser.parse_args()
    findings = 0
    with tempfile.TemporaryDirectory(prefix="custody-fuzz-") as directory:
        server = start_fuzz_server(Path(directory) / "state")
        channel = server.channel()
        try:
            seeds = make_seeds(channel)
            if options.baseline:
                seconds = _baseline(channel, seeds, options.baseline)
                print(f"baseline: {options.baseline} valid SignLink in {seconds:.1f} s "
                      f"({options.baseline / seconds:,.0f}/s)")
            before = memory_kib(server.process.pid)
            print(f"fuzzing {options.inputs} inputs over {len(REQUEST_TYPES)} RPCs "
                  f"({', '.join(KINDS)}), {options.concurrency} in flight", flush=True)
            fuzzer = GrpcFuzzer(channel, seeds, seed=options.seed, deadline=options.deadline,
                                concurrency=options.concurrency)
            tally = fuzzer.run(options.inputs, progress=_progress)
            alive = server.process.poll() is None
            after = memory_kib(server.process.pid) if alive else {}
            try:
                still_serving(channel, seeds)
                healthy = "yes"
            except Exception as error:  # reported, and counted as a finding
                healthy = f"NO: {error}"
        finally:
            channel.close()
            code = server.stop()
    codes = sorted(tally.codes)
    print(f"\n{'rpc':13} " + " ".join(f"{c:>18}" for c in codes))
    for rpc, counts in sorted(tally.by_rpc.items()):
        print(f"{rpc:13} " + " ".join(f"{counts.get(c, 0):18d}" for c in codes))
    print(f"{'all':13} " + " ".join(f"{tally.codes[c]:18d}" for c in codes))
    print(f"\n{tally.inputs} inputs answered of {options.inputs} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(tally.by_kind.items()))}) in "
          f"{tally.seconds:.1f} s ({tally.inputs / tally.seconds:,.0f} inputs/s); "
          f"slowest answer {tally.slowest * 1000:.0f} ms")
    print(f"server RSS before {_mib(before['VmRSS'])}, after "
          + (f"{_mib(after['VmRSS'])}, peak {_mib(after['VmHWM'])}" if after else "DEAD")
          + f"; alive at the end: {alive}; serving at the end: {healthy}; exit code {code}")
    findings = sum(tally.findings_by_code.values())
    print(f"{findings} findings" + (f": {dict(tally.findings_by_code)}" if findings else ""))
    for finding in tally.findings[:20]:
        print(f"FINDING {finding.rpc} ({finding.kind}) {finding.code}: {finding.detail} "
              f"input={finding.data[:100]!r}")
    clean = (not findings and alive and healthy == "yes" and code == 0
             and tally.inputs == options.inputs)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
