"""The `custody` command line: in-toto's flag names wherever the meaning is the same."""

from __future__ import annotations

import argparse
from typing import Any

from custody_client import __version__
from custody_client._cli.audit_arguments import add_audit_verify_arguments
from custody_client.cli_keys import add_key_commands
from custody_client.local_tls import ENV_STATE_DIR
from custody_client.settings import DEFAULT_ADDRESS, ENV_CA, ENV_CERT, ENV_KEY_FILE, ENV_SERVER
from custody_core.api_enums import EnvelopeKind, KeyAlgorithm

DESCRIPTION = """\
Custody client for pipeline agents: record a step and have the Custody server sign its
link with a key that never leaves the HSM; verify a supply chain; sign layouts; manage
keys. A drop-in for in-toto-run, in-toto-record and in-toto-verify without a private key.
"""

EXIT_STATUS = """\
exit status (every command but audit verify, which says its own):
  0  done; for verify: the supply chain verified
  1  verify: the supply chain did not verify (as in-toto-verify); other commands:
     a failure that no other code names
  2  usage or input error: bad flags, or a file or value refused before any call
  3  the service could not be reached: down, TLS handshake failed, not serving,
     no answer within --timeout (a gate may retry: this says nothing of the release)
  4  the server refused the call: authentication, permission, a request it rejects
  run exits with its command's return code when the command fails; 130 if interrupted
"""

# in-toto-verify's default (in_toto.settings.LINK_CMD_EXEC_TIMEOUT)
DEFAULT_INSPECTION_TIMEOUT = 10.0

ENVELOPES = tuple(kind.value for kind in EnvelopeKind)
LAYOUT_ENVELOPES = (EnvelopeKind.METABLOCK.value, EnvelopeKind.DSSE.value)  # no STATEMENT
ALGORITHMS = tuple(algorithm.value for algorithm in KeyAlgorithm)


