"""`custody audit verify`: check an audit trail's files with custody_core.audit_trail.

The trail's format and the check itself live in the core (the server writes what the
core defines); this module reads the files, the keys and the retained checkpoints, and
turns the verdict into output and an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, TextIO

from custody_core.audit_trail import CHECKPOINT_ACTION, AuditFile, verify_audit_trail
from custody_core.errors import CustodyError

if TYPE_CHECKING:
    from custody_core.keys import PublicKey


def load_trusted_key(text: str) -> PublicKey:
    """An audit public key as PEM, or as the key JSON `custody keys get` prints."""
    from custody_core.keys import PublicKey

    stripped = text.strip()
    if stripped.startswith("{"):
        return PublicKey.from_dict(json.loads(stripped))
    return PublicKey.from_pem(stripped)


def run_audit_verify(options: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """0: the trail verifies; 1: it does not (the first bad entry is named); 2: usage."""
    out = out or sys.stdout
    if not options.key and not options.no_signatures:
        print("custody audit verify: give the audit public key with --key "
              "(or --no-signatures to check the chain only)", file=out)
        return 2
    try:
        trusted = (load_trusted_key(p.read_text(encoding="utf-8")) for p in options.key)
        keys = {k.keyid: k for k in trusted}
        files = [AuditFile(str(p), p.read_bytes()) for p in options.files]
        retained = (options.checkpoints.read_bytes().splitlines()
                    if options.checkpoints else [])
    except (OSError, ValueError, CustodyError) as error:
        print(f"custody audit verify: {error}", file=out)
        return 2
    retained = [line for line in retained if CHECKPOINT_ACTION.encode() in line]
    verdict = verify_audit_trail(files, trusted_keys=None if options.no_signatures else keys,
                                 retained_checkpoints=retained)
    for warning in verdict.warnings:
        print(f"warning: {warning}", file=out)
    if verdict.first_problem is not None:
        print(f"FAILED: first bad entry: {verdict.first_problem}", file=out)
        for problem in verdict.problems[1:]:
            print(f"  also: {problem}", file=out)
        return 1
    checked = "verified" if keys else "matching (signatures not checked)"
    print(f"OK: entries {verdict.first_sequence} to {verdict.last_sequence} "
          f"({verdict.entries} in {len(files)} file(s)), {verdict.checkpoints} checkpoint(s) "
          f"{checked}{', sealed' if verdict.sealed else ''}; chain {verdict.last_chain}",
          file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    from custody_client._cli.audit_arguments import add_audit_verify_arguments

    parser = argparse.ArgumentParser(prog="custody audit verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_audit_verify_arguments(parser)
    return run_audit_verify(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
