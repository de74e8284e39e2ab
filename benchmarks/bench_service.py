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

    python benchmarks/bench_service.py [--seconds 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from timing import alternate, measure, summary

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_client.local_tls import find_local_tls


def start_server(state: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "custody_server.main", "--state-dir", str(state),
         "--listen", "127.0.0.1:0", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if match := re.search(r"listening on (\S+)", line):
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, match.group(1)
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
    options = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="custody-bench-"))
    process, address = start_server(state)
    load_before = os.getloadavg()[0]
    verdicts: list[str] = []
    cpu_lines: list[str] = []
    try:
        tls = find_local_tls({"CUSTODY_STATE_DIR": str(state)})
        if tls is None:
            raise SystemExit("the server made no local TLS files")
        credentials = grpc.ssl_channel_credentials(
            tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes())
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
