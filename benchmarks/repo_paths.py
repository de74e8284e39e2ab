"""The repository's source folders on sys.path, for benchmarks run as scripts."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_to_path(*folders: str) -> None:
    """Put these folders of the repository (e.g. "core", "tests/security") first on
    sys.path, so that this checkout's code is what the benchmark imports."""
    sys.path[:0] = [str(REPO / folder) for folder in folders]
