"""The in-toto demo supply chain recorded with `custody run`/`custody record` against the
real server, verified by the reference in-toto-verify and by `custody verify`; tampered,
it fails in both naming the same artifact. And the reverse: links made by in-toto-run
with a software key verify with `custody verify`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from in_toto.models._signer import load_crypto_signer_from_pkcs8_file

from .interop_support import (
    CLONE,
    PACKAGE,
    Cli,
    demo_layout,
    final_product_dir,
    metablock,
    reference,
    tamper_with,
    update_version,
    write_template,
)

pytestmark = pytest.mark.slow
TAMPERED = "demo-project/foo.py"


def sign_demo_layout(cli: Cli, work: Path, *, envelope: str) -> tuple[bytes, bytes]:
    """The demo layout signed by the server's owner key, and that key's PEM."""
    (work / "layout.json").write_text(json.dumps(demo_layout(functionary="alias:build")))
    cli("sign-layout", "-l", "layout.json", "--key", "owner", "-o", "root.layout",
        "--envelope", envelope, cwd=work)
    cli("keys", "public", "owner", "-o", "owner.pub", cwd=work)
    return (work / "root.layout").read_bytes(), (work / "owner.pub").read_bytes()


@pytest.fixture(scope="module")
def signed_layout(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    return sign_demo_layout(cli, tmp_path_factory.mktemp("layout"), envelope="metablock")


def record_chain_with_custody(cli: Cli, work: Path, *, tamper: bool,
                              envelope: str = "metablock") -> Path:
    template = write_template(work)
    functionary = work / "functionary"
    functionary.mkdir()
    sign = ["--envelope", envelope]
    cli(*CLONE[:-1], *sign, "--", "cp", "-r", str(template / "demo-project"), ".",
        cwd=functionary)
    cli("record", "start", "-n", "update-version", "-m", "demo-project", cwd=functionary)
    assert (functionary / ".update-version.link-unfinished").is_file()
    update_version(functionary)
    cli("record", "stop", "-n", "update-version", "-p", "demo-project", *sign, cwd=functionary)
    if tamper:
        tamper_with(functionary)
    cli(*PACKAGE[:3], *sign, *PACKAGE[3:], cwd=functionary)
    assert not list(functionary.glob(".*.link-unfinished"))  # record stop cleans up
    assert len(list(functionary.glob("*.link"))) == 3
    return functionary


def verify_with_both(cli: Cli, work: Path, functionary: Path, layout: tuple[bytes, bytes]
                     ) -> tuple[subprocess.CompletedProcess[str],
                                subprocess.CompletedProcess[str]]:
    ref_dir = final_product_dir(work, "final-reference", functionary_dir=functionary,
                                layout=layout[0], owner_pub=layout[1])
    ours_dir = final_product_dir(work, "final-custody", functionary_dir=functionary,
                                 layout=layout[0], owner_pub=layout[1])
    ref = reference("in-toto-verify", "-l", "root.layout", "--verification-keys", "owner.pub",
                    cwd=ref_dir)
    ours = cli("verify", "-l", "root.layout", "--layout-keys", "owner.pub", cwd=ours_dir,
               check=False)
    return ref, ours


@pytest.mark.parametrize("envelope", ["metablock", "dsse"])
def test_demo_chain_passes_reference_and_custody_verify(
        cli: Cli, signed_layout: tuple[bytes, bytes], tmp_path: Path, envelope: str) -> None:
    functionary = record_chain_with_custody(cli, tmp_path, tamper=False, envelope=envelope)
    ref, ours = verify_with_both(cli, tmp_path, functionary, signed_layout)
    assert ref.returncode == 0, ref.stderr
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert ours.stdout.startswith("PASS: root.layout verified (3 steps, 1 inspection run here)")
    # The inspection ran here, as in-toto-verify runs it: the tarball was unpacked.
    assert (tmp_path / "final-custody" / "demo-project" / "foo.py").read_text() \
        == "VERSION = 'foo-v1'\n"


# README, "Which verifier accepts which envelope": what in-toto 3.1's in-toto-verify reads.
def test_a_dsse_layout_passes_reference_and_custody_verify(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "layout").mkdir()
    layout = sign_demo_layout(cli, tmp_path / "layout", envelope="dsse")
    assert b'"payloadType"' in layout[0]
    functionary = record_chain_with_custody(cli, tmp_path, tamper=False, envelope="dsse")
    ref, ours = verify_with_both(cli, tmp_path, functionary, layout)
    assert ref.returncode == 0, ref.stderr
    assert ours.returncode == 0, ours.stdout + ours.stderr


def test_statement_links_pass_custody_verify_but_not_the_reference(
        cli: Cli, signed_layout: tuple[bytes, bytes], tmp_path: Path) -> None:
    """in-toto 3.1 reads DSSE payloads of `_type` link or layout only: an in-toto Statement
    (link predicate v0.3) is InvalidMetadata to it. custody verify reads all three."""
    functionary = record_chain_with_custody(cli, tmp_path, tamper=False, envelope="statement")
    ref, ours = verify_with_both(cli, tmp_path, functionary, signed_layout)
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert ours.stdout.startswith("PASS: root.layout verified (3 steps, 1 inspection run here)")
    assert ref.returncode == 1
    assert "InvalidMetadata" in ref.stderr, ref.stderr


def test_tampered_chain_fails_in_both_naming_the_same_artifact(
        cli: Cli, signed_layout: tuple[bytes, bytes], tmp_path: Path) -> None:
    functionary = record_chain_with_custody(cli, tmp_path, tamper=True)
    ref, ours = verify_with_both(cli, tmp_path, functionary, signed_layout)
    assert ref.returncode == 1
    assert TAMPERED in ref.stderr and "package" in ref.stderr
    assert ours.returncode == 1
    assert ours.stdout.startswith("FAIL: root.layout did not verify (failed at step-rules)")
    assert TAMPERED in ours.stdout and "package" in ours.stdout
    # The same verdict for machines names the artifact in its paths.
    again = cli("verify", "-l", "root.layout", "--layout-key-alias", "owner", "--json",
                cwd=tmp_path / "final-custody", check=False)
    verdict = json.loads(again.stdout)
    assert again.returncode == 1 and verdict["passed"] is False
    assert verdict["failures"][0]["step"] == "package"
    assert TAMPERED in verdict["failures"][0]["paths"]
    assert verdict["inspections_run"] == []  # nothing from a failing chain is run


def test_a_layout_from_another_key_is_refused_before_any_inspection_runs(
        cli: Cli, signed_layout: tuple[bytes, bytes], tmp_path: Path) -> None:
    functionary = record_chain_with_custody(cli, tmp_path, tamper=False)
    final = final_product_dir(tmp_path, "final", functionary_dir=functionary,
                              layout=signed_layout[0], owner_pub=signed_layout[1])
    result = cli("verify", "-l", "root.layout", "--layout-key-alias", "build", cwd=final,
                 check=False)
    assert result.returncode == 1
    assert "failed at layout-signature" in result.stdout
    assert not (final / "demo-project").exists()  # untar never ran


def _software_key(directory: Path, name: str) -> tuple[Path, Path, Any]:
    private = ec.generate_private_key(ec.SECP256R1())
    key_path = directory / f"{name}.pem"
    key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    pub_path = directory / f"{name}.pub"
    pub_path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path, load_crypto_signer_from_pkcs8_file(str(key_path))


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("layout_signer", ["custody-owner", "reference"])
def test_links_from_in_toto_run_verify_with_custody(
        cli: Cli, tmp_path: Path, layout_signer: str) -> None:
    alice_key, _, alice = _software_key(tmp_path, "alice")
    layout = demo_layout(functionary=alice.public_key.keyid,
                         functionary_key={**alice.public_key.to_dict(),
                                          "keyid": alice.public_key.keyid})
    final = tmp_path / "final"
    final.mkdir()
    (final / "layout.json").write_text(json.dumps(layout))
    if layout_signer == "custody-owner":
        cli("sign-layout", "-l", "layout.json", "--key", "owner", "-o", "root.layout", cwd=final)
        cli("keys", "public", "owner", "-o", "owner.pub", cwd=final)
        key_args = ["--layout-key-alias", "owner"]
    else:
        owner_key, owner_pub, _ = _software_key(tmp_path, "owner")
        (final / "owner.pub").write_bytes(owner_pub.read_bytes())
        (final / "root.layout").write_text(metablock(layout))
        _ok(reference("in-toto-sign", "-f", "root.layout", "-k", str(owner_key), "-o",
                      "root.layout", cwd=final))
        key_args = ["--layout-keys", "owner.pub"]
    (final / "layout.json").unlink()

    template = write_template(tmp_path)
    functionary = tmp_path / "functionary"
    functionary.mkdir()
    signing = ["--signing-key", str(alice_key)]
    _ok(reference("in-toto-run", "-n", "clone", "-p", "demo-project", *signing, "--",
                  "cp", "-r", str(template / "demo-project"), ".", cwd=functionary))
    _ok(reference("in-toto-record", "start", "-n", "update-version", "-m", "demo-project",
                  *signing, cwd=functionary))
    update_version(functionary)
    _ok(reference("in-toto-record", "stop", "-n", "update-version", "-p", "demo-project",
                  *signing, cwd=functionary))
    _ok(reference("in-toto-run", "-n", "package", "-m", "demo-project", "-p",
                  "demo-project.tar.gz", *signing, "--", *PACKAGE[PACKAGE.index("--") + 1:],
                  cwd=functionary))
    for path in [*functionary.glob("*.link"), functionary / "demo-project.tar.gz"]:
        (final / path.name).write_bytes(path.read_bytes())

    result = cli("verify", "-l", "root.layout", *key_args, cwd=final, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS: root.layout verified (3 steps, 1 inspection")


def test_custody_recording_matches_in_toto_run_on_the_same_tree(cli: Cli, tmp_path: Path
                                                                ) -> None:
    """The same step recorded by both tools lists the same artifacts and digests."""
    alice_key, _, _ = _software_key(tmp_path, "alice")
    tree = tmp_path / "tree"
    (tree / "src" / "pkg").mkdir(parents=True)
    (tree / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (tree / "src" / "pkg" / "mod.pyc").write_bytes(b"\x00")
    (tree / "src" / ".git").mkdir()
    (tree / "src" / ".git" / "HEAD").write_text("ref\n")
    (tree / "README.md").write_text("hi\n")
    (tree / "link-to-readme").symlink_to("README.md")
    args = ["-m", ".", "-p", "src", "--lstrip-paths", "src/", "-x"]
    _ok(reference("in-toto-run", "-n", "step", *args, "--signing-key", str(alice_key),
                  cwd=tree))
    ref_link = next(tree.glob("step.*.link"))
    ref_signed = json.loads(ref_link.read_text())["signed"]
    ref_link.rename(tmp_path / ref_link.name)
    cli("run", "-n", "step", *args, cwd=tree)
    ours = json.loads(next(tree.glob("step.*.link")).read_text())["signed"]
    assert ours["materials"] == ref_signed["materials"]
    assert ours["products"] == ref_signed["products"]
    assert "pkg/mod.py" in ours["products"] and "README.md" in ours["materials"]
