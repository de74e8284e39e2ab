"""Verify a two-step supply chain with N artifacts per link: custody_core vs in-toto 3.1.

    python benchmarks/bench_verify.py [--artifacts N] [--repeat R] [--core-runs K]
                                      [--no-whole-process | --only-whole-process]

build (Ed25519 functionary) turns N sources into N objects; package (ECDSA) archives
them. Every rule list is closed with DISALLOW *, MATCH rules link the steps. The core
verifies the bytes in memory; the reference (in_toto.verifylib.in_toto_verify) gets the
same bytes as files in a temp dir, as in-toto-verify would.

R rounds alternate the two (the core first in even rounds, the reference first in odd
ones), so that a noisy neighbour on a shared machine slows both alike; each round runs
the core K times (its median) and the reference once, and gives one ratio (wall time;
CPU time of the process in parentheses, steadier on a shared machine). Both sides are
warmed up first (imports, caches) outside the timing. Prints every round, the median
ratio, and the core's peak memory (tracemalloc) at 10k/50k/N artifacts.

Then the whole process, as a release gate runs it: `custody verify` (the CLI, the RPC
and a real custody-server started here with its SoftHSM token, as bench_record.py
starts it) against `in-toto-verify` on the same files, R alternating rounds, the median
ratio and the server's CPU time per verification.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "core")]

from in_toto.models.metadata import Metadata  # noqa: E402
from in_toto.verifylib import in_toto_verify  # noqa: E402

from custody_core.envelope import parse_envelope, sign_metablock  # noqa: E402
from custody_core.software_signer import SoftwareSigner  # noqa: E402
from custody_core.supply_chain import verify_supply_chain  # noqa: E402


def _digest(i: int, salt: str) -> dict[str, str]:
    return {"sha256": hashlib.sha256(f"{salt}{i}".encode()).hexdigest()}


def build_chain(n: int) -> dict[str, Any]:
    """Signed layout and link bytes, and the layout key, for n artifacts per link."""
    owner = SoftwareSigner.generate("ed25519")
    builder = SoftwareSigner.generate("ed25519")
    packager = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    sources = {f"src/module{i % 500}/file{i}.c": _digest(i, "src") for i in range(n)}
    objects = {f"out/module{i % 500}/file{i}.o": _digest(i, "obj") for i in range(n)}
    archive = {"app.tar.gz": _digest(0, "archive")}
    keys = {s.public_key.keyid: s.public_key.to_dict() for s in (builder, packager)}
    layout = {
        "_type": "layout",
        "expires": (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "readme": "benchmark",
        "keys": {keyid: {**key, "keyid": keyid} for keyid, key in keys.items()},
        "steps": [
            {
                "_type": "step",
                "name": "build",
                "pubkeys": [builder.public_key.keyid],
                "threshold": 1,
                "expected_command": ["make"],
                "expected_materials": [["ALLOW", "src/*"], ["DISALLOW", "*"]],
                "expected_products": [["CREATE", "out/*"], ["DISALLOW", "*"]],
            },
            {
                "_type": "step",
                "name": "package",
                "pubkeys": [packager.public_key.keyid],
                "threshold": 1,
                "expected_command": ["tar", "czf", "app.tar.gz", "out"],
                "expected_materials": [
                    ["MATCH", "out/*", "WITH", "PRODUCTS", "FROM", "build"],
                    ["DISALLOW", "*"],
                ],
                "expected_products": [
                    ["CREATE", "app.tar.gz"],
                    ["MATCH", "out/*", "WITH", "PRODUCTS", "FROM", "build"],
                    ["DISALLOW", "*"],
                ],
            },
        ],
        "inspect": [],
    }

    def link(
        name: str, command: list[str], materials: dict[str, Any], products: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "_type": "link",
            "name": name,
            "command": command,
            "materials": materials,
            "products": products,
            "byproducts": {"return-value": 0, "stdout": "", "stderr": ""},
            "environment": {},
        }

    build = link("build", ["make"], sources, objects)
    package = link("package", ["tar", "czf", "app.tar.gz", "out"], objects, {**objects, **archive})
    return {
        "layout": sign_metablock(layout, [owner]),
        "layout_keys": {owner.public_key.keyid: owner.public_key},
        "owner_key_dict": {**owner.public_key.to_dict(), "keyid": owner.public_key.keyid},
        "links": {
            f"build.{builder.public_key.keyid[:8]}.link": sign_metablock(build, [builder]),
            f"package.{packager.public_key.keyid[:8]}.link": sign_metablock(package, [packager]),
        },
    }


def verify_core(chain: dict[str, Any]) -> None:
    verdict = verify_supply_chain(
        layout=chain["layout"],
        layout_keys=chain["layout_keys"],
        links=chain["links"],
        now=datetime.now(UTC),
    )
    if not verdict.passed:
        raise SystemExit(f"core verdict failed: {verdict.failures}")


def write_files(chain: dict[str, Any], directory: Path) -> None:
    """The chain as in-toto-verify reads it: a layout file and a link directory."""
    (directory / "root.layout").write_bytes(chain["layout"])
    for name, data in chain["links"].items():
        (directory / name).write_bytes(data)


def verify_reference(chain: dict[str, Any], directory: Path) -> None:
    key = chain["owner_key_dict"]
    in_toto_verify(
        Metadata.load(str(directory / "root.layout")),
        {key["keyid"]: key},
        link_dir_path=str(directory),
        persist_inspection_links=False,
    )


def parse_all(chain: dict[str, Any]) -> None:
    parse_envelope(chain["layout"])
    for data in chain["links"].values():
        parse_envelope(data)


@dataclass(frozen=True)
class Timing:
    """Wall time, and the process's CPU time (user + system: page faults count), which
    other processes on a shared machine disturb less."""

    wall: float
    cpu: float


def timed(run: Callable[[], None]) -> Timing:
    start, start_cpu = time.perf_counter(), time.process_time()
    run()
    return Timing(wall=time.perf_counter() - start, cpu=time.process_time() - start_cpu)


def median_of(timings: list[Timing]) -> Timing:
    return Timing(
        wall=statistics.median(t.wall for t in timings),
        cpu=statistics.median(t.cpu for t in timings),
    )


@dataclass(frozen=True)
class Round:
    core: Timing  # median of the round's core runs
    reference: Timing

    @property
    def wall_ratio(self) -> float:
        return self.reference.wall / self.core.wall

    @property
    def cpu_ratio(self) -> float:
        return self.reference.cpu / self.core.cpu


def alternating_rounds(
    rounds: int, core_runs: int, core: Callable[[], None], reference: Callable[[], None]
) -> list[Round]:
    core()  # warm-up: imports, caches, first-touch of the files
    reference()
    results = []
    for index in range(rounds):
        if index % 2:
            reference_timing = timed(reference)
            core_timing = median_of([timed(core) for _ in range(core_runs)])
        else:
            core_timing = median_of([timed(core) for _ in range(core_runs)])
            reference_timing = timed(reference)
        results.append(Round(core=core_timing, reference=reference_timing))
        print(
            f"  round {index + 1}: core {core_timing.wall * 1000:7.1f} ms "
            f"(cpu {core_timing.cpu * 1000:6.1f}), in-toto {reference_timing.wall * 1000:7.1f} ms "
            f"(cpu {reference_timing.cpu * 1000:6.1f}): {results[-1].wall_ratio:5.1f} x "
            f"(cpu {results[-1].cpu_ratio:5.1f} x)",
            flush=True,
        )
    return results


def peak_memory(chain: dict[str, Any]) -> int:
    tracemalloc.start()
    try:
        verify_core(chain)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def whole_process(chain: dict[str, Any], rounds: int) -> None:
    """`custody verify` (CLI, RPC to a real custody-server, verdict printed) against
    `in-toto-verify` on the same files, as whole processes, alternating."""
    import os

    import bench_record as processes
    from cryptography.hazmat.primitives import serialization

    with tempfile.TemporaryDirectory(prefix="custody-bench-verify-") as tmp:
        work = Path(tmp)
        write_files(chain, work)
        owner = chain["layout_keys"][next(iter(chain["layout_keys"]))]
        (work / "owner.pub").write_bytes(owner.crypto_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        custody = processes.console_script(work)
        try:
            server = processes.Server(work / "state")
        except RuntimeError as error:
            print(f"whole process: no server ({error}); skipped")
            return
        try:
            env = {**os.environ, "CUSTODY_STATE_DIR": str(work / "state"),
                   "CUSTODY_SERVER": server.address}
            ours = [str(custody), "verify", "-l", "root.layout", "--layout-keys", "owner.pub"]
            reference = Path(sys.executable).parent / "in-toto-verify"  # this venv's
            theirs = [str(reference), "-l", "root.layout", "--verification-keys", "owner.pub"]
            processes.timed(ours, cwd=work, env=env)  # warm-up: page cache, server imports
            processes.timed(theirs, cwd=work)
            times: dict[str, list[float]] = {"custody": [], "in-toto": [], "server": []}
            for index in range(rounds):  # alternating, as the in-process rounds
                for name in ("custody", "in-toto")[:: 1 if index % 2 == 0 else -1]:
                    if name == "in-toto":
                        times[name].append(processes.timed(theirs, cwd=work))
                        continue
                    before = server.cpu_seconds()
                    times[name].append(processes.timed(ours, cwd=work, env=env))
                    after = server.cpu_seconds()
                    if before is not None and after is not None:
                        times["server"].append(after - before)
                print(f"  round {index + 1}: custody verify {times['custody'][-1]:6.2f} s, "
                      f"in-toto-verify {times['in-toto'][-1]:6.2f} s: "
                      f"{times['in-toto'][-1] / times['custody'][-1]:4.1f} x", flush=True)
        finally:
            server.stop()
    ratios = [t / c for t, c in zip(times["in-toto"], times["custody"], strict=True)]
    server_cpu = (f"; the server's CPU {statistics.median(times['server']):.2f} s"
                  if times["server"] else "")
    print(f"whole process, median of {rounds}: custody verify "
          f"{statistics.median(times['custody']):.2f} s (CLI, RPC, server{server_cpu}), "
          f"in-toto-verify {statistics.median(times['in-toto']):.2f} s: "
          f"{statistics.median(ratios):.1f} x (range {min(ratios):.1f}-{max(ratios):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--core-runs", type=int, default=3, help="core runs per round")
    whole = parser.add_mutually_exclusive_group()
    whole.add_argument("--no-whole-process", dest="whole_process", action="store_false",
                       help="skip `custody verify` against `in-toto-verify` as processes")
    whole.add_argument("--only-whole-process", action="store_true", help="only that")
    args = parser.parse_args()
    n = args.artifacts
    if args.only_whole_process:
        whole_process(build_chain(n), args.repeat)
        return

    chain = build_chain(n)
    size = sum(len(data) for data in chain["links"].values())
    print(f"two-step chain, {n:,} artifacts per link list, {size / 1e6:.1f} MB of links")
    with tempfile.TemporaryDirectory() as tmp:
        write_files(chain, Path(tmp))
        rounds = alternating_rounds(
            args.repeat,
            args.core_runs,
            core=lambda: verify_core(chain),
            reference=lambda: verify_reference(chain, Path(tmp)),
        )
    envelopes = median_of([timed(lambda: parse_all(chain)) for _ in range(args.core_runs)])
    core = median_of([r.core for r in rounds])
    reference = median_of([r.reference for r in rounds])
    print(f"custody_core      {core.wall * 1000:9.1f} ms  (cpu {core.cpu * 1000:.1f} ms)")
    print(
        "  of which parsing the envelopes (JSON + canonical bytes) "
        f"{envelopes.wall * 1000:.1f} ms  (cpu {envelopes.cpu * 1000:.1f} ms)"
    )
    print(f"in-toto 3.1       {reference.wall * 1000:9.1f} ms  (cpu {reference.cpu * 1000:.1f} ms)")
    walls = [r.wall_ratio for r in rounds]
    cpus = [r.cpu_ratio for r in rounds]
    print(
        f"speed-up, median of {len(rounds)} rounds {statistics.median(walls):5.1f} x "
        f"(range {min(walls):.1f}-{max(walls):.1f}); cpu {statistics.median(cpus):.1f} x "
        f"(range {min(cpus):.1f}-{max(cpus):.1f})"
    )

    print("core peak memory (tracemalloc, excluding the input bytes):")
    for count in sorted({10_000, 50_000, n}):
        sample = chain if count == n else build_chain(count)
        peak = peak_memory(sample)
        print(f"  {count:>8,} artifacts  {peak / 1e6:8.1f} MB  ({peak / count:6.0f} B/artifact)")
    if args.whole_process:
        whole_process(chain, args.repeat)


if __name__ == "__main__":
    main()
