"""`custody links list|get|add`: the server's attestation store, for people."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from custody_client._cli.common import (
    EXIT_OK,
    checked_link_name,
    open_client,
    read_file,
    write_file,
)
from custody_client.errors import InputError, RecordingError
from custody_client.hashing import sha256_file
from custody_client.models import LayoutKey, StoredLink
from custody_client.run_ids import run_id
from custody_core.display import escape_unprintable

PAGE = 1000  # links per ListLinks call when more are wanted


def _time(text: str | None, flag: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{flag} {text[:40]!r}: expected an ISO 8601 time, e.g. "
                         "2026-05-01T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _digest(args: argparse.Namespace) -> str:
    if args.digest:
        return str(args.digest)
    if args.artifact:
        try:
            return f"sha256:{sha256_file(args.artifact)}"
        except RecordingError as error:
            raise InputError(f"--artifact {error}") from None
    return ""


def _line(link: StoredLink) -> str:
    stored = link.stored.strftime("%Y-%m-%dT%H:%M:%SZ") if link.stored else "?"
    name = link.file_name or f"({link.kind})"
    run = link.run_id or "-"
    return escape_unprintable(
        f"{link.id[:16]}  {stored}  {run:<24}  {name}  {link.origin} by {link.caller}")


def cmd_links_list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise InputError("--limit must be 0 (every page) or more")
    digest = _digest(args)
    since, until = _time(args.since, "--since"), _time(args.until, "--until")
    wanted = args.limit or None
    shown = 0
    token = ""
    with open_client(args) as client:
        while True:
            size = PAGE if wanted is None else min(PAGE, wanted - shown)
            links, token = client.list_links(
                run_id=args.run_id or "", step=args.step or "", artifact_digest=digest,
                since=since, until=until, limit=size, page_token=token,
                kind="layout" if args.layouts else "link")
            for link in links:
                print(json.dumps(link.to_dict(), sort_keys=True) if args.json
                      else _line(link))
            shown += len(links)
            if not token or (wanted is not None and shown >= wanted):
                break
    return EXIT_OK


def cmd_links_get(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        link = client.get_link(args.id)
    if args.json:
        print(json.dumps(link.to_dict(), sort_keys=True))
        return EXIT_OK
    if args.directory:
        if not link.file_name:
            raise InputError(f"{link.id[:16]} is a {link.kind}, which has no file name: "
                             "use -o FILE")
        write_file(Path(args.directory) / checked_link_name(link.file_name), link.content)
    elif args.output == "-":
        sys.stdout.buffer.write(link.content)
        sys.stdout.flush()
    else:
        write_file(Path(args.output), link.content)
    return EXIT_OK


def cmd_links_add(args: argparse.Namespace) -> int:
    keys = [LayoutKey.from_file(path) for path in args.keys or []]
    keys += [LayoutKey(alias=alias) for alias in args.key_alias or []]
    run = run_id(args.run_id)
    files = [(path, read_file(path, "link")) for path in args.files]
    with open_client(args) as client:
        for path, content in files:
            stored = client.add_link(content, run_id=run, keys=keys)
            if not args.quiet:
                print(escape_unprintable(
                    f"{path}: stored as {stored.id[:16]} ({stored.file_name}"
                    + (f", run {stored.run_id}" if stored.run_id else "") + ")"))
    return EXIT_OK


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": cmd_links_list, "get": cmd_links_get, "add": cmd_links_add}
