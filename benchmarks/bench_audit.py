"""Audit benchmark: SignLink throughput with the durable audit trail on and off, one run.

Starts two servers, each in its own process with its own embedded state (SoftHSM
token, keys): one with the durable trail (one O_DSYNC append per group commit, signed
checkpoints every second), one with auditing off (a sink that drops events). The same
clients load them at 8 and 32 requests in flight (--in-flight), in alternating rounds, so that
other load on the machine hits both alike. Then the trail alone: record() from 1, 8
and 32 threads, with the average group-commit size.
Target (issue 6): durable audit keeps at least 80% of the throughput without it.

    python benchmarks/bench_audit.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from timing import alternate, measure, summary

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_server.audit_events import AuditEvent

ROOT = Path(__file__).resolve().parents[1]


class DiscardSink:
    """Auditing off: the baseline."""

    def record(self, event: AuditEvent) -> None:
        pass


def serve(mode: str, state: Path, workers: int) -> int:
    """Server side of the benchmark: the real build_server with one of the two sinks."""
    from custody_server.app import build_server
    from custody_server.audit import AuditSettings, open_audit_trail
    from custody_server.audit_events import AuditSink
    from custody_server.bootstrap import open_keystore
    from custody_server.config import Limits, ServerConfig, TlsConfig
    from custody_server.logging_setup import configure_logging

    configure_logging(level="warning")
    plaintext: dict[str, Any] = ({"insecure": True}
                                 if "insecure" in TlsConfig.__dataclass_fields__ else {})
    config = ServerConfig(listen="127.0.0.1:0", state_dir=state, tls=TlsConfig(**plaintext),
                          limits=Limits(max_workers=workers))
    opened = open_keystore(config)
    audit: AuditSink = DiscardSink()
    trail = None
    if mode == "durable":
        trail = open_audit_trail(AuditSettings(directory=state / f"audit-{os.getpid()}",
                                               checkpoint_interval_seconds=1.0),
                                 keys=opened.keys, store=opened.store,
                                 node=f"bench-{os.getpid()}")
        audit = trail
    running = build_server(config=config, keys=opened.keys, audit=audit)
    if trail is not None:  # as custody_server.main wires it
        trail.expect_entries_from(running.calls_in_progress)
    print(f"listening on 127.0.0.1:{running.port}", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    running.stop(1).wait()
    if trail is not None:
        trail.close()
    opened.store.close()
    return 0


def start(mode: str, state: Path, workers: int) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("core", "client", "server"))}
    process = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--state", str(state),
                                "--workers", str(workers)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(r"listening on (\S+)", line):
            return process, match.group(1)
    raise SystemExit(f"{mode} server did not start")


def sign_link_caller(address: str, in_flight: int) -> tuple[Callable[[int], object],
                                                             list[grpc.Channel]]:
    channels = [grpc.insecure_channel(address) for _ in range(min(in_flight, 8))]
    stubs = [custody_pb2_grpc.CustodyStub(c) for c in channels]  # type: ignore[no-untyped-call]

    def call(index: int) -> object:
        return stubs[index % len(stubs)].SignLink(pb.SignLinkRequest(
            step_name=f"build-{index}", command=["make"], key_alias="build",
            materials=[pb.Artifact(path=f"src/{i}.c", digest={"sha256": "ab" * 32})
                       for i in range(5)],
            products=[pb.Artifact(path="bin/app", digest={"sha256": "cd" * 32})],
        ))

    call(0)  # warm up
    return call, channels


def compare(addresses: dict[str, str], pids: dict[str, int], *, in_flight: int,
            seconds: float, rounds: int = 10) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Alternating rounds on both servers (timing.alternate): the totals of all rounds per
    server (with the server's CPU per call), and each round's throughput ratio durable/off."""
    callers = {mode: sign_link_caller(address, in_flight) for mode, address in addresses.items()}
    try:
        return alternate({mode: callers[mode][0] for mode in ("off", "durable")},
                         in_flight=in_flight, seconds=seconds, rounds=rounds,
                         server_pids=pids)
    finally:
        for _call, channels in callers.values():
            for channel in channels:
                channel.close()


