"""Find the command-line tools the tests run in the interpreter's own environment.

The tests run under `.venv/bin/python` without the venv being activated, so the caller's
PATH says nothing about which `in-toto-verify` (if any) belongs to the packages under test.
Every tool is looked up beside `sys.executable`; a missing one is an install error, not a
skip.
"""

from __future__ import annotations

import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def venv_tool(name: str) -> str:
    """The path of `name` installed in this interpreter's environment (e.g. in-toto-verify)."""
    path = BIN / name
    if not path.is_file():
        raise AssertionError(f"{name} is not installed beside {sys.executable}: "
                             "run scripts/bootstrap.sh (it installs the test extra)")
    return str(path)
