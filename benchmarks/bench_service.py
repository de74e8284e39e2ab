"""Service benchmark: SignLink against an empty RPC and raw SoftHSM signing, in one run.

Starts `custody-server` as a separate process on a fresh embedded state
directory (mTLS with its local certificates, durable audit on), then measures, for
1 and 8 requests in flight:
  - the empty RPC: grpc.health.v1.Health/Check on the same server (the baseline),
  - SignLink with an ECDSA P-256 key (Metablock),
and raw SoftHSM ECDSA P-256 signing in this process on a separate token.
The two RPCs run in alternating rounds (--rounds), so that other load on a shared
machine hits both alike. Prints throughput and p50/p99 latency over all rounds, the
ratio against the baseline, and the best and worst ratio of single rounds; then the
CPU time per call of the server process and of this client (from /proc and
process_time), which says where a ratio comes from on a machine the two share.
Targets (issue 2): SignLink >= 70% of the empty RPC's throughput, p99 < 5 ms at 8 in flight.

Then workers (issue 19): one server per count in --workers (default 1,2), each
`custody-server --workers N` (N processes on one port, SO_REUSEPORT), all started first
and measured in alternating rounds: SignLink throughput and p99 with --in-flight calls
(default 8 per worker of the largest count), each call thread on a connection of its own
so that the kernel spreads them over the workers, from --client-processes processes
(default: one per 4 workers; the client needs cores too). Prints each count's ratio to
workers=1 and the server's CPU per call (supervisor and workers). Targets: workers=2 >=
1.3x workers=1 on a 2-core machine; workers=8 >= 5x workers=1 on 16 cores.

    python benchmarks/bench_service.py [--seconds 5] [--rounds 5]
    python benchmarks/bench_service.py --no-baseline --workers 1,2,4,8   # a larger machine
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from timing import Timing, alternate, measure, process_cpu_seconds, summary

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_client.local_tls import find_local_tls


def local_credentials(state: Path) -> grpc.ChannelCredentials:
    """mTLS with the local CA and client certificate the server made in `state`."""
    tls = find_local_tls({"CUSTODY_STATE_DIR": str(state)})
    if tls is None:
        raise SystemExit("the server made no local TLS files")
    return grpc.ssl_channel_credentials(tls.ca.read_bytes(), tls.key.read_bytes(),
                                        tls.cert.read_bytes())


def start_server(state: Path, *, workers: int | None = None
                 ) -> tuple[subprocess.Popen[str], str]:
    process, address, _ = start_workers(state, workers=workers)
    return process, address


def start_workers(state: Path, *, workers: int | None
                  ) -> tuple[subprocess.Popen[str], str, list[int]]:
    """custody-server on `state` (--workers N if given); its address and the pids of its
    processes (the supervisor's and its workers')."""
    extra = ["--workers", str(workers)] if workers else []
    process = subprocess.Popen(
        [sys.executable, "-m", "custody_server.main", "--state-dir", str(state),
         "--listen", "127.0.0.1:0", "--log-level", "warning", *extra],
        stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    pattern = (r"listening on (\S+) with \d+ workers \(pids ([\d, ]+)\)" if workers and workers > 1
               else r"listening on (\S+)")
    for line in process.stderr:
        if match := re.search(pattern, line):
            threading.Thread(target=process.stderr.read, daemon=True).start()
            pids = [process.pid] + ([int(p) for p in match.group(2).split(", ")]
                                    if match.lastindex == 2 else [])
            return process, match.group(1), pids
    raise SystemExit("server did not start")


def raw_softhsm(seconds: float, in_flight: int) -> dict[str, float]:
    from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
    from custody_server.softhsm import init_token

    token = init_token(Path(tempfile.mkdtemp(prefix="custody-bench-hsm-")), label="bench")
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    store = Pkcs11KeyStore.open(module_path=token.module_path, token_label="bench",
                                pin=Path(token.pin_file).read_text().strip())
    store.generate_key(label="bench", algorithm=KeyAlgorithm.ECDSA_P256)
    payload = b"x" * 600
    return summary(measure(lambda _: store.sign("bench", payload), in_flight=in_flight,
                           seconds=seconds))


def row(name: str, result: dict[str, float], baseline: dict[str, float] | None) -> str:
    ratio = f"{result['rps'] / baseline['rps']:6.0%}" if baseline else "   -  "
    return (f"{name:<34}{result['rps']:>10.0f}/s {result['p50_ms']:>8.2f} "
            f"{result['p99_ms']:>8.2f}   {ratio}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="seconds per RPC and number in flight, over all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", default="1,2",
                        help="worker counts to compare, e.g. 1,2,4,8 ('' : none)")
    parser.add_argument("--in-flight", type=int, help="SignLink calls in flight for the "
                        "worker comparison (default: 8 per worker of the largest count)")
    parser.add_argument("--client-processes", type=int,
                        help="load processes (default: one per 4 workers of the largest "
                             "count, at least 1)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the empty-RPC and raw-SoftHSM comparison")
    options = parser.parse_args()
    if not options.no_baseline:
        baseline(options)
    counts = [int(n) for n in options.workers.split(",") if n]
    if counts:
        compare_workers(options, counts)
    return 0


def baseline(options: argparse.Namespace) -> None:
    state = Path(tempfile.mkdtemp(prefix="custody-bench-"))
    process, address = start_server(state)
    load_before = os.getloadavg()[0]
    verdicts: list[str] = []
    cpu_lines: list[str] = []
    try:
        credentials = local_credentials(state)
        channel = grpc.secure_channel(address, credentials)
        grpc.channel_ready_future(channel).result(timeout=30)
        health = health_pb2_grpc.HealthStub(channel)
        custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
        link = pb.SignLinkRequest(
            step_name="build", command=["make"], key_alias="build",
            materials=[pb.Artifact(path=f"src/{i}.c", digest={"sha256": "ab" * 32})
                       for i in range(5)],
            products=[pb.Artifact(path="bin/app", digest={"sha256": "cd" * 32})],
        )
        empty = health_pb2.HealthCheckRequest()
        custody.SignLink(link)  # warm up: key handle cache, connections
        print(f"{'':<34}{'throughput':>12} {'p50 ms':>8} {'p99 ms':>8}   vs empty RPC"
              "   (rounds: best, worst)")
        for in_flight in (1, 8):
            results, ratios = alternate(
                {"empty": lambda _: health.Check(empty), "sign": lambda _: custody.SignLink(link)},
                in_flight=in_flight, seconds=options.seconds, rounds=options.rounds,
                server_pids={"empty": process.pid, "sign": process.pid})
            base, sign = results["empty"], results["sign"]
            cpu_lines.append(
                f"CPU per call at {in_flight} in flight: server {base['server_us']:.0f} us "
                f"(empty RPC) vs {sign['server_us']:.0f} us (SignLink); this client "
                f"{base['client_us']:.0f} vs {sign['client_us']:.0f} us")
            print(row(f"empty RPC (health), {in_flight} in flight", base, None))
            print(row(f"SignLink P-256, {in_flight} in flight", sign, base)
                  + f"   ({max(ratios):.0%}, {min(ratios):.0%})")
            if in_flight == 1:
                print(row("raw SoftHSM P-256 sign, 1 thread", raw_softhsm(5.0, 1), None))
            else:
                met = sign["rps"] >= 0.7 * base["rps"] and sign["p99_ms"] < 5.0
                verdicts.append(f"issue 2 targets at {in_flight} in flight (>= 70% of the "
                                f"empty RPC, p99 < 5 ms): {'met' if met else 'NOT met'}")
        channel.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    for line in cpu_lines + verdicts:
        print(line)
    print(f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (client and server share them)")


LINK = pb.SignLinkRequest(
    step_name="build", command=["make"], key_alias="build",
    materials=[pb.Artifact(path=f"src/{i}.c", digest={"sha256": "ab" * 32}) for i in range(5)],
    products=[pb.Artifact(path="bin/app", digest={"sha256": "cd" * 32})])


def _load(address: str, state: str, threads: int, seconds: float) -> Timing:
    """`threads` SignLink loops, each on a connection of its own, for `seconds` (in a
    client process of its own when there are several)."""
    tls = find_local_tls({"CUSTODY_STATE_DIR": state})
    assert tls is not None
    credentials = grpc.ssl_channel_credentials(
        tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes())
    channels = [grpc.secure_channel(address, credentials,
                                    options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(threads)]
    stubs = [custody_pb2_grpc.CustodyStub(c) for c in channels]  # type: ignore[no-untyped-call]
    for stub in stubs:
        stub.SignLink(LINK)  # connected before the clock starts
    try:
        return measure(lambda n: stubs[n // 100_000_000].SignLink(LINK), in_flight=threads,
                       seconds=seconds)
    finally:
        for channel in channels:
            channel.close()


def compare_workers(options: argparse.Namespace, counts: list[int]) -> None:
    """SignLink with each worker count, alternating rounds; ratios to the first count."""
    in_flight = options.in_flight or 8 * max(counts)
    processes = options.client_processes or max(1, max(counts) // 4)
    servers = {}
    try:
        for count in counts:  # one after another: SoftHSM, one token each anyway
            state = Path(tempfile.mkdtemp(prefix=f"custody-bench-w{count}-"))
            servers[count] = (state, *start_workers(state, workers=count))
        load_before = os.getloadavg()[0]
        totals: dict[int, Timing] = {count: ([], 0.0) for count in counts}
        cpu = dict.fromkeys(counts, 0.0)
        rounds: dict[int, list[float]] = {count: [] for count in counts}
        pool = (multiprocessing.get_context("spawn").Pool(processes)
                if processes > 1 else None)
        share = [in_flight // processes + (i < in_flight % processes)
                 for i in range(processes)]
        for number in range(options.rounds):
            for count in (counts if number % 2 == 0 else counts[::-1]):
                state, _process, address, pids = servers[count]
                before = sum(process_cpu_seconds(pid) for pid in pids)
                seconds = options.seconds / options.rounds
                jobs = [(address, str(state), threads, seconds) for threads in share]
                parts = pool.starmap(_load, jobs) if pool else [_load(*jobs[0])]
                cpu[count] += sum(process_cpu_seconds(pid) for pid in pids) - before
                latencies = [x for part in parts for x in part[0]]
                elapsed = max(part[1] for part in parts)
                rounds[count].append(len(latencies) / elapsed)
                totals[count] = (totals[count][0] + latencies, totals[count][1] + elapsed)
        if pool:
            pool.close()
    finally:
        for _state, process, _address, _pids in servers.values():
            process.terminate()
            process.wait(timeout=60)
    print(f"\nSignLink P-256 by workers: {in_flight} in flight on as many connections, "
          f"{processes} client process(es), {options.rounds} alternating rounds")
    print(f"{'':<34}{'throughput':>12} {'p50 ms':>8} {'p99 ms':>8}   vs workers={counts[0]}"
          "   (rounds: best, worst)   server CPU per call")
    first = summary(totals[counts[0]])
    for count in counts:
        result = summary(totals[count])
        ratios = [r / b for r, b in zip(rounds[count], rounds[counts[0]], strict=True)]
        calls = max(1, len(totals[count][0]))
        print(row(f"workers={count}", result, first) + f"   ({max(ratios):.2f}x, "
              f"{min(ratios):.2f}x)   {cpu[count] / calls * 1e6:.0f} us")
        target = {2: 1.3, 8: 5.0}.get(count)
        if target and counts[0] == 1:
            ratio = result["rps"] / first["rps"]
            print(f"  issue 19 target workers={count} >= {target}x workers=1: "
                  f"{ratio:.2f}x, {'met' if ratio >= target else 'NOT met'}")
    print(f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (client and server share them)")


if __name__ == "__main__":
    sys.exit(main())