def trail_alone(state: Path, seconds: float) -> None:
    """record() throughput of the trail itself, with a software checkpoint key (the seals
    are made in an embedded SoftHSM token, as in the server)."""
    from custody_core.software_signer import SoftwareSigner
    from custody_server.audit import AuditSettings, AuditTrail
    from custody_server.audit.anchor import TrailAnchor
    from custody_server.bootstrap import open_keystore
    from custody_server.config import ServerConfig

    store = open_keystore(ServerConfig(state_dir=state / "alone")).store

    class Batches:
        commits = 0
        entries = 0

        def audit_written(self, *, seconds: float, entries: int) -> None:
            self.commits += 1
            self.entries += entries

        def audit_failed(self, *, kind: str) -> None:
            pass

        def audit_checkpointed(self, *, at: object) -> None:
            pass

    signer = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    event = AuditEvent(action="sign-link", category="process", outcome="success",
                       details={"step": "build", "key_alias": "build", "key_version": 1,
                                "keyid": "ab" * 32, "signed_sha256": "cd" * 32,
                                "caller": "spiffe://ci/agent"})
    for threads in (1, 8, 32):
        batches = Batches()
        trail = AuditTrail(settings=AuditSettings(directory=state / f"alone-{threads}"),
                           checkpoint_signer=lambda: signer, observer=batches,
                           anchor=TrailAnchor(store, f"alone-{os.getpid()}-{threads}"))
        trail.expect_entries_from(lambda n=threads: n)  # each thread a call under way
        result = summary(measure(_recorder(trail, event), in_flight=threads,
                                  seconds=seconds))
        trail.close()
        print(f"trail.record() alone, {threads:>2} threads".ljust(40)
              + f"{result['rps']:>9.0f}/s "
              f"{result['p50_ms']:>8.2f} {result['p99_ms']:>8.2f}   "
              f"{batches.entries / max(batches.commits, 1):6.1f} entries per write")


def _recorder(trail: Any, event: AuditEvent) -> Callable[[int], object]:
    def call(_index: int) -> object:
        trail.record(event)
        return None

    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="per server and number of requests in flight, in 10 rounds")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[8, 32],
                        help="requests in flight to measure at (default: 8 32)")
    parser.add_argument("--workers", type=int, default=16,
                        help="the servers' RPC worker threads (limits.max_workers; default 16)")
    parser.add_argument("--serve", choices=("durable", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        return serve(options.serve, options.state, options.workers)
    state = Path(tempfile.mkdtemp(prefix="custody-bench-audit-"))
    print(f"{'':<40}{'throughput':>10} {'p50 ms':>8} {'p99 ms':>8}   durable vs off")
    # Each server has its own state (token, keys): two processes never share a token.
    servers = {mode: start(mode, state / mode, options.workers) for mode in ("off", "durable")}
    try:
        addresses = {mode: address for mode, (_process, address) in servers.items()}
        pids = {mode: process.pid for mode, (process, _address) in servers.items()}
        for address in addresses.values():
            grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=30)
        for in_flight in options.in_flight:
            results, ratios = compare(addresses, pids, in_flight=in_flight,
                                      seconds=options.seconds)
            off, durable = results["off"], results["durable"]
            for mode, result in (("audit off", off), ("durable audit", durable)):
                ratio = (f"{durable['rps'] / off['rps']:6.0%}   (rounds: median "
                         f"{statistics.median(ratios):.0%}, best "
                         f"{max(ratios):.0%}, worst {min(ratios):.0%})"
                         if result is durable else "     -")
                print(f"SignLink, {mode}, {in_flight:>2} in flight".ljust(40)
                      + f"{result['rps']:>9.0f}/s {result['p50_ms']:>8.2f} "
                      f"{result['p99_ms']:>8.2f}   {ratio}")
            print(f"  server CPU per SignLink: {off['server_us']:.0f} us audit off, "
                  f"{durable['server_us']:.0f} us durable")
    finally:
        for process, _address in servers.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=60)
    trail_alone(state, options.seconds)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          "(clients and servers share them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
