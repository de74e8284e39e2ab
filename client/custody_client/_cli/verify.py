"""`custody verify`: inspections here, verification on the server, a verdict for people."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from custody_client._cli.common import EXIT_FAILED, EXIT_OK, read_file
from custody_client._cli.inspections import (
    PendingInspection,
    inspections_wanted,
    parse_layout,
    parse_parameters,
    run_inspection,
)
from custody_client._cli.link_files import collect_links, holds_layout
from custody_client._cli.unlisted_links import unlisted_links
from custody_client._cli.verdict_output import format_verdict, verdict_json
from custody_client.errors import InputError, RecordingError
from custody_client.hashing import sha256_file
from custody_client.models import LayoutKey, VerifyFailure, VerifyResult
from custody_core.errors import MetadataError

log = logging.getLogger("custody.cli")

# Each round runs the inspections of one more level of sublayouts; more is a loop.
_MAX_ROUNDS = 8


def _layout_keys(args: argparse.Namespace) -> list[LayoutKey]:
    keys = [LayoutKey.from_file(path) for path in args.layout_keys or []]
    keys += [LayoutKey(alias=alias) for alias in args.layout_key_alias or []]
    if not keys:
        raise InputError("give at least one layout key: --layout-keys FILE... "
                         "or --layout-key-alias ALIAS...")
    return keys


def _artifacts(paths: list[str]) -> list[tuple[str, dict[str, str]]]:
    """(path as given, {"sha256": hex}) of each --artifact; InputError if one cannot be
    read (exit 2: nothing was asked of the server)."""
    artifacts = []
    for path in dict.fromkeys(paths):
        if not Path(path).is_file():
            raise InputError(f"--artifact {path}: not a file")
        try:
            artifacts.append((path, {"sha256": sha256_file(path)}))
        except RecordingError as error:
            raise InputError(f"--artifact {error}") from None
    return artifacts


def _could_not_run(result: VerifyResult, name: str, error: InputError) -> VerifyResult:
    failure = VerifyFailure(stage="inspections", step=name, rule="", paths=(),
                            reason=f"inspection '{name}' could not run here: {error}")
    return VerifyResult(passed=False, failures=(failure,), warnings=result.warnings,
                        verdict={})


class _CouldNotRunError(Exception):
    def __init__(self, name: str, cause: InputError) -> None:
        super().__init__(str(cause))
        self.name = name
        self.cause = cause


def _run_inspections(wanted: list[PendingInspection], links: dict[str, bytes],
                     ran: list[str], args: argparse.Namespace) -> bool:
    """Run in order until one returns non-zero; False if one did."""
    for inspection in wanted:
        try:
            run = run_inspection(inspection, timeout=args.inspection_timeout,
                                 show_output=args.verbose)
        except InputError as error:  # not found, not executable, timed out
            raise _CouldNotRunError(inspection.name, error) from None
        links[inspection.file_name] = run.link
        ran.append(inspection.file_name.removesuffix(".link"))
        if run.return_value != 0:
            return False
    return True


def _is_layout(data: bytes) -> bool:
    """Whether a link file holds a (sub)layout, whose inspections may want running."""
    return holds_layout(data)


def cmd_verify(args: argparse.Namespace) -> int:
    from custody_client._cli.common import open_client

    layout_bytes = read_file(args.layout, "layout")
    layout = parse_layout(layout_bytes, where=args.layout)
    keys = _layout_keys(args)
    parameters = parse_parameters(args.params or [])
    artifacts = _artifacts(args.artifacts or [])
    root = layout  # without --param nothing is substituted, as in in-toto-verify
    # A substitution that fails here fails at the server's parameters stage, before any
    # inspection runs.
    if parameters:
        with contextlib.suppress(MetadataError):
            root = layout.substituted(parameters)
    # No link directory but an artifact or a run: the links are the attestation store's.
    stored = args.link_dir is None and bool(artifacts or args.run_id)
    links: dict[str, bytes] = {}
    unlisted: dict[str, bytes] = {}
    if args.run_id and not stored:
        raise InputError("--run-id takes the links from the attestation store: give no "
                         "--link-dir with it")
    if stored:
        log.info("taking the links from the attestation store (%s)",
                 f"run {args.run_id}" if args.run_id else "the run that made the artifacts")
    else:
        link_dir = Path(args.link_dir or ".")
        links = collect_links(link_dir, layout)
        log.info("sending %d link files from %s", len(links), link_dir)
        # files the layout does not name, to explain a failure (a key rotation): never
        # counted
        unlisted = unlisted_links(link_dir, layout, sent=links)
    inspection_links: dict[str, bytes] = {}
    ran: list[str] = []
    could_not_run: _CouldNotRunError | None = None
    run = args.run_id or ""  # once a plan found the run, every later call verifies it
    with open_client(args) as client:
        def verify(*, plan: bool) -> VerifyResult:
            nonlocal run
            result = client.verify(layout=layout_bytes, layout_keys=keys, links=links,
                                   inspection_links=inspection_links, parameters=parameters,
                                   unlisted_links=unlisted, plan=plan, artifacts=artifacts,
                                   stored_links=stored, run_id=run)
            run = run or result.run_id
            return result

        sublayouts = any(_is_layout(data) for data in links.values())
        if root.inspections or sublayouts:
            # Plans (no verdict recorded or counted) say which inspections the verdict lacks:
            # they run only once everything before them checked out. Each round runs one
            # more level of sublayouts' inspections.
            planned = verify(plan=True)
            for _ in range(_MAX_ROUNDS):
                wanted = [] if planned.passed else inspections_wanted(
                    planned, root=root, links=links, done=set(inspection_links))
                if not wanted:
                    break
                try:
                    all_zero = _run_inspections(wanted, inspection_links, ran, args)
                except _CouldNotRunError as error:
                    could_not_run = error
                    break
                if not all_zero or not sublayouts:
                    break  # like the reference: the first failing inspection ends the run
                planned = verify(plan=True)
        result = verify(plan=False)  # the one Verify that is recorded
    if could_not_run is not None:
        result = _could_not_run(result, could_not_run.name, could_not_run.cause)
    _print(result, args=args, steps=len(layout.steps), ran=ran, artifacts=len(artifacts),
           stored=stored)
    return EXIT_OK if result.passed else EXIT_FAILED


def _print(result: VerifyResult, *, args: argparse.Namespace, steps: int,
           ran: list[str], artifacts: int, stored: bool) -> None:
    if args.json:
        print(verdict_json(result, layout_name=args.layout, inspections_run=ran,
                           run_id=result.run_id if stored else None))
        return
    text = format_verdict(result, layout_name=args.layout, steps=steps, inspections_run=ran,
                          show_trace=args.trace, quiet=args.quiet, artifacts=artifacts,
                          stored_run=result.run_id if stored else None)
    if text:
        print(text)