def _common_options() -> argparse.ArgumentParser:
    """Flags accepted before and after the command (SUPPRESS keeps the first one given)."""
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--server", metavar="ADDR", default=argparse.SUPPRESS,
                       help=f"server host:port (default: ${ENV_SERVER}, else {DEFAULT_ADDRESS})")
    group.add_argument("--ca", metavar="FILE", default=argparse.SUPPRESS,
                       help=f"CA certificate (PEM) to trust; turns TLS on (default: ${ENV_CA}, "
                            f"else the local default's in ${ENV_STATE_DIR}/tls)")
    group.add_argument("--cert", metavar="FILE", default=argparse.SUPPRESS,
                       help=f"client certificate (PEM) for mTLS (default: ${ENV_CERT})")
    group.add_argument("--key-file", metavar="FILE", default=argparse.SUPPRESS,
                       help=f"client certificate's private key (default: ${ENV_KEY_FILE})")
    group.add_argument("--tls", action="store_true", default=argparse.SUPPRESS,
                       help="use TLS even without --ca (the system's CA certificates)")
    group.add_argument("--plaintext", action="store_true", default=argparse.SUPPRESS,
                       help="no TLS, even if the local default's certificates are found "
                            "(only for a server started with tls.insecure)")
    group.add_argument("--timeout", metavar="S", type=float, default=argparse.SUPPRESS,
                       help="deadline of each call to the server, retries included (60)")
    verbosity = group.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="say what is being done")
    verbosity.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                           help="print errors only")
    return common


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse makes a ValueError a usage error)."""
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(text)
    return value


_seconds.__name__ = "seconds"  # argparse names the type in its error: "invalid seconds value"


def _batch_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_batch_size.__name__ = "batch size"


def _recording_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exclude", dest="exclude_patterns", nargs="+", metavar="PATTERN",
                        help="gitignore-style patterns of paths not to record (default: "
                             "'*.link*' '.git' '*.pyc' '*~')")
    parser.add_argument("--base-path", metavar="DIR",
                        help="record paths relative to DIR (default: the current directory)")
    parser.add_argument("--lstrip-paths", nargs="+", metavar="PREFIX",
                        help="remove these prefixes from recorded paths")
    parser.add_argument("-d", "--metadata-directory", metavar="DIR",
                        help="where the link (and the recording state) is written (default: .)")


def _signing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", metavar="ALIAS",
                        help="service key to sign with (default: the server's link key)")
    parser.add_argument("--envelope", choices=ENVELOPES, default="metablock",
                        help="metablock (in-toto's classic link), dsse, or statement "
                             "(in-toto Statement v1, link predicate v0.3)")
    parser.add_argument("--use-dsse", action="store_true",
                        help="same as --envelope dsse (in-toto's flag)")


def _run_id_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", metavar="ID",
                        help="the pipeline run this step belongs to: the server's "
                             "attestation store groups links by it (default: "
                             "$CUSTODY_RUN_ID, else the CI's: github:HOST/OWNER/REPO/"
                             "$GITHUB_RUN_ID, else gitlab:$CI_SERVER_HOST/$CI_PROJECT_PATH/"
                             "$CI_PIPELINE_ID; none: no run)")


def _links_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    links = _command(commands, common, "links",
                     help="the server's attestation store: list, get and add links")
    link_commands = links.add_subparsers(dest="links_command", required=True,
                                         metavar="list|get|add")
    listing = _command(link_commands, common, "list", help="stored links, newest first",
                       description="Stored links (or layouts) found by run, step, product "
                                   "and time, newest first.")
    listing.add_argument("--run-id", metavar="ID")
    listing.add_argument("--step", metavar="NAME")
    found_by = listing.add_mutually_exclusive_group()
    found_by.add_argument("--artifact", metavar="PATH",
                          help="links with a product of this file's SHA-256")
    found_by.add_argument("--digest", metavar="sha256:HEX",
                          help="links with a product of this digest")
    listing.add_argument("--since", metavar="TIME", help="stored at or after (ISO 8601)")
    listing.add_argument("--until", metavar="TIME", help="stored before (ISO 8601)")
    listing.add_argument("--limit", type=int, default=100, metavar="N",
                         help="at most N (default 100; 0: every page)")
    listing.add_argument("--layouts", action="store_true",
                         help="stored layouts instead of links")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    get = _command(link_commands, common, "get", help="one stored link or layout",
                   description="Write a stored file as it was signed (or, with --json, "
                               "what the store knows of it).")
    get.add_argument("id", metavar="ID", help="its id (SHA-256 of the file) or 8+ digits of it")
    get.add_argument("-o", "--output", default="-", metavar="FILE",
                     help="where to write it (default: stdout)")
    get.add_argument("-d", "--directory", metavar="DIR",
                     help="write it to DIR under its link file name")
    get.add_argument("--json", action="store_true", help="print what is known of it")
    add = _command(link_commands, common, "add",
                   help="store links signed elsewhere (checked by the server)",
                   description="Store link files signed by another tool: the server checks "
                               "that a key it knows, or one given, signed each.")
    add.add_argument("files", nargs="+", metavar="LINK")
    add.add_argument("--run-id", metavar="ID", help="the run they belong to (default: as "
                                                    "for run)")
    add.add_argument("--keys", nargs="+", metavar="FILE",
                     help="public keys (PEM or in-toto JSON) that may have signed them")
    add.add_argument("--key-alias", nargs="+", metavar="ALIAS",
                     help="service keys that may have signed them (any version)")


def _command(subparsers: Any, common: argparse.ArgumentParser, name: str,
             **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, parents=[common], allow_abbrev=False, **kwargs)
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(prog="custody", description=DESCRIPTION, allow_abbrev=False,
                                     parents=[common], epilog=EXIT_STATUS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"custody {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(
        commands, common, "run", help="record, run a step's command, have its link signed",
        description="Record materials, run the command, record products and byproducts, "
                    "have the server sign the link and write <step>.<keyid8>.link. Exits "
                    "with the command's return code when it fails.")
    run.add_argument("-n", "--step-name", required=True, metavar="NAME")
    run.add_argument("-m", "--materials", nargs="+", metavar="PATH")
    run.add_argument("-p", "--products", nargs="+", metavar="PATH")
    run.add_argument("-s", "--record-streams", action="store_true",
                     help="show and record the command's stdout and stderr")
    run.add_argument("-x", "--no-command", action="store_true",
                     help="record and sign without running a command")
    run.add_argument("--run-timeout", type=_seconds, metavar="S",
                     help="kill the command after S seconds (default: no limit)")
    run.add_argument("--no-sign-on-failure", action="store_true",
                     help="a command that fails (non-zero exit) gets no link: nothing is "
                          "signed or stored, and run exits with its code (default: the "
                          "link records the failure, as in-toto-run's)")
    _run_id_option(run)
    run.add_argument("--no-digest-cache", action="store_true",
                     help="read every product again, even files whose size, inode, mtime "
                          "and ctime show they did not change since the materials were read")
    _recording_options(run)
    _signing_options(run)
    run.add_argument("link_cmd", nargs="*", metavar="-- COMMAND",
                     help="the command and its arguments, after --")

    record = _command(commands, common, "record",
                      help="record a step that is not one command (start, stop)")
    phases = record.add_subparsers(dest="phase", required=True, metavar="start|stop")
    start = _command(phases, common, "start", help="record materials")
    start.add_argument("-n", "--step-name", required=True, metavar="NAME")
    start.add_argument("-m", "--materials", nargs="+", metavar="PATH")
    _recording_options(start)
    _signing_options(start)
    stop = _command(phases, common, "stop",
                    help="record products, have the link signed and written")
    stop.add_argument("-n", "--step-name", required=True, metavar="NAME")
    stop.add_argument("-p", "--products", nargs="+", metavar="PATH")
    _run_id_option(stop)
    _recording_options(stop)
    _signing_options(stop)

    verify = _command(
        commands, common, "verify", help="verify a supply chain (exit 0 pass, 1 fail)",
        description="Run the layout's inspections here, have the server verify layout, "
                    "links and inspections, print the verdict. Exit 0 if it passes, 1 if not.",
        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.add_argument("-l", "--layout", required=True, metavar="FILE")
    verify.add_argument("--layout-keys", "--verification-keys", dest="layout_keys", nargs="+",
                        metavar="FILE", help="public keys (PEM or in-toto JSON) that must "
                                             "have signed the layout")
    verify.add_argument("--layout-key-alias", nargs="+", metavar="ALIAS",
                        help="service keys that must have signed the layout")
    verify.add_argument("--link-dir", metavar="DIR",
                        help="where the links are (default: ., unless --artifact or "
                             "--run-id is given without it: then the server's attestation "
                             "store)")
    verify.add_argument("--artifact", dest="artifacts", nargs="+", action="extend",
                        metavar="PATH",
                        help="files to release (e.g. dist/app.tar.gz): pass only if each "
                             "one's SHA-256 is a product of the layout's final step(s) in "
                             "the links verified; without --link-dir the links are those "
                             "of the newest stored run whose final step made them")
    verify.add_argument("--run-id", metavar="ID",
                        help="verify the links the attestation store holds for this run")
    verify.add_argument("--param", dest="params", nargs="+", action="extend",
                        metavar="KEY=VALUE", help="layout parameter substitution")
    verify.add_argument("--inspection-timeout", type=_seconds, metavar="S",
                        default=DEFAULT_INSPECTION_TIMEOUT,
                        help="kill an inspection after S seconds; it then fails the "
                             f"verification (default: {DEFAULT_INSPECTION_TIMEOUT:g}, as "
                             "in-toto-verify)")
    verify.add_argument("--json", action="store_true", help="print the verdict as JSON")
    verify.add_argument("--trace", action="store_true", help="print the rule trace")

    sign_links = _command(
        commands, common, "sign-links", help="have many recorded links signed in batches",
        description="Read link drafts, one JSON object per line (step_name, command, "
                    "materials, products, byproducts, environment), have them signed in "
                    "SignLinks calls and write each <step>.<keyid8>.link; a link the server "
                    "refuses is one line on stderr. Exit 0 when every link was signed.")
    sign_links.add_argument("drafts", metavar="DRAFTS",
                            help="JSON lines file of link drafts ('-': stdin)")
    sign_links.add_argument("-d", "--metadata-directory", metavar="DIR",
                            help="where the links are written (default: .)")
    sign_links.add_argument("--batch-size", type=_batch_size, default=100, metavar="N",
                            help="links per SignLinks call (default: 100; the server takes "
                                 "at most its limits.max_links_per_batch)")
    _signing_options(sign_links)

    _links_commands(commands, common)

    sign_layout = _command(commands, common, "sign-layout", help="sign a layout with a service key")
    sign_layout.add_argument("layout_file", nargs="?", metavar="LAYOUT",
                             help="the layout (or -l FILE)")
    sign_layout.add_argument("-l", "--layout", metavar="FILE")
    sign_layout.add_argument("--key", metavar="ALIAS",
                             help="owner key (default: the server's layout key)")
    sign_layout.add_argument("-o", "--output", metavar="FILE",
                             help="where to write the signed layout ('-': stdout; default "
                                  "with --append or --refresh: the layout file itself)")
    sign_layout.add_argument("--envelope", choices=LAYOUT_ENVELOPES,
                             help="metablock (default) or dsse; --append and --refresh keep "
                                  "the layout's own")
    sign_mode = sign_layout.add_mutually_exclusive_group()
    sign_mode.add_argument("-a", "--append", action="store_true",
                           help="add a signature to a signed layout, changing nothing else "
                                "(several owners, as in-toto-sign -a)")
    sign_mode.add_argument("--refresh", action="store_true",
                           help="re-resolve a signed layout's service keys to their current "
                                "versions and sign it again with its owners")

    keys = _command(commands, common, "keys", help="key administration")
    key_commands = keys.add_subparsers(dest="keys_command", required=True,
                                       metavar="list|create|public|rotate|retire")
    listing = _command(key_commands, common, "list", help="list service keys")
    listing.add_argument("--json", action="store_true")
    create = _command(key_commands, common, "create", help="create a service key")
    create.add_argument("alias", metavar="ALIAS")
    create.add_argument("--algorithm", choices=ALGORITHMS, default="ecdsa-p256")
    public = _command(key_commands, common, "public", help="print a key's public key")
    public.add_argument("alias", metavar="ALIAS")
    public.add_argument("--format", choices=("pem", "json"), default="pem")
    public.add_argument("-o", "--output", default="-", metavar="FILE")
    add_key_commands(lambda name, text: _command(key_commands, common, name, help=text))

    audit = commands.add_parser("audit", help="check an audit trail (no server needed)")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="verify")
    add_audit_verify_arguments(audit_commands.add_parser(
        "verify", help="check the hash chain and signed checkpoints; name the first bad entry"))
    return parser
