"""buf.yaml: `buf lint` passes, and no change to custody.v1 breaks its generated clients
(`buf breaking` against protos/custody-v1.baseline.json, the image of the API as the
language options were set). buf is the one clients/node/package-lock.json pins."""

from __future__ import annotations

import shutil
from pathlib import Path

from custody_api.v1 import custody_pb2

from .node_support import ROOT, run_tool

BASELINE = ROOT / "protos" / "custody-v1.baseline.json"


def test_buf_lint_passes() -> None:
    result = run_tool("buf", "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_the_baseline() -> None:
    result = run_tool("buf", "breaking", "--against", str(BASELINE))
    assert result.returncode == 0, (
        "custody.v1 changed in a way that breaks generated clients:\n"
        f"{result.stdout}{result.stderr}")


def test_the_breaking_check_has_teeth(tmp_path: Path) -> None:
    """A renamed field and a changed go_package, in a copy of the module, are caught."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    proto = tmp_path / "protos" / "custody" / "v1" / "custody.proto"
    text = proto.read_text()
    changed = text.replace("  string step_name = 1;", "  string step = 1;", 1).replace(
        "custody/gen/go/custody/v1;custodyv1", "custody/api/v1;custodyv1")
    assert changed != text
    proto.write_text(changed)
    result = run_tool("buf", "breaking", "--against", str(BASELINE), cwd=tmp_path)
    assert result.returncode != 0
    assert 'changed name from "step_name" to "step"' in result.stdout
    assert 'File option "go_package" changed' in result.stdout


def test_each_language_has_its_package() -> None:
    """The options README's "Other languages" documents (the Python descriptor is built
    from the same proto)."""
    options = custody_pb2.DESCRIPTOR.GetOptions()
    assert options.go_package == "github.com/custody-dev/custody/gen/go/custody/v1;custodyv1"
    assert (options.java_package, options.java_outer_classname) == ("dev.custody.api.v1",
                                                                     "CustodyProto")
    assert options.java_multiple_files
    assert options.csharp_namespace == "Custody.Api.V1"
    assert options.ruby_package == "Custody::Api::V1"
    assert options.php_namespace == "Custody\\Api\\V1"
    readme = (ROOT / "README.md").read_text()
    for value in ("github.com/custody-dev/custody/gen/go/custody/v1", "dev.custody.api.v1"):
        assert value in readme
