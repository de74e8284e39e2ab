"""Generate the Python protobuf and gRPC code for protos/ into client/custody_api/.

This is the one script that produces custody_api; never edit its output by hand.
`python scripts/gen_protos.py` rewrites the package; `--check` exits 1 when the
committed code differs from what the protos generate (a test runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "client" / "custody_api"
HEADER = '"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n'


def _proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def _generate(out: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTOS)) for p in _proto_files()]
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes custody/v1/...; the package is named custody_api so that
    # the import name stays distinctive. Rewrite the generated imports to match.
    generated = out / "custody"
    package = out / "custody_api"
    generated.rename(package)
    for path in package.rglob("*.py*"):
        text = re.sub(r"\bfrom custody(\.v\d+)", r"from custody_api\1", path.read_text())
        path.write_text(text)
    for directory in [package, *[p for p in package.rglob("*") if p.is_dir()]]:
        (directory / "__init__.py").write_text(HEADER)
    (package / "py.typed").write_text("")


def _same_tree(left: Path, right: Path) -> bool:
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(left / d, right / d) for d in cmp.common_dirs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if custody_api is stale")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _generate(out)
        fresh = out / "custody_api"
        if options.check:
            if TARGET.exists() and _same_tree(fresh, TARGET):
                print("custody_api is up to date")
                return 0
            print("custody_api is stale: run python scripts/gen_protos.py", file=sys.stderr)
            return 1
        if TARGET.exists():
            shutil.rmtree(TARGET)
        shutil.copytree(fresh, TARGET, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"generated {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
