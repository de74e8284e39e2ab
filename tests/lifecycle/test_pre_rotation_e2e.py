"""Pre-rotation end to end: a real server process on its own SoftHSM token, the `custody`
CLI as agents and security teams run it, and the reference in-toto-verify as the oracle.

- Every kind of functionary key (ECDSA P-256 and P-384, Ed25519, RSA-PSS): a layout signed
  before a rotation verifies links signed after it, in both verifiers; after a second
  rotation both fail, and Custody's verdict names the rotation; `--refresh` makes both pass.
- The same, unattended: the scheduler rotates an alias every few seconds.
- A compromise stays a hard stop: after `custody keys retire`, the retired version's links
  fail in Custody's Verify with a reason that names the version and the time.
- Two owners by two `--append` calls (Metablock and DSSE): both verifiers pass with both
  keys, and fail when a key they are given did not sign.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from venv_tools import venv_tool

from custody_api.v1 import custody_pb2 as pb

from .lifecycle_support import EXPIRES, OPEN_POLICY, unique_alias
from .process_support import ROOT, Replica, start_server, stop_server, within

pytestmark = pytest.mark.slow
PERIOD = 8.0  # the scheduled alias's rotation period, seconds
CONFIG = f"""
[tls]
insecure = true

[lifecycle]
check_interval = "0.2s"

