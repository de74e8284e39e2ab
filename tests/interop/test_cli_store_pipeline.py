"""The attestation store end to end, through the real CLI and server (SQLite, the embedded
default): a three-step pipeline recorded by three `custody run` calls in three working
directories, no link file carried anywhere, is verified at the gate from the artifact
alone: `custody verify --artifact demo-project.tar.gz -l root.layout`."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from .interop_support import Cli, demo_layout, signed_demo_layout, write_template

pytestmark = pytest.mark.slow
TARBALL = "demo-project.tar.gz"
PACKAGE_COMMAND = ["tar", "--exclude", ".git", "-zcvf", TARBALL, "demo-project"]


@pytest.fixture(scope="module")
def layout(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The demo layout (with its untar inspection), signed by the owner key."""
    return signed_demo_layout(cli, tmp_path_factory.mktemp("layout"))


def record_pipeline(cli: Cli, work: Path, *, version: str, run: list[str],
                    env: dict[str, str] | None = None) -> Path:
    """clone, update-version and package, each in a working directory of its own (as
    three CI jobs, which pass on the sources but never a link file). The tarball."""
    agent = cli.with_env(**env) if env else cli
    template = write_template(work)
    clone, edit, package = (work / name for name in ("clone", "edit", "package"))
    for directory in (clone, edit, package):
        directory.mkdir()
    agent("run", "-n", "clone", *run, "-p", "demo-project", "--",
          "cp", "-r", str(template / "demo-project"), ".", cwd=clone)
    shutil.copytree(clone / "demo-project", edit / "demo-project")
    agent("run", "-n", "update-version", *run, "-m", "demo-project", "-p", "demo-project",
          "--", sys.executable, "-c",
          f"open('demo-project/foo.py', 'w').write(\"VERSION = '{version}'\\n\")", cwd=edit)
    shutil.copytree(edit / "demo-project", package / "demo-project")
    agent("run", "-n", "package", *run, "-m", "demo-project", "-p", TARBALL, "--",
          *PACKAGE_COMMAND, cwd=package)
    for directory in (clone, edit, package):  # each job wrote only its own link
        assert len(list(directory.glob("*.link"))) == 1
    return package / TARBALL


def gate(where: Path, layout: bytes, artifact: Path, *, tamper: bool = False) -> Path:
    """The release gate: the layout and the artifact, nothing else."""
    where.mkdir()
    (where / "root.layout").write_bytes(layout)
    shutil.copy(artifact, where / TARBALL)
    if tamper:
        with (where / TARBALL).open("ab") as tarball:
            tarball.write(b"\0")
    return where


def verify_artifact(cli: Cli, where: Path, *extra: str) -> Any:
    return cli("verify", "-l", "root.layout", "--layout-key-alias", "owner", "--artifact",
               TARBALL, *extra, cwd=where, check=False)


def test_a_pipeline_of_three_jobs_verifies_from_the_artifact_alone(
        cli: Cli, layout: bytes, tmp_path: Path) -> None:
    first = record_pipeline(cli, tmp_path / "one", version="foo-v1",
                            run=["--run-id", "pipeline-one"])
    # The second pipeline's run id comes from the CI's environment (GitHub Actions).
    second = record_pipeline(cli, tmp_path / "two", version="foo-v2", run=[],
                             env={"GITHUB_RUN_ID": "9001"})
    for artifact, run in ((first, "pipeline-one"), (second, "github:9001")):
        where = gate(tmp_path / f"gate-{run.replace(':', '-')}", layout, artifact)
        result = verify_artifact(cli, where)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(
            "PASS: root.layout verified (3 steps, 1 inspection run here, 1 artifact checked)")
        assert f"links: run {run}, from the attestation store" in result.stdout
    unpacked = tmp_path / "gate-pipeline-one" / "demo-project" / "foo.py"
    assert unpacked.read_text() == "VERSION = 'foo-v1'\n"
    where = gate(tmp_path / "gate-json", layout, second)
    as_json = json.loads(verify_artifact(cli, where, "--json").stdout)
    assert as_json["passed"] is True and as_json["run_id"] == "github:9001"


def test_a_changed_artifact_has_no_run(cli: Cli, layout: bytes, tmp_path: Path) -> None:
    artifact = record_pipeline(cli, tmp_path / "one", version="foo-v3",
                               run=["--run-id", "pipeline-three"])
    where = gate(tmp_path / "gate", layout, artifact, tamper=True)
    result = verify_artifact(cli, where)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAIL: root.layout did not verify (failed at artifact)")
    assert (f"no run in the attestation store has {TARBALL} as a product of the final step "
            "'package'") in result.stdout
    assert not (where / "demo-project").exists()  # no inspection ran


