"""`custody verify` beyond the demo: parameters in inspections, and inspections of a
sublayout, which run only after the server has checked the chain up to them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from in_toto.models._signer import load_crypto_signer_from_pkcs8_file
from in_toto.models.layout import Layout as RefLayout
from in_toto.models.metadata import Metablock

from .interop_support import Cli, reference, write_template

pytestmark = pytest.mark.slow


def _package(cli: Cli, directory: Path, *, metadata_dir: Path, step: str) -> None:
    template = write_template(directory)
    (directory / "demo-project").mkdir()
    (directory / "demo-project" / "foo.py").write_bytes(
        (template / "demo-project" / "foo.py").read_bytes())
    cli("run", "-n", step, "-p", "demo-project.tar.gz", "-d", str(metadata_dir), "--",
        "tar", "zcf", "demo-project.tar.gz", "demo-project", cwd=directory)


def test_parameters_reach_the_inspection_that_runs_here(cli: Cli, tmp_path: Path) -> None:
    final = tmp_path / "final"
    final.mkdir()
    _package(cli, tmp_path, metadata_dir=final, step="package")
    (final / "demo-project.tar.gz").write_bytes((tmp_path / "demo-project.tar.gz").read_bytes())
    layout = {
        "_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {},
        "steps": [{"_type": "step", "name": "package", "threshold": 1,
                   "pubkeys": ["alias:build"], "expected_command": [],
                   "expected_materials": [],
                   "expected_products": [["CREATE", "{ARCHIVE}"], ["DISALLOW", "*"]]}],
        "inspect": [{"_type": "inspection", "name": "unpack", "run": ["tar", "xzf", "{ARCHIVE}"],
                     "expected_materials": [["MATCH", "{ARCHIVE}", "WITH", "PRODUCTS", "FROM",
                                             "package"], ["ALLOW", "root.layout"],
                                            ["DISALLOW", "*"]],
                     "expected_products": [["CREATE", "demo-project/foo.py"], ["ALLOW", "*"]]}],
    }
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    cli("sign-layout", "-l", str(tmp_path / "layout.json"), "-o", "root.layout", cwd=final)

    # Without --param nothing is substituted (as in-toto-verify): `CREATE {ARCHIVE}` is
    # taken literally, the step's rules fail, and the verdict says why it may have.
    missing = cli("verify", "-l", "root.layout", "--layout-key-alias", "owner", cwd=final,
                  check=False)
    assert missing.returncode == 1
    assert "failed at step-rules" in missing.stdout, missing.stdout
    assert "no parameters were given" in missing.stdout and "{ARCHIVE}" in missing.stdout
    assert not (final / "demo-project").exists()  # nothing ran

    wrong = cli("verify", "-l", "root.layout", "--layout-key-alias", "owner",
                "--param", "OTHER=x", cwd=final, check=False)
    assert wrong.returncode == 1
    assert "failed at parameters" in wrong.stdout and "ARCHIVE" in wrong.stdout

    given = cli("verify", "-l", "root.layout", "--layout-key-alias", "owner",
                "--param", "ARCHIVE=demo-project.tar.gz", cwd=final, check=False)
    assert given.returncode == 0, given.stdout + given.stderr
    assert (final / "demo-project" / "foo.py").is_file()  # `tar xzf demo-project.tar.gz` ran


def _software_signer(directory: Path) -> Any:
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "sub-owner.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return load_crypto_signer_from_pkcs8_file(str(path))


def _key_dict(cli: Cli, cwd: Path, alias: str) -> tuple[str, dict[str, Any]]:
    keys = json.loads(cli("keys", "list", "--json", cwd=cwd).stdout)
    (key,) = [k for k in keys if k["alias"] == alias]
    return key["keyid"], {**key["public_key"], "keyid": key["keyid"]}


def test_a_sublayouts_inspection_runs_here_and_verifies(cli: Cli, tmp_path: Path) -> None:
    final = tmp_path / "final"
    final.mkdir()
    sub_owner = _software_signer(tmp_path)
    sub_keyid = sub_owner.public_key.keyid
    build_keyid, build_key = _key_dict(cli, tmp_path, "build")

    sublayout = {
        "_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "package team",
        "keys": {build_keyid: build_key},
        "steps": [{"_type": "step", "name": "make-tarball", "threshold": 1,
                   "pubkeys": [build_keyid], "expected_command": [],
                   "expected_materials": [],
                   "expected_products": [["CREATE", "demo-project.tar.gz"],
                                         ["DISALLOW", "*"]]}],
        "inspect": [{"_type": "inspection", "name": "untar",
                     "run": ["tar", "xzf", "demo-project.tar.gz"],
                     "expected_materials": [["MATCH", "demo-project.tar.gz", "WITH", "PRODUCTS",
                                             "FROM", "make-tarball"], ["ALLOW", "*"]],
                     "expected_products": [["CREATE", "demo-project/foo.py"], ["ALLOW", "*"]]}],
    }
    signed_sublayout = Metablock(signed=RefLayout.read(sublayout))
    signed_sublayout.create_signature(sub_owner)
    sub_file = f"package.{sub_keyid[:8]}"
    signed_sublayout.dump(str(final / f"{sub_file}.link"))
    (final / sub_file).mkdir()
    _package(cli, tmp_path, metadata_dir=final / sub_file, step="make-tarball")
    (final / "demo-project.tar.gz").write_bytes((tmp_path / "demo-project.tar.gz").read_bytes())

    root = {
        "_type": "layout", "expires": "2099-01-01T00:00:00Z", "readme": "release",
        "keys": {sub_keyid: {**sub_owner.public_key.to_dict(), "keyid": sub_keyid}},
        "steps": [{"_type": "step", "name": "package", "threshold": 1, "pubkeys": [sub_keyid],
                   "expected_command": [], "expected_materials": [],
                   "expected_products": [["CREATE", "demo-project.tar.gz"],
                                         ["DISALLOW", "*"]]}],
        "inspect": [],
    }
    (tmp_path / "root.json").write_text(json.dumps(root))
    cli("sign-layout", "-l", str(tmp_path / "root.json"), "-o", "root.layout", cwd=final)
    cli("keys", "public", "owner", "-o", str(tmp_path / "owner.pub"), cwd=final)

    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    for item in final.iterdir():
        target = reference_dir / item.name
        if item.is_dir():
            target.mkdir()
            for inner in item.iterdir():
                (target / inner.name).write_bytes(inner.read_bytes())
        else:
            target.write_bytes(item.read_bytes())
    ref = reference("in-toto-verify", "-l", "root.layout", "--verification-keys",
                    str(tmp_path / "owner.pub"), cwd=reference_dir)
    assert ref.returncode == 0, ref.stderr

    result = cli("verify", "-l", "root.layout", "--layout-key-alias", "owner", "--json",
                 cwd=final, check=False)
    verdict = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdict["inspections_run"] == [f"{sub_file}/untar"]
    assert (final / "demo-project" / "foo.py").is_file()


@pytest.mark.parametrize("run,timeout,reason", [
    (["no-such-inspection-tool"], [], "command not found: no-such-inspection-tool"),
    (["sleep", "30"], ["--inspection-timeout", "0.5"], "ran longer than 0.5 s"),
    (["sleep", "30"], [], "ran longer than 10 s"),  # in-toto-verify's default
    (["sh", "-c", "exit 3"], [], "returned 3, not 0"),
])
def test_an_inspection_that_cannot_run_or_fails_fails_the_verification(
        cli: Cli, tmp_path: Path, run: list[str], timeout: list[str], reason: str) -> None:
    final = tmp_path / "final"
    final.mkdir()
    _package(cli, tmp_path, metadata_dir=final, step="package")
    layout = {
        "_type": "layout", "expires": "2099-01-01T00:00:00Z", "keys": {},
        "steps": [{"_type": "step", "name": "package", "threshold": 1,
                   "pubkeys": ["alias:build"], "expected_command": [],
                   "expected_materials": [], "expected_products": [["ALLOW", "*"]]}],
        "inspect": [{"_type": "inspection", "name": "check", "run": run,
                     "expected_materials": [], "expected_products": []}],
    }
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    cli("sign-layout", "-l", str(tmp_path / "layout.json"), "-o", "root.layout", cwd=final)
    result = cli("verify", "-l", "root.layout", "--layout-key-alias", "owner", *timeout,
                 cwd=final, check=False)
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL: root.layout did not verify (failed at inspections)")
    assert reason in result.stdout
