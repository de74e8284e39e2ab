"""custody_server.softhsm and softhsm/init-token.sh make usable, reusable tokens.

These run softhsm2-util in subprocesses with their own SOFTHSM2_CONF; the module loaded in
this process keeps the session token (see conftest).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from custody_server.softhsm import (
    SoftHsmError,
    SoftHsmToken,
    find_softhsm_module,
    init_token,
)

REPO = Path(__file__).resolve().parents[2]
INIT_TOKEN_SH = REPO / "softhsm" / "init-token.sh"


def labels_on(conf_path: Path) -> str:
    result = subprocess.run(
        ["softhsm2-util", "--show-slots"],
        env={**os.environ, "SOFTHSM2_CONF": str(conf_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def can_log_in(token_dir: Path, *, label: str, pin: str) -> bool:
    """Log in from a fresh process (this one has already loaded the module)."""
    script = (
        "import pkcs11, sys\n"
        f"token = pkcs11.lib({find_softhsm_module()!r}).get_token(token_label={label!r})\n"
        "token.open(user_pin=sys.stdin.read()).close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=pin,
        env={**os.environ, "SOFTHSM2_CONF": str(token_dir / "softhsm2.conf")},
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


def test_the_session_token_is_the_one_the_fixture_made(softhsm_token: SoftHsmToken) -> None:
    assert os.environ["SOFTHSM2_CONF"] == str(softhsm_token.conf_path)
    conf = softhsm_token.conf_path.read_text()
    assert f"directories.tokendir = {softhsm_token.directory / 'tokens'}" in conf
    assert "objectstore.backend = file" in conf
    assert "log.level = ERROR" in conf


def test_init_token_makes_a_token_with_a_private_pin_file(
    softhsm_token: SoftHsmToken, tmp_path: Path
) -> None:
    token = init_token(tmp_path / "hsm", label="fresh")
    assert token.conf_path == (tmp_path / "hsm" / "softhsm2.conf").resolve()
    assert stat.S_IMODE(token.pin_file.stat().st_mode) == 0o600
    pin = token.read_pin()
    assert len(pin) >= 16
    assert "fresh" in labels_on(token.conf_path)
    assert can_log_in(token.directory, label="fresh", pin=pin)
    assert not can_log_in(token.directory, label="fresh", pin=pin + "x")


def test_init_token_is_idempotent_and_refuses_a_second_label(
    softhsm_token: SoftHsmToken, tmp_path: Path
) -> None:
    first = init_token(tmp_path, label="again", pin="1234-chosen")
    second = init_token(tmp_path, label="again")
    assert second == first
    assert second.read_pin() == "1234-chosen"
    assert labels_on(first.conf_path).count("again") == 1
    with pytest.raises(SoftHsmError, match="already holds"):
        init_token(tmp_path, label="other")
    assert second.read_pin() == "1234-chosen"


def test_pins_are_checked_and_never_shown(softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    with pytest.raises(SoftHsmError, match="4 to 255"):
        init_token(tmp_path / "short", pin="123")
    result = subprocess.run(
        [sys.executable, "-m", "custody_server.softhsm", str(tmp_path / "cli"), "--label", "cli"],
        env={**os.environ, "PYTHONPATH": f"{REPO / 'core'}{os.pathsep}{REPO / 'server'}"},
        capture_output=True,
        text=True,
        check=True,
    )
    pin = (tmp_path / "cli" / "user.pin").read_text().strip()
    assert f"export SOFTHSM2_CONF={tmp_path / 'cli' / 'softhsm2.conf'}" in result.stdout
    assert pin not in result.stdout + result.stderr


def test_module_path_can_be_configured(
    softhsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUSTODY_PKCS11_MODULE", softhsm_token.module_path)
    assert find_softhsm_module() == softhsm_token.module_path
    monkeypatch.setenv("CUSTODY_PKCS11_MODULE", str(tmp_path / "missing.so"))
    with pytest.raises(SoftHsmError, match="missing"):
        find_softhsm_module()


def test_shell_script_makes_a_token_the_python_tool_reuses(
    softhsm_token: SoftHsmToken, tmp_path: Path
) -> None:
    run = subprocess.run(
        ["bash", str(INIT_TOKEN_SH), str(tmp_path), "--label", "compose"],
        capture_output=True,
        text=True,
        check=True,
    )
    pin = (tmp_path / "user.pin").read_text().strip()
    assert stat.S_IMODE((tmp_path / "user.pin").stat().st_mode) == 0o600
    assert pin not in run.stdout + run.stderr
    assert can_log_in(tmp_path, label="compose", pin=pin)
    # Running it again reuses the token; so does the Python tool.
    subprocess.run(["bash", str(INIT_TOKEN_SH), str(tmp_path), "--label", "compose"],
                   capture_output=True, check=True)
    assert (tmp_path / "user.pin").read_text().strip() == pin
    assert init_token(tmp_path, label="compose").read_pin() == pin
    assert labels_on(tmp_path / "softhsm2.conf").count("compose") == 1
