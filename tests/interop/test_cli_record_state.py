"""`custody record start` keeps a signed preliminary link, as in-toto-record does, and
`record stop` signs nothing once it has been changed.

Whoever can write the working directory between `start` and `stop` must not be able to
change the recorded materials. in-toto-record signs its unfinished link at `start` and
checks the signature at `stop`; each case is run against it too, on the same edit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .interop_support import Cli, reference

pytestmark = pytest.mark.slow


def _work(directory: Path) -> Path:
    directory.mkdir()
    (directory / "src").mkdir()
    (directory / "src" / "a.py").write_text("print('a')\n")
    (directory / "src" / "b.py").write_text("print('b')\n")
    return directory


def _edit_materials(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def change(state: Path) -> None:
        document = json.loads(state.read_bytes())
        edit(document["signed"]["materials"])
        state.write_text(json.dumps(document))
    return change


def _other_digest(materials: dict[str, Any]) -> None:
    materials["src/a.py"]["sha256"] = "00" * 32


def _added(materials: dict[str, Any]) -> None:
    materials["src/evil.py"] = {"sha256": "11" * 32}


def _removed(materials: dict[str, Any]) -> None:
    del materials["src/b.py"]


CHANGES = {
    "other-digest": _edit_materials(_other_digest),
    "material-added": _edit_materials(_added),
    "material-removed": _edit_materials(_removed),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_preliminary_link_fails_stop_in_both_tools(cli: Cli, tmp_path: Path,
                                                             change: str) -> None:
    ours = _work(tmp_path / "custody")
    cli("record", "start", "-n", "edit", "-m", "src", cwd=ours)
    (state,) = ours.glob(".edit.link-unfinished")
    assert json.loads(state.read_bytes())["signatures"], "record start signs its state"
    CHANGES[change](state)

    stopped = cli("record", "stop", "-n", "edit", "-p", "src", cwd=ours, check=False)

    assert stopped.returncode != 0
    assert "not signed by the key" in stopped.stderr, stopped.stderr
    assert not list(ours.glob("edit.*.link"))  # nothing signed, nothing written
    assert state.is_file()  # the evidence stays

    theirs = _work(tmp_path / "in-toto")
    key = theirs / "key.pem"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    started = reference("in-toto-record", "start", "-n", "edit", "--signing-key", str(key),
                        "-m", "src", cwd=theirs)
    assert started.returncode == 0, started.stderr
    (unfinished,) = theirs.glob(".edit.*.link-unfinished")
    CHANGES[change](unfinished)
    refused = reference("in-toto-record", "stop", "-n", "edit", "--signing-key", str(key),
                        "-p", "src", cwd=theirs)
    assert refused.returncode == 1 and "SignatureVerificationError" in refused.stderr


def test_an_unchanged_preliminary_link_gives_its_materials(cli: Cli, tmp_path: Path) -> None:
    work = _work(tmp_path / "work")
    cli("record", "start", "-n", "edit", "-m", "src", cwd=work)
    (work / "src" / "a.py").write_text("print('edited')\n")  # the work between start and stop
    cli("record", "stop", "-n", "edit", "-p", "src", cwd=work)

    (link,) = work.glob("edit.*.link")
    signed = json.loads(link.read_bytes())["signed"]
    assert set(signed["materials"]) == {"src/a.py", "src/b.py"}
    assert signed["materials"]["src/a.py"] != signed["products"]["src/a.py"]
    assert not list(work.glob(".*.link-unfinished"))


def test_a_state_signed_with_another_key_is_refused(cli: Cli, tmp_path: Path) -> None:
    work = _work(tmp_path / "work")
    cli("record", "start", "-n", "edit", "-m", "src", "--key", "owner", cwd=work)
    stopped = cli("record", "stop", "-n", "edit", "-p", "src", cwd=work, check=False)
    assert stopped.returncode != 0 and "not signed by the key" in stopped.stderr


def test_an_unsigned_state_is_refused_before_any_call(cli: Cli, tmp_path: Path) -> None:
    work = _work(tmp_path / "work")
    cli("record", "start", "-n", "edit", "-m", "src", cwd=work)
    (state,) = work.glob(".edit.link-unfinished")
    document = json.loads(state.read_bytes())
    document["signatures"] = []
    state.write_text(json.dumps(document))
    stopped = cli("record", "stop", "-n", "edit", "-p", "src", cwd=work, check=False)
    assert stopped.returncode != 0 and "is not signed" in stopped.stderr
