"""Recording benchmark: `custody run` against `in-toto-run` and `sha256sum`.

Makes a tree of 10,000 files (1 to 32 KiB each, about 160 MiB), then records it as both
materials and products of one step, as whole processes, best (and median) of a few runs:

- `custody run -n bench -m tree -p tree -- true` against a real `custody-server` started
  here (embedded default: SoftHSM token, keys and local mTLS in a temp state directory);
  with `--no-server` (or if the server cannot start) only the recording, through the same
  code, in a `python -c` process;
- `in-toto-run` with the same arguments and a freshly generated ECDSA key;
- `sha256sum` over the same files, twice (materials and products: the same work) and once.

Then start-up time: `custody --version` against `in-toto-verify --version`. Targets:
custody at least 3x faster than in-toto-run, and within 2x of sha256sum.

    python benchmarks/bench_record.py [--files 10000] [--repeat 3] [--no-server]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENT_PATH = [str(ROOT / "core"), str(ROOT / "client")]


def make_tree(root: Path, *, files: int, min_size: int, max_size: int, seed: int = 4) -> int:
    rng = random.Random(seed)
    total = 0
    per_dir = 100
    for index in range(files):
        directory = root / f"d{index // per_dir:04}"
        if index % per_dir == 0:
            directory.mkdir(parents=True)
        size = rng.randint(min_size, max_size)
        (directory / f"f{index % per_dir:03}.dat").write_bytes(rng.randbytes(size))
        total += size
    return total


def console_script(bin_dir: Path) -> Path:
    """What `pip install` would put on PATH as `custody` (entry point custody_client.cli:main)."""
    script = bin_dir / "custody"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.path[:0] = {CLIENT_PATH!r}\n"
                      "from custody_client.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return script


class Server:
    """`custody-server` as a subprocess on a free port, with its own state directory."""

    def __init__(self, state_dir: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*CLIENT_PATH, str(ROOT / "server")]),
               "CUSTODY_STATE_DIR": str(state_dir)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "custody_server.main", "--listen", "127.0.0.1:0",
             "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.address = ""
        self.lines: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.lines.append(line.rstrip())
                if "listening on " in line and not self.address:
                    self.address = line.split("listening on ", 1)[1].split()[0]
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        ready.wait(timeout=120)
        if not self.address:
            self.stop()
            raise RuntimeError("custody-server did not start: " + " | ".join(self.lines[-5:]))

    def cpu_seconds(self) -> float | None:
        """The server's CPU time so far (user + system), where /proc tells it."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def timed(argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None,
          shell: bool = False, stderr_lines: list[str] | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv if not shell else argv[0], cwd=cwd, env=env, shell=shell,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
    if stderr_lines is not None:
        stderr_lines.extend(result.stderr.splitlines())
    return elapsed


def cache_hits(lines: list[str]) -> tuple[int, int] | None:
    """(products, products not read again) from `custody run -v`'s log line."""
    for line in lines:
        found = re.search(r"recorded (\d+) products \((\d+) unchanged files not read again\)",
                          line)
        if found:
            return int(found[1]), int(found[2])
    return None


