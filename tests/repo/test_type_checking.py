"""mypy sees the tests as pytest imports them, so every test module is type-checked."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def _import_roots() -> set[str]:
    """The directories pytest's "prepend" import mode puts on sys.path for the tests.

    For each module, the nearest directory upward that has no __init__.py: its modules are
    imported by bare name (`import formats_support`), packages below it by dotted name.
    """
    roots = set()
    for module in TESTS.rglob("*.py"):
        directory = module.parent
        while (directory / "__init__.py").is_file():
            directory = directory.parent
        roots.add(directory.relative_to(ROOT).as_posix())
    return roots


def test_mypy_resolves_test_modules_as_pytest_does() -> None:
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    test_roots = {path for path in mypy["mypy_path"] if path.split("/")[0] == "tests"}
    assert test_roots == _import_roots(), (
        "[tool.mypy] mypy_path must list exactly the test directories without an "
        "__init__.py, or mypy cannot resolve the tests' bare-name imports"
    )
    assert "tests" in mypy["files"]