def test_a_run_missing_a_step_fails_naming_it(cli: Cli, layout: bytes,
                                              tmp_path: Path) -> None:
    """The package job of a run whose update-version job never recorded its link: the
    run is found by the artifact, and the verdict says which link is missing."""
    work = tmp_path / "partial"
    template = write_template(work)
    package = work / "package"
    package.mkdir()
    shutil.copytree(template / "demo-project", package / "demo-project")
    (package / "demo-project" / "foo.py").write_text("VERSION = 'unrecorded'\n")
    cli("run", "-n", "package", "--run-id", "partial", "-m", "demo-project", "-p", TARBALL,
        "--", *PACKAGE_COMMAND, cwd=package)
    where = gate(tmp_path / "gate", layout, package / TARBALL)
    result = verify_artifact(cli, where)
    assert result.returncode == 1
    assert "links: run partial, from the attestation store" in result.stdout
    assert "step 'clone' needs 1 link(s)" in result.stdout, result.stdout
    assert "step 'update-version' needs 1 link(s)" in result.stdout


def test_links_list_and_get(cli: Cli, tmp_path: Path) -> None:
    artifact = record_pipeline(cli, tmp_path / "one", version="foo-v4",
                               run=["--run-id", "pipeline-listed"])
    listed = cli("links", "list", "--run-id", "pipeline-listed", "--json", cwd=tmp_path)
    links = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [link["step"] for link in links] == ["package", "update-version", "clone"]
    assert {link["origin"] for link in links} == {"signed"}
    by_artifact = cli("links", "list", "--artifact", str(artifact), "--json", cwd=tmp_path)
    (package,) = [json.loads(line) for line in by_artifact.stdout.splitlines()]
    assert package["run_id"] == "pipeline-listed" and package["step"] == "package"
    # The stored file is the file the job wrote, byte for byte.
    written = next((tmp_path / "one" / "package").glob("package.*.link"))
    cli("links", "get", package["id"][:12], "-d", str(tmp_path), cwd=tmp_path)
    assert (tmp_path / written.name).read_bytes() == written.read_bytes()
    missing = cli("links", "get", "0" * 64, cwd=tmp_path, check=False)
    assert missing.returncode == 4 and "NOT_FOUND" in missing.stderr


def test_links_signed_by_in_toto_run_are_added_and_verified_from_the_artifact(
        cli: Cli, tmp_path: Path) -> None:
    """Links another tool signed (in-toto-run with a software key the server does not
    hold) go into the store with `custody links add`, checked against the key given; the
    gate then finds their run by the artifact as for links the service signed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from in_toto.models._signer import load_crypto_signer_from_pkcs8_file

    from .interop_support import reference

    private = ec.generate_private_key(ec.SECP256R1())
    key, pub = tmp_path / "alice.pem", tmp_path / "alice.pub"
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pub.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    alice = load_crypto_signer_from_pkcs8_file(str(key)).public_key
    layout = {**demo_layout(functionary=alice.keyid,
                            functionary_key={**alice.to_dict(), "keyid": alice.keyid}),
              "inspect": []}
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    cli("sign-layout", "-l", "layout.json", "--key", "owner", "-o", "root.layout",
        cwd=tmp_path)
    work = tmp_path / "work"
    template = write_template(work)
    functionary = work / "functionary"
    functionary.mkdir()
    signing = ["--signing-key", str(key)]
    steps = [
        ["-n", "clone", "-p", "demo-project", *signing, "--", "cp", "-r",
         str(template / "demo-project"), "."],
        ["-n", "update-version", "-m", "demo-project", "-p", "demo-project", *signing, "--",
         "sh", "-c", "echo \"VERSION = 'elsewhere'\" > demo-project/foo.py"],
        ["-n", "package", "-m", "demo-project", "-p", TARBALL, *signing, "--",
         *PACKAGE_COMMAND]]
    for step in steps:
        made = reference("in-toto-run", *step, cwd=functionary)
        assert made.returncode == 0, made.stderr
    links = sorted(str(path) for path in functionary.glob("*.link"))
    run = f"elsewhere-{uuid.uuid4().hex[:8]}"  # the session's store holds other tests' runs
    refused = cli("links", "add", *links, "--run-id", run, cwd=tmp_path, check=False)
    assert refused.returncode == 4 and "FAILED_PRECONDITION" in refused.stderr  # unknown key
    added = cli("links", "add", *links, "--run-id", run, "--keys", str(pub),
                cwd=tmp_path)
    assert added.stdout.count("stored as") == 3
    listed = [json.loads(line) for line in cli("links", "list", "--run-id", run,
                                               "--json", cwd=tmp_path).stdout.splitlines()]
    assert {(link["origin"], link["keyid"]) for link in listed} == {("added", alice.keyid)}
    where = gate(tmp_path / "gate", (tmp_path / "root.layout").read_bytes(),
                 functionary / TARBALL)
    result = verify_artifact(cli, where)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"links: run {run}, from the attestation store" in result.stdout
