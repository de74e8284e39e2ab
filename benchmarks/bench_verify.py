"""Verify a two-step supply chain with N artifacts per link: custody_core vs in-toto 3.1.

    python benchmarks/bench_verify.py [--artifacts N] [--repeat R]

build (Ed25519 functionary) turns N sources into N objects; package (ECDSA) archives
them. Every rule list is closed with DISALLOW *, MATCH rules link the steps. The core
verifies the bytes in memory; the reference (in_toto.verifylib.in_toto_verify) gets the
same bytes as files in a temp dir, as in-toto-verify would. Prints both times, the
ratio (wall time; CPU time of the process in parentheses, steadier on a shared machine),
and the core's peak memory (tracemalloc) at 10k/50k/N artifacts.
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

from custody_core.envelope import parse_envelope, sign_metablock  # noqa: E402
from custody_core.software_signer import SoftwareSigner  # noqa: E402
from custody_core.verify import verify_supply_chain  # noqa: E402


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
    from in_toto.models.metadata import Metadata
    from in_toto.verifylib import in_toto_verify

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


def best_of(repeat: int, run: Callable[[], None]) -> Timing:
    walls, cpus = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    pick = min if repeat < 3 else statistics.median
    return Timing(wall=pick(walls), cpu=pick(cpus))


def peak_memory(chain: dict[str, Any]) -> int:
    tracemalloc.start()
    try:
        verify_core(chain)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.artifacts

    chain = build_chain(n)
    size = sum(len(data) for data in chain["links"].values())
    print(f"two-step chain, {n:,} artifacts per link list, {size / 1e6:.1f} MB of links")
    core = best_of(args.repeat, lambda: verify_core(chain))
    envelopes = best_of(args.repeat, lambda: parse_all(chain))
    with tempfile.TemporaryDirectory() as tmp:
        write_files(chain, Path(tmp))
        reference = best_of(1, lambda: verify_reference(chain, Path(tmp)))
    print(f"custody_core      {core.wall * 1000:9.1f} ms  (cpu {core.cpu * 1000:.1f} ms)")
    print(
        "  of which parsing the envelopes (JSON + canonical bytes) "
        f"{envelopes.wall * 1000:.1f} ms  (cpu {envelopes.cpu * 1000:.1f} ms)"
    )
    print(f"in-toto 3.1       {reference.wall * 1000:9.1f} ms  (cpu {reference.cpu * 1000:.1f} ms)")
    print(
        f"speed-up          {reference.wall / core.wall:9.1f} x  "
        f"(cpu {reference.cpu / core.cpu:.1f} x)"
    )

    print("core peak memory (tracemalloc, excluding the input bytes):")
    for count in sorted({10_000, 50_000, n}):
        sample = chain if count == n else build_chain(count)
        peak = peak_memory(sample)
        print(f"  {count:>8,} artifacts  {peak / 1e6:8.1f} MB  ({peak / count:6.0f} B/artifact)")


if __name__ == "__main__":
    main()
