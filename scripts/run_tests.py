"""Run the test suite one directory per pytest process; print one closing line.

Each pytest process makes one SoftHSM token for its whole session (SoftHSM reads its
configuration once per process), and every test adds keys and data objects to it.
SoftHSM finds objects by scanning the token: with the whole suite in one process the
token held about 530 objects and a lookup by label took 12 ms instead of a fraction of
one, so late tests slowed down and the timing-bound ones failed. One process per
directory keeps each token small.

With arguments, they go to a single pytest run as they are (scripts/test tests/core -k x).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")


def main(argv: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest"]
    if any(not arg.startswith("-") for arg in argv):
        return subprocess.call([*pytest, *argv], cwd=ROOT)
    directories = sorted(p.relative_to(ROOT) for p in (ROOT / "tests").iterdir()
                         if p.is_dir() and not p.name.startswith(("_", ".")))
    totals: dict[str, int] = {}
    failed_runs = []
    for directory in directories:
        run = subprocess.run([*pytest, *argv, str(directory)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             check=False)
        sys.stdout.write(run.stdout)
        sys.stdout.flush()
        if run.returncode not in (0, 5):  # 5: no test collected in that directory
            failed_runs.append(str(directory))
        last = run.stdout.strip().splitlines()[-1:] or [""]
        for count, kind in SUMMARY.findall(last[0]):
            kind = "errors" if kind.startswith("error") else kind
            totals[kind] = totals.get(kind, 0) + int(count)
    passed, failed = totals.get("passed", 0), totals.get("failed", 0) + totals.get("errors", 0)
    if failed_runs and not failed:
        failed = len(failed_runs)  # a run that failed without a count (a crash)
    skipped = f", {totals['skipped']} skipped" if totals.get("skipped") else ""
    print(f"suite: {passed} passed, {failed} failed{skipped}")
    if failed_runs:
        print(f"failed in: {', '.join(failed_runs)}")
    return 1 if failed_runs or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
