"""Exclude patterns: Custody's ExcludeFilter against pathspec's GitIgnoreSpec alone.

    python benchmarks/bench_excludes.py [--paths 100000] [--rounds 7]

`custody run` puts every file and directory it walks to the exclude patterns, twice
(materials and products). ExcludeFilter compiles them with pathspec, as in-toto does, and
answers from one combined regex when no pattern starts with "!". This prints, per pattern
set, the time to check N paths shaped like bench_record's tree (dNNNN/fNNN.dat) both ways,
in alternating rounds (best and median), CPU time of this process, and checks that both
give the same verdicts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pathspec import GitIgnoreSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "core"), str(ROOT / "client")]

from custody_client.excludes import DEFAULT_EXCLUDE_PATTERNS, ExcludeFilter  # noqa: E402

PATTERN_SETS = {
    "in-toto's defaults (4)": list(DEFAULT_EXCLUDE_PATTERNS),
    "9 patterns": [*DEFAULT_EXCLUDE_PATTERNS, "build/", "*.o", "node_modules/", "dist/",
                   "*.tmp"],
    "4 with a '!'": ["*.link*", ".git", "*.pyc", "!keep.pyc"],
}


def check_all(excludes: Callable[[str], bool], paths: list[str]) -> float:
    began = time.process_time()
    for path in paths:
        excludes(path)
    return time.process_time() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    paths = [f"d{i // 100:04}/f{i % 100:03}.dat" for i in range(options.paths)]
    paths += [f"d{i:04}" for i in range(options.paths // 100)]  # the directories, too
    print(f"checking {len(paths):,} paths, CPU time of this process, {options.rounds} rounds")
    for name, patterns in PATTERN_SETS.items():
        ours = ExcludeFilter(patterns).excludes
        spec = GitIgnoreSpec.from_lines(patterns).match_file
        if [ours(p) for p in paths[:2000]] != [spec(p) for p in paths[:2000]]:
            print(f"{name}: different verdicts", file=sys.stderr)
            return 1
        times: dict[str, list[float]] = {"ExcludeFilter": [], "GitIgnoreSpec": []}
        for round_number in range(options.rounds):
            order: list[tuple[str, Callable[[str], bool]]] = [
                ("ExcludeFilter", ours), ("GitIgnoreSpec", spec)]
            for label, call in order if round_number % 2 == 0 else order[::-1]:
                times[label].append(check_all(call, paths))
        line = "; ".join(f"{label} best {min(t) * 1e3:.0f} ms, median "
                         f"{statistics.median(t) * 1e3:.0f} ms" for label, t in times.items())
        ratio = statistics.median(times["GitIgnoreSpec"]) / statistics.median(
            times["ExcludeFilter"])
        print(f"  {name:24} {line} (pathspec alone: {ratio:.1f}x the time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
