"""Load test: 16 concurrent mTLS clients for 60 s mixing every RPC against a server process.

Starts `custody-server` (embedded default: SoftHSM token, local CA, mTLS) in a fresh state
directory with a load policy, then runs:
  - 14 clients as the local admin identity, each call drawn from a fixed mix: SignLink
    (Metablock, DSSE, Statement), SignLayout, Verify (a real chain that passes), ListKeys,
    GetPublicKey, and now and then CreateKey, RotateKey + RetireKey on a scratch alias;
  - 1 client with a rate limit of 5/s (RESOURCE_EXHAUSTED with retry-after-ms expected);
  - 1 client whose identity may only Verify and tries SignLink (PERMISSION_DENIED expected).
Every response is checked against what its caller and RPC allow; anything else is an
unexpected error. Samples the server's RSS every second. At the end: SIGTERM (exit 0
expected) and every returned signature is looked up in the audit log by its SHA-256.

Prints per RPC: calls, p50/p99 latency; totals, throughput, RSS after warm-up, at the end
and the maximum. Exits 1 on any unexpected error, a missing audit entry, or RSS that grew
more than 15% after warm-up.

    python benchmarks/load_test.py [--seconds 60] [--clients 16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from repo_paths import REPO, add_to_path

add_to_path("core", "client", "server", "tests")

import grpc  # noqa: E402
from google.protobuf import duration_pb2  # noqa: E402
from policy_support import UNLIMITED, grant, grant_all, policy  # noqa: E402

from custody_api.v1 import custody_pb2 as pb  # noqa: E402
from custody_api.v1 import custody_pb2_grpc  # noqa: E402
from custody_server.tls_bootstrap import (  # noqa: E402
    LOCAL_CLIENT_IDENTITY,
    CertificateRequest,
    LocalTls,
    issue_certificate,
)

LIMITED = "spiffe://load.test/limited"
INTRUDER = "spiffe://load.test/verify-only"
OK = grpc.StatusCode.OK
POLICY = policy(
    grant_all(LOCAL_CLIENT_IDENTITY),
    grant([LIMITED], ["SignLink"], link_keys=["build"], steps=["*"]),
    grant([INTRUDER], ["Verify"]),
    rate=(50.0, 100), rates={LOCAL_CLIENT_IDENTITY: UNLIMITED, LIMITED: (5.0, 5)},
)
LAYOUT = {
    "_type": "layout", "expires": "2030-01-01T00:00:00Z", "readme": "load test", "keys": {},
    "steps": [{"_type": "step", "name": "build", "threshold": 1, "pubkeys": ["alias:build"],
               "expected_command": ["make"], "expected_materials": [["DISALLOW", "*"]],
               "expected_products": [["CREATE", "bin/app"], ["DISALLOW", "*"]]}],
    "inspect": [],
}


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    expected_refusals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unexpected: list[str] = field(default_factory=list)
    signed_sha256: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, seconds: float, code: grpc.StatusCode, expected: set[Any],
            detail: str, sha256: str = "") -> None:
        with self.lock:
            if code not in expected:
                self.unexpected.append(f"{name}: {code.name}: {detail[:200]}")
            elif code == OK:
                self.latencies[name].append(seconds)
                if sha256:
                    self.signed_sha256.append(sha256)
            else:
                self.expected_refusals[f"{name} {code.name}"] += 1


class Server:
    def __init__(self, state: Path) -> None:
        config = state.parent / "custody.toml"
        policy = state.parent / "load-policy.toml"
        policy.write_text(POLICY)
        config.write_text(f'[policy]\nfile = "{policy}"\n')
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        env["PYTHONPATH"] = os.pathsep.join(str(REPO / p) for p in ("core", "client", "server"))
        self.log = state.parent / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "custody_server.main", "--config", str(config),
                 "--state-dir", str(state), "--listen", "127.0.0.1:0"],
                stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(rb"listening on [^:\s]+:(\d+)", self.log.read_bytes())
            if found:
                self.address = f"127.0.0.1:{int(found.group(1))}"
                break
            if self.process.poll() is not None:
                raise SystemExit(f"server exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        else:
            raise SystemExit("server did not start")
        self.tls = LocalTls(state / "tls")

    def credentials(self, identity: str | None = None) -> grpc.ChannelCredentials:
        ca = self.tls.ca_cert.read_bytes()
        if identity is None:
            cert, key = self.tls.client_cert.read_bytes(), self.tls.client_key.read_bytes()
        else:
            issued = issue_certificate(self.tls.authority(), CertificateRequest(
                common_name="load", uri_names=(identity,)), now=datetime.now(UTC))
            cert, key = issued.cert_pem, issued.key_pem
        return grpc.ssl_channel_credentials(ca, key, cert)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -9


def _call(results: Results, name: str, expected: set[Any], call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        response = call()
    except grpc.RpcError as error:
        results.add(name, time.perf_counter() - started, error.code(), expected,
                    str(error.details()))
        return None
    results.add(name, time.perf_counter() - started, OK, expected, "",
                getattr(response, "sha256", ""))
    return response


def _prepare_chain(custody: Any, key_admin: Any) -> pb.VerifyRequest:
    """A layout signed by `owner` and a link by `build` that verify: for Verify calls."""
    layout = custody.SignLayout(pb.SignLayoutRequest(layout=json.dumps(LAYOUT).encode(),
                                                     key_alias="owner"), timeout=30)
    link = custody.SignLink(pb.SignLinkRequest(
        step_name="build", command=["make"],
        products=[pb.Artifact(path="bin/app", digest={"sha256": "ab" * 32})]), timeout=30)
    request = pb.VerifyRequest(layout=layout.signed,
                               layout_keys=[pb.TrustedKey(alias="owner")],
                               links=[pb.MetadataFile(path=link.file_name, content=link.signed)])
    if not custody.Verify(request, timeout=30).passed:
        raise SystemExit("the prepared chain does not verify")
    key_admin.CreateKey(pb.CreateKeyRequest(alias="load-rotating"), timeout=30)
    return request


def admin_client(index: int, channel: grpc.Channel, stop: threading.Event, results: Results,
                 verify_request: pb.VerifyRequest) -> None:
    custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
    admin = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
    rng = random.Random(index)
    layout = json.dumps(LAYOUT).encode()
    envelopes = (pb.ENVELOPE_METABLOCK, pb.ENVELOPE_DSSE, pb.ENVELOPE_STATEMENT)
    count = created = 0
    next_rotation = 0.0
    while not stop.is_set():
        count += 1
        roll = rng.random()
        if roll < 0.45:
            envelope = envelopes[count % 3]
            request = pb.SignLinkRequest(
                step_name=f"step-{index}-{count % 50}", command=["make", "all"],
                materials=[pb.Artifact(path=f"src/{i}.c", digest={"sha256": "cd" * 32})
                           for i in range(20)],
                products=[pb.Artifact(path="bin/app", digest={"sha256": "ab" * 32})],
                envelope=envelope)
            _call(results, f"SignLink/{pb.Envelope.Name(envelope)[9:].lower()}", {OK},
                  partial(custody.SignLink, request, timeout=30))
        elif roll < 0.65:
            response = _call(results, "Verify", {OK},
                             lambda: custody.Verify(verify_request, timeout=30))
            if response is not None and not response.passed:
                results.add("Verify", 0, grpc.StatusCode.DATA_LOSS, {OK}, "verdict failed")
        elif roll < 0.75:
            _call(results, "SignLayout", {OK}, lambda: custody.SignLayout(
                pb.SignLayoutRequest(layout=layout, key_alias="owner"), timeout=30))
        elif roll < 0.86:
            _call(results, "ListKeys", {OK}, lambda: admin.ListKeys(pb.ListKeysRequest(),
                                                                     timeout=30))
        elif roll < 0.97:
            _call(results, "GetPublicKey", {OK}, lambda: admin.GetPublicKey(
                pb.GetPublicKeyRequest(alias=rng.choice(["build", "owner"])), timeout=30))
        elif roll < 0.985 and created < 2:  # few: the key list must not grow all the time
            created += 1
            create = pb.CreateKeyRequest(alias=f"load-{index}-{count}")
            _call(results, "CreateKey", {OK},
                  partial(admin.CreateKey, create, timeout=30))
        elif index == 0 and time.monotonic() > next_rotation:  # one client, every 5 s
            next_rotation = time.monotonic() + 5.0
            rotated = _call(results, "RotateKey", {OK}, lambda: admin.RotateKey(
                pb.RotateKeyRequest(alias="load-rotating",
                                    overlap=duration_pb2.Duration(seconds=3600)), timeout=30))
            if rotated is not None:
                retire = pb.RetireKeyRequest(alias="load-rotating",
                                             version=rotated.previous_version)
                _call(results, "RetireKey", {OK},
                      partial(admin.RetireKey, retire, timeout=30))


def limited_client(channel: grpc.Channel, stop: threading.Event, results: Results) -> None:
    custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
    while not stop.is_set():
        _call(results, "SignLink/rate-limited", {OK, grpc.StatusCode.RESOURCE_EXHAUSTED},
              lambda: custody.SignLink(pb.SignLinkRequest(step_name="limited"), timeout=30))
        time.sleep(0.02)


def intruder_client(channel: grpc.Channel, stop: threading.Event, results: Results,
                    verify_request: pb.VerifyRequest) -> None:
    custody = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
    while not stop.is_set():
        _call(results, "SignLink/not-granted", {grpc.StatusCode.PERMISSION_DENIED},
              lambda: custody.SignLink(pb.SignLinkRequest(step_name="build"), timeout=30))
        _call(results, "Verify/verify-only", {OK},
              lambda: custody.Verify(verify_request, timeout=30))
        time.sleep(0.05)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16, help="at least 3")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds before the RSS baseline is taken")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="custody-load-") as tmp:
        server = Server(Path(tmp) / "state")
        results = Results()
        stop = threading.Event()
        admin_channels = [grpc.secure_channel(server.address, server.credentials())
                          for _ in range(options.clients - 2)]
        verify_request = _prepare_chain(
            custody_pb2_grpc.CustodyStub(admin_channels[0]),  # type: ignore[no-untyped-call]
            custody_pb2_grpc.KeyAdminStub(admin_channels[0]))  # type: ignore[no-untyped-call]
        threads = [threading.Thread(target=admin_client, args=(i, ch, stop, results,
                                                               verify_request))
                   for i, ch in enumerate(admin_channels)]
        threads.append(threading.Thread(target=limited_client, args=(grpc.secure_channel(
            server.address, server.credentials(LIMITED)), stop, results)))
        threads.append(threading.Thread(target=intruder_client, args=(grpc.secure_channel(
            server.address, server.credentials(INTRUDER)), stop, results, verify_request)))
        rss: list[tuple[float, int]] = []
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while time.monotonic() - started < options.seconds:
            time.sleep(1.0)
            rss.append((time.monotonic() - started, server.rss_kib()))
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        cpu = server.cpu_seconds()
        exit_code = server.terminate()
        audit_hashes = set()
        for path in (Path(tmp) / "state" / "audit").rglob("*"):
            if path.is_file():
                audit_hashes.update(re.findall(r"[0-9a-f]{64}", path.read_text(errors="replace")))
        print(f"server CPU {cpu:.1f} s in {elapsed:.1f} s ({cpu / elapsed:.0%} of one core; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
        return report(options, results, rss, elapsed, exit_code, audit_hashes)


def report(options: argparse.Namespace, results: Results, rss: list[tuple[float, int]],
           elapsed: float, exit_code: int, audit_hashes: set[str]) -> int:
    print(f"{options.clients} clients, {elapsed:.1f} s\n")
    print(f"{'rpc':28} {'ok calls':>9} {'p50 ms':>8} {'p99 ms':>8}")
    total = 0
    for name in sorted(results.latencies):
        values = results.latencies[name]
        total += len(values)
        print(f"{name:28} {len(values):9d} {percentile(values, 0.5) * 1000:8.2f} "
              f"{percentile(values, 0.99) * 1000:8.2f}")
    every = [v for values in results.latencies.values() for v in values]
    print(f"{'all':28} {total:9d} {statistics.median(every) * 1000:8.2f} "
          f"{percentile(every, 0.99) * 1000:8.2f}")
    refused = sum(results.expected_refusals.values())
    print(f"\nthroughput {total / elapsed:,.0f} ok calls/s; expected refusals {refused}: "
          + ", ".join(f"{k} {v}" for k, v in sorted(results.expected_refusals.items())))
    baseline = next((kib for t, kib in rss if t >= options.warmup), rss[0][1])
    end, peak = rss[-1][1], max(kib for _, kib in rss)
    growth = (end - baseline) / baseline
    print(f"server RSS: {baseline / 1024:.1f} MiB after {options.warmup:.0f} s warm-up, "
          f"{end / 1024:.1f} MiB at the end ({growth:+.1%}), peak {peak / 1024:.1f} MiB")
    missing = [sha for sha in results.signed_sha256 if sha not in audit_hashes]
    print(f"signatures returned {len(results.signed_sha256)}, missing from the audit log "
          f"{len(missing)}; server exit code after SIGTERM {exit_code}")
    print(f"unexpected errors: {len(results.unexpected)}")
    for line in results.unexpected[:20]:
        print("  " + line)
    failed = results.unexpected or missing or exit_code != 0 or growth > 0.15
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