[lifecycle.rotation.sched]
period = "{PERIOD}s"
overlap = "1h"
"""
ALGORITHMS = {"p256": pb.KEY_ALGORITHM_ECDSA_P256, "p384": pb.KEY_ALGORITHM_ECDSA_P384,
              "ed25519": pb.KEY_ALGORITHM_ED25519, "rsa": pb.KEY_ALGORITHM_RSA_3072}


@dataclass
class Setup:
    server: Replica
    work: Path
    env: dict[str, str]

    def cli(self, *args: str, cwd: Path, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """`custody ARGS` as an agent runs it: only core and client on its path."""
        result = subprocess.run([sys.executable, "-m", "custody_client", *args, "--plaintext"],
                                cwd=cwd, env=self.env, capture_output=True, text=True,
                                timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"custody {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def reference(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([venv_tool("in-toto-verify"), *args], cwd=cwd,
                              capture_output=True, text=True, timeout=120, check=False)

    def public_key(self, alias: str, cwd: Path) -> str:
        """The alias's active public key as PEM, in cwd/<alias>.pub."""
        self.cli("keys", "public", alias, "-o", f"{alias}.pub", cwd=cwd)
        return f"{alias}.pub"

    def record(self, step: str, alias: str, directory: Path) -> Path:
        """`custody run` of a step that creates foo.py, signed by `alias`; its link file."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "foo.py").write_text("print('hello')\n")
        self.cli("run", "-n", step, "--key", alias, "-p", "foo.py", "--", "true", cwd=directory)
        (directory / "foo.py").unlink()  # the links are what is verified
        links = sorted(directory.glob(f"{step}.*.link"))
        assert len(links) == 1, links
        return links[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("prerotation")
    config = base / "custody.toml"
    config.write_text(CONFIG)
    state = base / "state"
    state.mkdir(mode=0o700)
    (state / "policy.toml").write_text(OPEN_POLICY)
    server = start_server(state, config)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base),
           "PYTHONPATH": f"{ROOT}/core:{ROOT}/client", "CUSTODY_SERVER": server.address}
    try:
        yield Setup(server=server, work=base, env=env)
    finally:
        stop_server(server)


def _step(name: str, alias: str) -> dict[str, Any]:
    return {"_type": "step", "name": name, "threshold": 1, "pubkeys": [f"alias:{alias}"],
            "expected_command": ["true"], "expected_materials": [["DISALLOW", "*"]],
            "expected_products": [["CREATE", "foo.py"], ["DISALLOW", "*"]]}


def _layout(steps: list[dict[str, Any]]) -> str:
    return json.dumps({"_type": "layout", "expires": EXPIRES, "readme": "pre-rotation",
                       "keys": {}, "steps": steps, "inspect": []})


def _verify(setup: Setup, directory: Path, layout: str, *owners: str
            ) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """custody verify and in-toto-verify over the link files in `directory`."""
    keys = [item for owner in owners for item in ("--layout-key-alias", owner)]
    custody = setup.cli("verify", "-l", layout, *keys, "--link-dir", str(directory),
                        cwd=setup.work, check=False)
    pems = [str(setup.work / f"{owner}.pub") for owner in owners]
    reference = setup.reference("-l", layout, "--verification-keys", *pems,
                                "--link-dir", str(directory), cwd=setup.work)
    return custody, reference


def _rotate(setup: Setup, alias: str) -> None:
    setup.cli("keys", "rotate", alias, cwd=setup.work)


def test_every_kind_of_key_survives_one_rotation_and_refresh_fixes_the_second(
        setup: Setup) -> None:
    work = setup.work / "kinds"
    work.mkdir()
    aliases = {kind: unique_alias(f"f-{kind}") for kind in ALGORITHMS}
    for kind, alias in aliases.items():
        setup.server.key_admin.CreateKey(pb.CreateKeyRequest(alias=alias,
                                                             algorithm=ALGORITHMS[kind]))
    (work / "layout.json").write_text(_layout([_step(f"s-{k}", a) for k, a in aliases.items()]))
    setup.cli("sign-layout", "-l", "layout.json", "--key", "owner", "-o", "root.layout",
              cwd=work)
    setup.public_key("owner", setup.work)
    layout = str(work / "root.layout")
    before = json.loads((work / "root.layout").read_text())

    # One rotation of every alias: links by the promoted versions verify everywhere.
    for alias in aliases.values():
        _rotate(setup, alias)
    for kind, alias in aliases.items():
        setup.record(f"s-{kind}", alias, work / "one")
    custody, reference = _verify(setup, work / "one", layout, "owner")
    assert custody.returncode == 0, custody.stdout + custody.stderr
    assert reference.returncode == 0, reference.stderr

    # A second rotation: links by v3 are by a version the layout does not list.
    for alias in aliases.values():
        _rotate(setup, alias)
    for kind, alias in aliases.items():
        setup.record(f"s-{kind}", alias, work / "two")
    custody, reference = _verify(setup, work / "two", layout, "owner")
    assert custody.returncode == 1 and reference.returncode != 0
    for kind, alias in aliases.items():
        assert (f"is signed by {alias} v3, but the layout lists {alias} v1, {alias} v2 for "
                f"step 's-{kind}': {alias} was rotated after the layout was signed "
                f"({alias} v3 signs since ") in custody.stdout, custody.stdout
    assert "re-sign the layout (custody sign-layout --refresh)" in custody.stdout

    # --refresh re-resolves the keys and signs again, in place: both pass, old links too.
    setup.cli("sign-layout", "--refresh", "root.layout", cwd=work)
    for links in ("two", "one"):
        custody, reference = _verify(setup, work / links, layout, "owner")
        assert custody.returncode == 0, (links, custody.stdout + custody.stderr)
        assert reference.returncode == 0, (links, reference.stderr)
    after = json.loads((work / "root.layout").read_text())
    _same_but_keys(before["signed"], after["signed"])
    listed = {v.version: v.keyid for v in setup.server.versions(aliases["p256"])}
    # v1 and v2 in their windows (72 h), v3 active, v4 next
    assert after["signed"]["steps"][0]["pubkeys"] == [listed[n] for n in (1, 2, 3, 4)]
    assert [s["keyid"] for s in after["signatures"]] == [setup.server.key("owner").keyid]


def _same_but_keys(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Everything but the keyids in `keys` and the steps' `pubkeys` is as it was."""
    def without_keys(layout: dict[str, Any]) -> dict[str, Any]:
        steps = [{k: v for k, v in s.items() if k != "pubkeys"} for s in layout["steps"]]
        return {**{k: v for k, v in layout.items() if k != "keys"}, "steps": steps}

    assert without_keys(after) == without_keys(before)
    assert set(before["keys"]) != set(after["keys"])


