"""Node, the Node client's packages and its build, as the tests use them.

scripts/bootstrap.sh --test installs Node and npm (Debian's packages) when `node` is
missing, and the packages clients/node/package-lock.json pins (`npm ci`). The tests build
the client (tsc) once per session. Without Node or the packages the tests skip on a
developer's machine and fail in CI (CI set), where a skipped suite would hide breakage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "node"
BIN = CLIENT / "node_modules" / ".bin"


def node_missing(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"the Node client's tests need {reason} in CI", pytrace=False)
    pytest.skip(f"{reason} (run scripts/bootstrap.sh --test)")


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        node_missing("Node.js (apt-get install nodejs npm)")
    return node


def node_tool(name: str) -> str:
    """A tool of the Node client's packages (buf, tsc, protoc-gen-es): `npm ci` put it in
    clients/node/node_modules/.bin."""
    node_binary()
    path = BIN / name
    if not path.exists():
        node_missing(f"clients/node/node_modules (no {name}: cd clients/node && npm ci)")
    return str(path)


def run_tool(name: str, *args: str, cwd: Path = ROOT, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node_tool(name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


@dataclass(frozen=True)
class Agent:
    """clients/node/examples/agent.ts, compiled, as a pipeline job runs it."""

    node: str
    script: Path
    env: dict[str, str]

    def __call__(self, *args: str, cwd: Path, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.node, str(self.script), *args], cwd=cwd, env=self.env,
                                capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"agent {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


def build_client() -> Path:
    """tsc over clients/node (src/ and examples/, --strict) into clients/node/dist; the
    compiled example agent's path."""
    result = run_tool("tsc", "-p", str(CLIENT), timeout=300)
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}\n{result.stderr}"
    script = CLIENT / "dist" / "examples" / "agent.js"
    assert script.is_file()
    return script
