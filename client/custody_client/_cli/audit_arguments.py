"""The command line of `custody audit verify FILE... --key KEY [--checkpoints FILE]`.

Apart from custody_client.audit_verify, which runs it, so that building the `custody`
parser for every command does not load the trail's verifier (~6 ms).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_audit_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path,
                        help="the trail's files (audit.log and rotated audit.*.log), any order")
    parser.add_argument("--key", action="append", type=Path, default=[],
                        help="the audit public key (PEM or key JSON); repeat for each version")
    parser.add_argument("--checkpoints", type=Path,
                        help="checkpoint lines your SIEM retained: exposes a cut tail")
    parser.add_argument("--no-signatures", action="store_true",
                        help="check the chain only, not the checkpoint signatures")
