"""Create a SoftHSM2 configuration and token in a directory, for development and tests.

`init_token` writes DIR/softhsm2.conf (tokens in DIR/tokens, file object store), initializes a
token with `softhsm2-util` and keeps the user PIN in DIR/user.pin (mode 0600). It is idempotent:
a token that already carries the label is reused. One directory holds one token.

PINs are typed into `softhsm2-util` through a pseudo-terminal rather than passed as
`--pin`/`--so-pin`, so they never appear in the process list. The SO PIN is random and not
kept unless the caller supplies one.

Run `python -m custody_server.softhsm DIR [--label L]` to prepare a token from a shell.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import select
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from custody_core.errors import CustodyError

MODULE_ENV_VAR = "CUSTODY_PKCS11_MODULE"
CONF_ENV_VAR = "SOFTHSM2_CONF"

# Where Debian, Ubuntu, Fedora and Alpine put the module, most likely first.
_KNOWN_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
_PIN_MIN, _PIN_MAX = 4, 255
_UTIL_TIMEOUT_SECONDS = 30.0


class SoftHsmError(CustodyError):
    """SoftHSM tooling is missing or `softhsm2-util` failed (the message never holds a PIN)."""


@dataclass(frozen=True)
class SoftHsmToken:
    """A SoftHSM2 token prepared in `directory`; point SOFTHSM2_CONF at `conf_path` to use it."""

    directory: Path
    conf_path: Path
    token_label: str
    module_path: str
    pin_file: Path

    def __post_init__(self) -> None:
        if not self.token_label:
            raise ValueError("token_label must not be empty")

    def read_pin(self) -> str:
        """The user PIN, read from `pin_file` (keep it out of logs)."""
        return self.pin_file.read_text(encoding="utf-8").strip()

    def environment(self) -> dict[str, str]:
        """Variables a process needs to find this token (no secret in them)."""
        return {CONF_ENV_VAR: str(self.conf_path), MODULE_ENV_VAR: self.module_path}


def find_softhsm_module() -> str:
    """Path of libsofthsm2.so: env CUSTODY_PKCS11_MODULE first, then the usual install paths."""
    configured = os.environ.get(MODULE_ENV_VAR)
    if configured:
        if not Path(configured).is_file():
            raise SoftHsmError(f"{MODULE_ENV_VAR} names a missing file: {configured}")
        return configured
    for candidate in _KNOWN_MODULE_PATHS:
        if Path(candidate).is_file():
            return candidate
    raise SoftHsmError(
        f"libsofthsm2.so not found (install softhsm2 or set {MODULE_ENV_VAR})"
    )


def find_softhsm_util() -> str:
    """Path of the `softhsm2-util` executable."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise SoftHsmError("softhsm2-util not found on PATH (install the softhsm2 package)")
    return util


def init_token(
    directory: Path,
    *,
    label: str = "custody",
    pin: str | None = None,
    so_pin: str | None = None,
) -> SoftHsmToken:
    """Create (or reuse) a SoftHSM2 token labelled `label` whose files live in `directory`."""
    for name, value in (("pin", pin), ("so_pin", so_pin)):
        if value is not None and not _PIN_MIN <= len(value) <= _PIN_MAX:
            raise SoftHsmError(f"{name} must have {_PIN_MIN} to {_PIN_MAX} characters")
    if not label or len(label) > 32:
        raise SoftHsmError("token label must have 1 to 32 characters")
    directory = directory.resolve()
    token_dir = directory / "tokens"
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf_path = directory / "softhsm2.conf"
    _write_conf(conf_path, token_dir=token_dir)
    token = SoftHsmToken(
        directory=directory,
        conf_path=conf_path,
        token_label=label,
        module_path=find_softhsm_module(),
        pin_file=directory / "user.pin",
    )
    util = find_softhsm_util()
    env = {**os.environ, CONF_ENV_VAR: str(conf_path)}
    existing_labels = _initialized_token_labels(util, env=env)
    if label in existing_labels:
        if pin is not None:
            _write_pin_file(token.pin_file, pin)
        elif not token.pin_file.is_file():
            raise SoftHsmError(
                f"token {label!r} exists but {token.pin_file} is missing: pass the PIN"
            )
        return token
    if existing_labels:
        # One directory holds one token: a second one would overwrite the first one's PIN file.
        raise SoftHsmError(
            f"{directory} already holds token(s) {sorted(existing_labels)}; use another directory"
        )
    user_pin = pin if pin is not None else secrets.token_urlsafe(24)
    _run_init_token(
        util,
        env=env,
        label=label,
        so_pin=so_pin if so_pin is not None else secrets.token_urlsafe(24),
        user_pin=user_pin,
    )
    _write_pin_file(token.pin_file, user_pin)
    return token