def test_scheduled_rotation_unattended(setup: Setup) -> None:
    """The scheduler rotates `sched` every PERIOD seconds: a layout signed before keeps
    verifying after one rotation; after the second the verdict names the rotation; a
    refresh makes it pass. SignLayout said when the layout would stop working."""
    work = setup.work / "sched"
    work.mkdir()
    admin = setup.server.key_admin
    admin.CreateKey(pb.CreateKeyRequest(alias="sched"))
    signed = setup.server.custody.SignLayout(pb.SignLayoutRequest(
        layout=_layout([_step("package", "sched")]).encode(), key_alias="owner"))
    assert any("but sched rotates every 8s" in w and "links signed after its second "
               "rotation" in w for w in signed.warnings), signed.warnings
    (work / "root.layout").write_bytes(signed.signed)
    setup.public_key("owner", setup.work)
    layout = str(work / "root.layout")
    listed = json.loads(signed.signed)["signed"]["steps"][0]["pubkeys"]
    assert len(listed) == 2  # v1 and the next version v2: signed before any rotation

    def active_is(version: int) -> bool | None:
        return setup.server.key("sched").active_version == version or None

    within(2 * PERIOD, lambda: active_is(2))
    setup.record("package", "sched", work / "one")
    within(2 * PERIOD, lambda: active_is(3))
    setup.record("package", "sched", work / "two")
    versions = {v.version: v for v in setup.server.versions("sched")}
    assert [versions[1].keyid, versions[2].keyid] == listed

    custody, reference = _verify(setup, work / "one", layout, "owner")
    assert custody.returncode == 0, custody.stdout + custody.stderr
    assert reference.returncode == 0, reference.stderr
    custody, reference = _verify(setup, work / "two", layout, "owner")
    assert custody.returncode == 1 and reference.returncode != 0
    assert ("is signed by sched v3, but the layout lists sched v1, sched v2 for step "
            "'package': sched was rotated after the layout was signed") in custody.stdout
    setup.cli("sign-layout", "--refresh", "root.layout", cwd=work)
    custody, reference = _verify(setup, work / "two", layout, "owner")
    assert custody.returncode == 0, custody.stdout + custody.stderr
    assert reference.returncode == 0, reference.stderr
    rotations = [e for e in setup.server.audit_events("key-rotate")
                 if e["custody"]["key"]["alias"] == "sched"]
    assert {e["custody"]["trigger"] for e in rotations} == {"schedule"}


def test_a_retired_version_is_a_hard_stop(setup: Setup) -> None:
    work = setup.work / "retire"
    work.mkdir()
    alias = unique_alias("leak")
    setup.server.key_admin.CreateKey(pb.CreateKeyRequest(alias=alias))
    (work / "layout.json").write_text(_layout([_step("build", alias)]))
    setup.cli("sign-layout", "-l", "layout.json", "-o", "root.layout", cwd=work)
    setup.public_key("owner", setup.work)
    layout = str(work / "root.layout")
    setup.record("build", alias, work / "v1")
    _rotate(setup, alias)  # v1 verifies 72 h more
    setup.record("build", alias, work / "v2")
    assert _verify(setup, work / "v1", layout, "owner")[0].returncode == 0

    # v1 leaked: retired now, its links fail, naming the version and the time.
    retired = setup.cli("keys", "retire", alias, "--version", "1", cwd=work)
    ended = retired.stdout.strip().rsplit(" ", 1)[-1]
    custody, _ = _verify(setup, work / "v1", layout, "owner")
    assert custody.returncode == 1
    assert (f"{alias} v1 is retired: its window ended at {ended} (ended early by "
            "RetireKey)") in custody.stdout, custody.stdout
    assert _verify(setup, work / "v2", layout, "owner")[0].returncode == 0

    # Re-signed, the layout lists v2 (active) and v3 (next). Then v2 leaks: rotate with no
    # overlap. v3, already listed, signs from now on; v2 is refused from that moment.
    setup.cli("sign-layout", "--refresh", "root.layout", cwd=work)
    rotated = setup.cli("keys", "rotate", alias, "--overlap", "0s", cwd=work).stdout
    assert f"rotated {alias}: v3 signs now" in rotated, rotated
    ended = rotated.split("v2 verifies until ", 1)[1].split(";", 1)[0]
    setup.record("build", alias, work / "v3")
    custody, reference = _verify(setup, work / "v3", layout, "owner")
    assert custody.returncode == 0, custody.stdout + custody.stderr
    assert reference.returncode == 0, reference.stderr
    custody, _ = _verify(setup, work / "v2", layout, "owner")
    assert custody.returncode == 1
    assert f"{alias} v2 is retired: its window ended at {ended}" in custody.stdout


