"""Running a step's or an inspection's command, as in-toto's runlib records it."""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from custody_client.errors import InputError


class CommandTimeoutError(InputError):
    """The command ran longer than allowed and was killed."""


@dataclass(frozen=True)
class CommandResult:
    return_code: int
    stdout: str = ""
    stderr: str = ""


def _universal_newlines(data: bytes) -> str:
    """Decode as in-toto's text-mode capture does: UTF-8, and \\r\\n and \\r become \\n."""
    return data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")


def _tee(source: IO[bytes], sink: IO[bytes] | None, parts: list[bytes]) -> None:
    """Copy a child's stream to ours while keeping a copy (in-toto's --record-streams)."""
    while chunk := source.read1(65536):  # type: ignore[attr-defined]
        parts.append(chunk)
        if sink is not None:
            sink.write(chunk)
            sink.flush()


def run_command(
    command: Sequence[str],
    *,
    record_streams: bool,
    timeout: float | None,
    show_output: bool = True,
    output: IO[bytes] | None = None,
) -> CommandResult:
    """Run `command` (no shell). With `record_streams`, stdout and stderr are shown and
    captured; otherwise they are shown (or discarded) and recorded as empty strings.

    `output` sends the command's stdout elsewhere (e.g. stderr, to keep our stdout clean).
    """
    out_sink = (output or sys.stdout.buffer) if show_output else None
    err_sink = sys.stderr.buffer if show_output else None
    if record_streams or (show_output and output is not None):
        stdout_target: int | None = subprocess.PIPE
    else:
        stdout_target = None if show_output else subprocess.DEVNULL
    if record_streams:
        stderr_target: int | None = subprocess.PIPE
    else:
        stderr_target = None if show_output else subprocess.DEVNULL
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        process = subprocess.Popen(  # the user's own command, no shell
            list(command),
            stdin=None if show_output else subprocess.DEVNULL,
            stdout=stdout_target,
            stderr=stderr_target,
        )
    except FileNotFoundError:
        raise InputError(f"command not found: {command[0]}") from None
    except PermissionError:
        raise InputError(f"command not executable: {command[0]}") from None
    except OSError as error:
        raise InputError(f"cannot run {command[0]}: {error.strerror}") from None
    stdout_parts: list[bytes] = []
    stderr_parts: list[bytes] = []
    readers = []
    if process.stdout is not None:
        readers.append(threading.Thread(target=_tee, args=(process.stdout, out_sink,
                                                            stdout_parts), daemon=True))
    if process.stderr is not None:
        readers.append(threading.Thread(target=_tee, args=(process.stderr, err_sink,
                                                            stderr_parts), daemon=True))
    for reader in readers:
        reader.start()
    try:
        return_code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise CommandTimeoutError(
            f"{shlex.join(command)} ran longer than {timeout:g} s and was killed") from None
    except BaseException:  # Ctrl-C: do not leave the child running
        process.kill()
        process.wait()
        raise
    finally:
        for reader in readers:
            reader.join()
    if not record_streams:
        return CommandResult(return_code=return_code)
    return CommandResult(
        return_code=return_code,
        stdout=_universal_newlines(b"".join(stdout_parts)),
        stderr=_universal_newlines(b"".join(stderr_parts)),
    )
