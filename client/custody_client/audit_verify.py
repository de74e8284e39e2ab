"""`custody audit verify`: check an audit trail's files with custody_core.audit_trail.

The trail's format and the check itself live in the core (the server writes what the
core defines); this module reads the files, the keys and the checkpoints given apart,
and turns the verdict into output and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from custody_core.audit_check import AuditFile, AuditVerdict, RetainedCheckpoint, verify_audit_trail
from custody_core.audit_trail import CHECKPOINT_ACTION
from custody_core.errors import CustodyError

if TYPE_CHECKING:
    from custody_core.keys import PublicKey

EXIT_INTACT = 0
EXIT_TAMPERED_OR_INCOMPLETE = 1
EXIT_CANNOT_CHECK = 2
EXIT_UNSEALED_TAIL = 3


def load_trusted_key(text: str) -> PublicKey:
    """An audit public key as PEM, or as the key JSON `custody keys get` prints."""
    from custody_core.keys import PublicKey
    from custody_core.strict_json import parse_json

    stripped = text.strip()
    if stripped.startswith("{"):
        return PublicKey.from_dict(parse_json(stripped.encode(), what="audit key").value)
    return PublicKey.from_pem(stripped)


def read_start(path: Path) -> RetainedCheckpoint:
    """The checkpoint to start from: a file holding one checkpoint line."""
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"--from-checkpoint {path}: holds {len(lines)} lines, not the one "
                         "checkpoint line to start from")
    try:
        return RetainedCheckpoint.from_line(lines[0])
    except ValueError as error:
        raise ValueError(f"--from-checkpoint {path}: {error}") from None


def run_audit_verify(options: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """0: the trail is intact; 1: it is tampered with or incomplete (the first bad entry
    is named), or nothing in it is authenticated; 2: it could not be checked (arguments,
    files, keys); 3: intact, but entries follow the last checkpoint."""
    out = out or sys.stdout
    if not options.key and not options.no_signatures:
        print("custody audit verify: give the audit public key with --key "
              "(or --no-signatures to check the chain only)", file=out)
        return EXIT_CANNOT_CHECK
    try:
        trusted = (load_trusted_key(p.read_text(encoding="utf-8")) for p in options.key)
        keys = {k.keyid: k for k in trusted}
        files = [AuditFile(str(p), p.read_bytes()) for p in options.files]
        retained = (options.checkpoints.read_bytes().splitlines()
                    if options.checkpoints else [])
        start = read_start(options.from_checkpoint) if options.from_checkpoint else None
    except (OSError, ValueError, CustodyError) as error:
        print(f"custody audit verify: {error}", file=out)
        return EXIT_CANNOT_CHECK
    retained = [line for line in retained if CHECKPOINT_ACTION.encode() in line]
    verdict = verify_audit_trail(files, trusted_keys=None if options.no_signatures else keys,
                                 retained_checkpoints=retained, start=start)
    for warning in verdict.warnings:
        print(f"warning: {warning}", file=out)
    if verdict.first_problem is not None:
        print(f"FAILED: first bad entry: {verdict.first_problem}", file=out)
        for problem in verdict.problems[1:]:
            print(f"  also: {problem}", file=out)
        if start is None and verdict.first_sequence > 1:
            print("hint: to verify from a checkpoint your SIEM retained on, name it with "
                  "--from-checkpoint FILE (entries before it are then not checked)", file=out)
        return EXIT_TAMPERED_OR_INCOMPLETE
    signed = bool(keys) and not options.no_signatures
    if signed and verdict.entries and not verdict.checkpoints and start is None:
        print(f"FAILED: no checkpoint in entries {verdict.first_sequence} to "
              f"{verdict.last_sequence} verifies: nothing in these files is authenticated "
              "(a trail forged from scratch looks the same)", file=out)
        return EXIT_TAMPERED_OR_INCOMPLETE
    print(_ok_line(verdict, files=len(files), signed=signed), file=out)
    if signed and verdict.unsealed and not options.allow_unsealed_tail:
        print(f"UNSEALED: entries {verdict.last_checkpoint + 1} to {verdict.last_sequence} "
              "follow the last checkpoint: no signature covers them yet (compare them with "
              "the checkpoints your SIEM retained, or verify again after the next "
              "checkpoint; --allow-unsealed-tail accepts them)", file=out)
        return EXIT_UNSEALED_TAIL
    return EXIT_INTACT


def _ok_line(verdict: AuditVerdict, *, files: int, signed: bool) -> str:
    trail = (f"trail {verdict.trail_id}" if verdict.trail_id
             else "a legacy trail (no trail id)")
    checked = "verified" if signed else "matching (signatures not checked)"
    unchecked = (f" entries before {verdict.first_sequence} not checked (started from the "
                 "checkpoint named);" if verdict.first_sequence > 1 else "")
    return (f"OK: entries {verdict.first_sequence} to {verdict.last_sequence} of {trail} "
            f"({verdict.entries} in {files} file(s)), {verdict.checkpoints} checkpoint(s) "
            f"{checked}{', sealed' if verdict.sealed else ''};{unchecked} "
            f"chain {verdict.last_chain}")


def main(argv: list[str] | None = None) -> int:
    from custody_client._cli.audit_arguments import add_audit_verify_arguments

    parser = argparse.ArgumentParser(prog="custody audit verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_audit_verify_arguments(parser)
    return run_audit_verify(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
