"""clients/node/src/gen/ is what `buf generate` makes of protos/ now: regenerated into a
temporary directory with the committed buf.gen.yaml and the pinned protoc-gen-es, and
compared byte for byte (as scripts/gen_protos.py --check does for Python)."""

from __future__ import annotations

import filecmp
from pathlib import Path

from .node_support import CLIENT, ROOT, run_tool

GENERATED = CLIENT / "src" / "gen"


def files_below(directory: Path) -> set[str]:
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


def test_generated_typescript_is_fresh(tmp_path: Path) -> None:
    result = run_tool("buf", "generate", "--template", "buf.gen.yaml", "--output",
                      str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    fresh = tmp_path / GENERATED.relative_to(ROOT)
    names = files_below(fresh)
    assert names == files_below(GENERATED) == {"custody/v1/custody_pb.ts"}
    _, mismatch, errors = filecmp.cmpfiles(fresh, GENERATED, sorted(names), shallow=False)
    assert not mismatch and not errors, (
        f"{mismatch or errors} differ from what the protos generate: run "
        "`npm run generate` in clients/node (buf generate --template buf.gen.yaml)")
