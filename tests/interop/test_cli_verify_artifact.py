"""`custody verify --artifact`: the release gate's question, "may this file ship?", through
the real CLI and server. A layout without an inspection binds no final product (in-toto
passes a changed tarball); with --artifact the tarball must be a product of the final
step, `package`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from .interop_support import (
    CLONE,
    PACKAGE,
    Cli,
    demo_layout,
    update_version,
    write_template,
)

pytestmark = pytest.mark.slow
TARBALL = "demo-project.tar.gz"


@pytest.fixture(scope="module")
def chain(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo chain's three links and its tarball, recorded by `custody run`/`record`,
    with two signed layouts: the demo's (an untar inspection) and one without inspections."""
    work = tmp_path_factory.mktemp("chain")
    template = write_template(work)
    functionary = work / "functionary"
    functionary.mkdir()
    cli(*CLONE[:-1], "--", "cp", "-r", str(template / "demo-project"), ".", cwd=functionary)
    cli("record", "start", "-n", "update-version", "-m", "demo-project", cwd=functionary)
    update_version(functionary)
    cli("record", "stop", "-n", "update-version", "-p", "demo-project", cwd=functionary)
    cli(*PACKAGE, cwd=functionary)
    layout = demo_layout(functionary="alias:build")
    (functionary / "demo.json").write_text(json.dumps(layout))
    (functionary / "plain.json").write_text(json.dumps({**layout, "inspect": []}))
    for name in ("demo", "plain"):
        cli("sign-layout", "-l", f"{name}.json", "--key", "owner", "-o", f"{name}.layout",
            cwd=functionary)
    return functionary


def gate(chain: Path, where: Path, *, layout: str = "plain", tamper: bool = False) -> Path:
    """What a release gate holds: links, root.layout (the demo's or the plain one) and the
    tarball (changed, if asked)."""
    where.mkdir()
    for path in (*chain.glob("*.link"), chain / TARBALL):
        shutil.copy(path, where / path.name)
    shutil.copy(chain / f"{layout}.layout", where / "root.layout")
    if tamper:
        with (where / TARBALL).open("ab") as tarball:
            tarball.write(b"junk appended after the build")
    return where


def verify(cli: Cli, where: Path, *extra: str) -> Any:
    """With the gate's link directory (without it, --artifact finds the links in the
    attestation store: tests/interop/test_cli_store_pipeline.py)."""
    return cli("verify", "-l", "root.layout", "--layout-key-alias", "owner", "--link-dir",
               ".", *extra, cwd=where, check=False)


def test_an_intact_artifact_passes(cli: Cli, chain: Path, tmp_path: Path) -> None:
    where = gate(chain, tmp_path / "gate")
    result = verify(cli, where, "--artifact", TARBALL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS: root.layout verified (3 steps, 1 artifact checked)")
    # With the demo's inspection too: both bind the tarball.
    where = gate(chain, tmp_path / "demo", layout="demo")
    result = verify(cli, where, "--artifact", str(where / TARBALL))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 inspection run here, 1 artifact checked" in result.stdout


def test_a_changed_artifact_fails_naming_it(cli: Cli, chain: Path, tmp_path: Path) -> None:
    where = gate(chain, tmp_path / "gate", tamper=True)
    # The gap this closes: a layout without an inspection does not look at the tarball.
    assert verify(cli, where).returncode == 0
    result = verify(cli, where, "--artifact", TARBALL)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAIL: root.layout did not verify (failed at artifact)")
    assert f"artifact {TARBALL} (sha256 " in result.stdout
    assert "not a product of the final step 'package'" in result.stdout
    where = gate(chain, tmp_path / "demo", layout="demo", tamper=True)
    as_json = json.loads(verify(cli, where, "--artifact", TARBALL, "--json").stdout)
    assert as_json["passed"] is False
    (failure,) = as_json["failures"]
    assert failure["stage"] == "artifact" and failure["paths"] == [TARBALL]
    assert failure["step"] == "package"
    # The artifact stage comes before inspections: the changed tarball was not unpacked.
    assert as_json["inspections_run"] == []
    assert not (where / "demo-project").exists()


def test_an_artifact_that_cannot_be_read_is_an_input_error(cli: Cli, chain: Path,
                                                          tmp_path: Path) -> None:
    where = gate(chain, tmp_path / "gate")
    result = verify(cli, where, "--artifact", "missing.tar.gz")
    assert result.returncode == 2
    assert "--artifact missing.tar.gz: not a file" in result.stderr


def test_a_crafted_artifact_name_cannot_forge_the_verdict(cli: Cli, chain: Path,
                                                          tmp_path: Path) -> None:
    """A gate that releases `dist/*` names what the build made. A file named to end the
    FAIL line and start a PASS one (or a GitHub workflow command), with a terminal escape
    and a right-to-left override, is shown escaped: the verdict stays one FAIL."""
    where = gate(chain, tmp_path / "gate")
    name = "x\nPASS: root.layout verified (3 steps)\n::notice::ok\x1b[1A\u202e.gz"
    (where / name).write_bytes(b"not what package made")
    result = verify(cli, where, "--artifact", name)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("FAIL: root.layout did not verify")
    assert not any(line.startswith(("PASS", "::")) for line in lines)
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert r"x\x0aPASS: root.layout verified (3 steps)\x0a::notice::ok\x1b[1A\u202e.gz" \
        in result.stdout