@pytest.mark.parametrize("envelope", ["metablock", "dsse"])
def test_two_owners_by_two_appends(setup: Setup, envelope: str) -> None:
    work = setup.work / f"owners-{envelope}"
    work.mkdir()
    second = unique_alias("security")
    setup.server.key_admin.CreateKey(pb.CreateKeyRequest(alias=second))
    setup.public_key("owner", setup.work)
    setup.public_key(second, setup.work)
    if envelope == "metablock":  # in-toto's way: each owner appends to an unsigned Metablock
        unsigned = {"signed": json.loads(_layout([_step("build", "build")])), "signatures": []}
        (work / "one.layout").write_text(json.dumps(unsigned))
        setup.cli("sign-layout", "--append", "one.layout", "--key", "owner", cwd=work)
    else:
        (work / "layout.json").write_text(_layout([_step("build", "build")]))
        setup.cli("sign-layout", "-l", "layout.json", "--key", "owner", "--envelope", "dsse",
                  "-o", "one.layout", cwd=work)
    setup.cli("sign-layout", "--append", "-l", "one.layout", "--key", second,
              "-o", "two.layout", cwd=work)
    document = json.loads((work / "two.layout").read_text())
    assert len(document["signatures"]) == 2
    assert ("payload" in document) == (envelope == "dsse")
    setup.record("build", "build", work / "links")

    custody, reference = _verify(setup, work / "links", str(work / "two.layout"),
                                 "owner", second)
    assert custody.returncode == 0, custody.stdout + custody.stderr
    assert reference.returncode == 0, reference.stderr
    for only in ("owner", second):  # either key alone: its signature is there
        custody, reference = _verify(setup, work / "links", str(work / "two.layout"), only)
        assert custody.returncode == 0 and reference.returncode == 0, only
    # Both keys required, one signature: both verifiers fail.
    custody, reference = _verify(setup, work / "links", str(work / "one.layout"),
                                 "owner", second)
    assert custody.returncode == 1 and "layout-signature" in custody.stdout, custody.stdout
    assert reference.returncode != 0
    assert "SignatureVerificationError" in reference.stderr or \
        "signature" in reference.stderr.lower(), reference.stderr

    # Appending the same key again: refused.
    again = setup.cli("sign-layout", "--append", "two.layout", "--key", second, cwd=work,
                      check=False)
    assert again.returncode != 0 and "is already signed by" in again.stderr

    # After rotations of `build`, one --refresh re-makes both owners' signatures.
    _rotate(setup, "build")
    _rotate(setup, "build")
    setup.record("build", "build", work / "later")
    assert _verify(setup, work / "later", str(work / "two.layout"), "owner", second)[0] \
        .returncode == 1
    setup.cli("sign-layout", "--refresh", "two.layout", cwd=work)
    refreshed = json.loads((work / "two.layout").read_text())
    assert len(refreshed["signatures"]) == 2
    custody, reference = _verify(setup, work / "later", str(work / "two.layout"),
                                 "owner", second)
    assert custody.returncode == 0, custody.stdout + custody.stderr
    assert reference.returncode == 0, reference.stderr