def _write_conf(conf_path: Path, *, token_dir: Path) -> None:
    conf_path.write_text(
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )


def _write_pin_file(pin_file: Path, pin: str) -> None:
    # Create with 0600 from the start so the PIN is never readable by others, even briefly.
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(pin + "\n")
    os.chmod(pin_file, 0o600)


def _initialized_token_labels(util: str, *, env: Mapping[str, str]) -> set[str]:
    result = subprocess.run(
        [util, "--show-slots"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=_UTIL_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise SoftHsmError(f"softhsm2-util --show-slots failed: {result.stderr.strip()}")
    labels: set[str] = set()
    initialized = False
    for line in result.stdout.splitlines():
        stripped = line.strip()
        if stripped.startswith("Initialized:"):
            initialized = stripped.endswith("yes")
        elif stripped.startswith("Label:") and initialized:
            labels.add(stripped.removeprefix("Label:").strip())
    return labels


def _run_init_token(
    util: str, *, env: Mapping[str, str], label: str, so_pin: str, user_pin: str
) -> None:
    """Run `softhsm2-util --init-token` and answer its PIN prompts on a pseudo-terminal."""
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(
            [util, "--init-token", "--free", "--label", label],
            env=dict(env),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            close_fds=True,
        )
    finally:
        os.close(terminal)
    try:
        transcript = _answer_pin_prompts(controller, so_pin=so_pin, user_pin=user_pin)
        returncode = process.wait(timeout=_UTIL_TIMEOUT_SECONDS)
    except (subprocess.TimeoutExpired, SoftHsmError):
        process.kill()
        process.wait()
        raise
    finally:
        os.close(controller)
    if returncode != 0:
        # The transcript shows prompts and '*' echoes only, never the PINs themselves.
        raise SoftHsmError(f"softhsm2-util --init-token failed: {_last_line(transcript)}")


_PROMPT = re.compile(r"Please (?:re)?enter (SO|user) PIN: $")


def _answer_pin_prompts(controller: int, *, so_pin: str, user_pin: str) -> str:
    transcript = ""
    deadline = time.monotonic() + _UTIL_TIMEOUT_SECONDS
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SoftHsmError("softhsm2-util --init-token timed out")
        readable, _, _ = select.select([controller], [], [], remaining)
        if not readable:
            continue
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            return transcript
        if not chunk:
            return transcript
        transcript += chunk.decode("utf-8", errors="replace")
        prompt = _PROMPT.search(transcript)
        if prompt is not None:
            answer = so_pin if prompt.group(1) == "SO" else user_pin
            transcript = transcript[: prompt.start()] + "<prompt answered>\n"
            os.write(controller, answer.encode("utf-8") + b"\n")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m custody_server.softhsm",
        description="Create (or reuse) a SoftHSM2 token whose files live in DIR.",
    )
    parser.add_argument("directory", type=Path, help="directory for the config, tokens and PIN")
    parser.add_argument("--label", default="custody", help="token label (default: custody)")
    args = parser.parse_args(argv)
    try:
        token = init_token(args.directory, label=args.label)
    except SoftHsmError as error:
        parser.exit(1, f"error: {error}\n")
    print(f"export {CONF_ENV_VAR}={token.conf_path}")
    print(f"export {MODULE_ENV_VAR}={token.module_path}")
    print(f"# token {token.token_label!r}: user PIN in {token.pin_file} (mode 0600)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
