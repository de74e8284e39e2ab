"""The layering holds: the import contracts in pyproject.toml ([tool.importlinter]).

The core imports no gRPC, PKCS#11, structlog, server, client or generated API; the server
imports nothing from the client, nor the client from the server. `scripts/test` runs
`lint-imports` too; this test makes a broken contract fail the suite loudly wherever pytest
runs, and a second test proves the contracts can fail at all.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run this environment's lint-imports with the pyproject.toml in `cwd`."""
    assert LINT_IMPORTS.is_file(), (
        f"lint-imports is not installed beside {sys.executable}: "
        "run scripts/bootstrap.sh (it installs the test extra)"
    )
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",  # its banner is box drawing; not the locale's, which may be ASCII
        timeout=120,
        check=False,
    )


def test_import_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, f"layering broken:\n{result.stdout}{result.stderr}"
    assert ", 0 broken." in result.stdout, result.stdout


def test_a_core_module_that_imports_grpc_breaks_the_contract(tmp_path: Path) -> None:
    # The real contracts, over a copy of the core with one module that imports grpc.
    # lint-imports puts its working directory first on sys.path, so the copy shadows the
    # installed core; the server and client are the real ones.
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    core = shutil.copytree(
        ROOT / "core" / "custody_core",
        tmp_path / "custody_core",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (core / "wire.py").write_text("import grpc\n", encoding="utf-8")

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "custody_core.wire -> grpc" in result.stdout, result.stdout
