"""The command line of `custody audit verify FILE... --key KEY [--checkpoints FILE]
[--from-checkpoint FILE]`.

Apart from custody_client.audit_verify, which runs it, so that building the `custody`
parser for every command does not load the trail's verifier (a start-up cost: see
docs/PERFORMANCE.md#client-start-up-and-exit).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXIT_STATUS = """\
The files must hold the whole trail, from its genesis (entry 1) to its end, unless
--from-checkpoint names a checkpoint to start from: then entries before the files'
start are not checked, and the output says so.

Only a checkpoint signature authenticates entries offline: entries after the last
checkpoint are chained but could have been appended by anyone who can write the files.

exit status:
  0  the trail is intact: every entry is there, matches its chain, and is sealed by a
     verified checkpoint
  1  it is tampered with or incomplete (the output names the first bad entry), or no
     checkpoint in it verifies (nothing in it is authenticated)
  2  it could not be checked: bad arguments, a file or key missing or unreadable
  3  intact up to its last checkpoint, but entries follow that no checkpoint seals yet
     (a running server's trail, a crash, or entries appended since):
     --allow-unsealed-tail turns this into 0
"""


def add_audit_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUS
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("files", nargs="+", type=Path,
                        help="the trail's files (audit.log and rotated audit.*.log), any order")
    parser.add_argument("--key", action="append", type=Path, default=[],
                        help="the audit public key (PEM or key JSON); repeat for each version")
    parser.add_argument("--checkpoints", type=Path, metavar="FILE",
                        help="checkpoint lines your SIEM retained: each must agree with the "
                             "files and attest an entry they hold (exposes a cut tail or head)")
    parser.add_argument("--from-checkpoint", type=Path, metavar="FILE",
                        help="a file holding one retained checkpoint line: verify from it on "
                             "(when older files are archived or gone); its signature is "
                             "checked with --key, and the files must reach back to the entry "
                             "after the one it attests")
    parser.add_argument("--allow-unsealed-tail", action="store_true",
                        help="exit 0 when the trail is intact but entries follow its last "
                             "checkpoint (a running server's trail); they are still listed")
    parser.add_argument("--no-signatures", action="store_true",
                        help="check the chain only, not the checkpoint signatures")