def signing_key(directory: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "functionary.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def read_link(directory: Path) -> dict[str, object]:
    (path,) = directory.glob("bench.*.link")
    signed: dict[str, object] = json.loads(path.read_text())["signed"]
    path.unlink()
    return signed


def summary(times: list[float]) -> str:
    return f"{min(times):6.3f} s  (median {statistics.median(times):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--min-kib", type=float, default=1.0, help="smallest file (KiB)")
    parser.add_argument("--max-kib", type=float, default=32.0, help="largest file (KiB)")
    parser.add_argument("--no-server", action="store_true",
                        help="measure custody's recording only (no signing)")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="custody-bench-record-"))
    server: Server | None = None
    try:
        size = make_tree(work / "tree", files=options.files,
                         min_size=int(options.min_kib * 1024), max_size=int(options.max_kib * 1024))
        out = work / "out"
        out.mkdir()
        custody = console_script(work)
        key = signing_key(work)
        env = {**os.environ, "CUSTODY_STATE_DIR": str(work / "state")}
        if not options.no_server:
            try:
                server = Server(work / "state")
                env["CUSTODY_SERVER"] = server.address
            except RuntimeError as error:
                print(f"no server ({error}); measuring recording only", file=sys.stderr)
        if server is not None:
            # -v: the log line that says how many products the digest cache spared
            custody_argv = [str(custody), "run", "-v", "-n", "bench", "-m", "tree", "-p", "tree",
                            "-d", str(out), "--", "true"]
            custody_label = "custody run (signed by the server)"
        else:
            code = (f"import sys; sys.path[:0] = {CLIENT_PATH!r}\n"
                    "from custody_client.recording import iter_artifacts\n"
                    "for paths in (['tree'], ['tree']):\n"
                    "    sum(1 for _ in iter_artifacts(paths))\n")
            custody_argv = [sys.executable, "-c", code]
            custody_label = "custody recording only (no server)"
        in_toto_argv = ["in-toto-run", "-n", "bench", "-m", "tree", "-p", "tree",
                        "--signing-key", str(key), "-d", str(out), "--", "true"]
        sha_once = "find tree -type f -print0 | xargs -0 sha256sum > /dev/null"
        sha_twice = f"{sha_once}; {sha_once}"

        timed([sha_once], cwd=work, shell=True)  # warm the page cache
        results: dict[str, list[float]] = {"custody": [], "custody-rehash": [], "in-toto": [],
                                           "sha2": [], "sha1": []}
        same_artifacts = None
        hits: list[tuple[int, int] | None] = []
        cpu: dict[str, list[float]] = {"custody": [], "server": []}
        for _ in range(options.repeat):  # interleaved, so that load affects all alike
            lines: list[str] = []
            children_before = os.times()
            server_before = server.cpu_seconds() if server is not None else None
            results["custody"].append(timed(custody_argv, cwd=work, env=env, stderr_lines=lines))
            children_after = os.times()
            cpu["custody"].append(children_after.children_user + children_after.children_system
                                  - children_before.children_user - children_before.children_system)
            server_after = server.cpu_seconds() if server is not None else None
            if server_before is not None and server_after is not None:
                cpu["server"].append(server_after - server_before)
            hits.append(cache_hits(lines))
            ours = read_link(out) if server is not None else None
            if server is not None:
                results["custody-rehash"].append(timed(
                    [*custody_argv[:2], "--no-digest-cache", *custody_argv[2:]], cwd=work,
                    env=env))
                read_link(out)
            results["in-toto"].append(timed(in_toto_argv, cwd=work))
            theirs = read_link(out)
            if ours is not None:
                same_artifacts = (ours["materials"] == theirs["materials"]
                                  and ours["products"] == theirs["products"])
            results["sha2"].append(timed([sha_twice], cwd=work, shell=True))
            results["sha1"].append(timed([sha_once], cwd=work, shell=True))

        version_env = {**os.environ}
        startup = {"custody": [], "in-toto": []}  # type: dict[str, list[float]]
        for _ in range(10):
            startup["custody"].append(timed([str(custody), "--version"], cwd=work,
                                            env=version_env))
            startup["in-toto"].append(timed(["in-toto-verify", "--version"], cwd=work))

        best = {name: min(times) for name, times in results.items() if times}
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(f"recording {options.files:,} files ({size / 2**20:.1f} MiB) as materials and "
              f"products, whole processes, best of {options.repeat}, {os.cpu_count()} CPUs "
              f"(load average {load})")
        print(f"  {custody_label:38} {summary(results['custody'])}")
        print(f"    CPU of the custody process: {summary(cpu['custody'])}" + (
            f"; of the server meanwhile (health check, SignLink): {summary(cpu['server'])}"
            if cpu["server"] else ""))
        if server is not None:
            print("    digest cache: products not read again (unchanged since the materials "
                  "were read), per run: " + ", ".join(
                      f"{hit[1]:,} of {hit[0]:,}" if hit else "?" for hit in hits))
        if results["custody-rehash"]:
            print(f"  {'  the same, --no-digest-cache':38} {summary(results['custody-rehash'])}")
        print(f"  {'in-toto-run (ECDSA key)':38} {summary(results['in-toto'])}")
        print(f"  {'sha256sum, twice (the same work)':38} {summary(results['sha2'])}")
        print(f"  {'sha256sum, once':38} {summary(results['sha1'])}")
        median = {name: statistics.median(times) for name, times in results.items() if times}
        print(f"  custody vs in-toto-run: {best['in-toto'] / best['custody']:.1f}x faster "
              f"(medians: {median['in-toto'] / median['custody']:.1f}x; target: at least 3x)")
        if results["custody-rehash"]:
            print(f"  custody --no-digest-cache vs in-toto-run: "
                  f"{best['in-toto'] / best['custody-rehash']:.1f}x faster "
                  f"(medians: {median['in-toto'] / median['custody-rehash']:.1f}x)")
        print(f"  custody / sha256sum twice: {best['custody'] / best['sha2']:.2f} "
              f"(target: at most 2); / sha256sum once: {best['custody'] / best['sha1']:.2f}")
        if same_artifacts is not None:
            print(f"  same materials and products as in-toto-run: {same_artifacts}")
        custody_start, in_toto_start = min(startup["custody"]), min(startup["in-toto"])
        print(f"start-up, best of 10: custody --version {custody_start * 1000:.0f} ms, "
              f"in-toto-verify --version {in_toto_start * 1000:.0f} ms "
              f"({in_toto_start / custody_start:.1f}x)")
        return 0 if same_artifacts in (None, True) else 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
