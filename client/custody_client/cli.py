"""`custody`: the command pipeline agents run (entry point `custody_client.cli:main`).

`custody --version` answers before anything else is imported, gRPC included. Every
error is one line on stderr, `custody <command>: <what went wrong>`. Exit codes, the same
for every command (custody_client._cli.common): 0 done (the chain verified), 1 the chain
failed to verify, 2 a usage or input error, 3 the service could not be reached (down,
TLS handshake failed, not serving, no answer in time), 4 the server refused the call,
130 interrupted; `custody run` exits with the command's return code if it failed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from custody_client import __version__

if TYPE_CHECKING:
    import argparse


def _handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The command's function; only its own module is imported (start-up time)."""
    if args.command in ("run", "record"):
        from custody_client._cli import steps

        if args.command == "run":
            return steps.cmd_run
        return steps.cmd_record_start if args.phase == "start" else steps.cmd_record_stop
    if args.command == "audit":
        from custody_client.audit_verify import run_audit_verify

        return run_audit_verify
    if args.command == "verify":
        from custody_client._cli import verify

        return verify.cmd_verify
    if args.command == "links":
        from custody_client._cli import links

        return links.HANDLERS[args.links_command]
    if args.command == "sign-links":
        from custody_client._cli import batch

        return batch.cmd_sign_links
    from custody_client._cli import admin

    if args.command == "sign-layout":
        return admin.cmd_sign_layout
    from custody_client import cli_keys

    return {"create": admin.cmd_keys_create, "public": admin.cmd_keys_public,
            **cli_keys.KEY_HANDLERS}[args.keys_command]


def _configure_logging(*, verbose: bool, quiet: bool) -> None:
    import logging

    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    from custody_core.display import escape_unprintable

    class OneLine(logging.Formatter):
        """Each message one line of safe text: warnings may quote a link's paths."""

        def format(self, record: logging.LogRecord) -> str:
            return escape_unprintable(super().format(record))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine("custody: %(message)s"))
    root = logging.getLogger("custody")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--version"]:  # the fast path: no argparse, no gRPC
        print(f"custody {__version__}")
        return 0
    if argv is None:  # the program itself, not a caller in the same process
        _skip_the_final_collection()
    from custody_client._cli.common import EXIT_FAILED, EXIT_INTERRUPTED, exit_code_for
    from custody_client._cli.parser import build_parser
    from custody_core.errors import CustodyError

    args = build_parser().parse_args(arguments)
    for flag in ("verbose", "quiet"):
        setattr(args, flag, getattr(args, flag, False))
    _configure_logging(verbose=args.verbose, quiet=args.quiet)
    name = " ".join(filter(None, ("custody", args.command, getattr(args, "phase", None),
                                  getattr(args, "keys_command", None),
                                  getattr(args, "links_command", None),
                                  getattr(args, "audit_command", None))))
    try:
        return _handler(args)(args)
    except CustodyError as error:
        print(f"{name}: {_one_line(str(error))}", file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `custody keys list | head`
        return EXIT_FAILED


def _skip_the_final_collection() -> None:
    """At exit the interpreter runs one last full garbage collection over every object
    still alive, gRPC's and protobuf's included (measured: see
    docs/PERFORMANCE.md#client-start-up-and-exit): freeze them just before, so that it
    skips them. Nothing of ours waits for that collection: links are written and the
    channel is closed before main() returns."""
    import atexit
    import gc

    atexit.register(gc.freeze)


def _one_line(text: str) -> str:
    """An error as one line of safe text: a server's message may quote a peer's input."""
    from custody_core.display import escape_unprintable

    return escape_unprintable(" ".join(text.split())) or "failed"


if __name__ == "__main__":
    sys.exit(main())
