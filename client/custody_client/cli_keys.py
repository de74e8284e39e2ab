"""`custody keys rotate|retire` and the lifecycle-aware `custody keys list`.

    custody keys rotate build --overlap 72h     # next v(N+1) signs; vN verifies 72 h more
    custody keys retire build --version 3       # end v3's window now (key compromise)
    custody keys list                           # versions, states, keyids, window ends,
                                                # next rotation

Wiring: the CLI's parser calls `add_key_commands(add)` with a function that adds one
subcommand to the `keys` group, and its dispatcher looks up `KEY_HANDLERS`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from custody_client._cli.common import EXIT_OK, open_client
from custody_client.errors import InputError
from custody_client.models import KeyAlgorithm, KeyInfo, KeyVersionInfo

log = logging.getLogger("custody.cli")

ALGORITHMS = tuple(a.value for a in KeyAlgorithm)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

AddCommand = Callable[[str, str], argparse.ArgumentParser]


def parse_duration(text: str) -> timedelta:
    """ "72h", "3d", "1d12h", "90m", "0s" (argparse type: ArgumentTypeError if not)."""
    value, position = 0.0, 0
    for match in _DURATION_PART.finditer(text.strip().lower()):
        if match.start() != position:
            break
        value += float(match[1]) * _UNIT_SECONDS[match[2]]
        position = match.end()
    if not text.strip() or position != len(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (e.g. 72h, 3d, 1d12h, 30m, 0s)")
    return timedelta(seconds=value)


def add_key_commands(add: AddCommand) -> None:
    """Add `rotate` and `retire` to the `keys` group; `add(name, help)` makes a subparser."""
    rotate = add("rotate", "make a key's next version the signer, and a new next version")
    rotate.add_argument("alias", metavar="ALIAS")
    rotate.add_argument("--overlap", type=parse_duration, metavar="DURATION",
                        help="how long the replaced version keeps verifying, e.g. 72h, 3d, "
                             "0s (default: the server's setting for the key, else 72h)")
    rotate.add_argument("--algorithm", choices=ALGORITHMS,
                        help="the new next version's algorithm (default: the current one); "
                             "the version that signs now keeps its own")
    retire = add("retire", "end a verify-only version's window now, or replace the next "
                           "version")
    retire.add_argument("alias", metavar="ALIAS")
    retire.add_argument("--version", type=int, required=True, metavar="N")


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    algorithm = KeyAlgorithm(args.algorithm) if args.algorithm else None
    with open_client(args) as client:
        rotation = client.rotate_key(args.alias, overlap=args.overlap, algorithm=algorithm)
    for warning in rotation.warnings:
        log.warning("%s", warning)
    until = _when(rotation.previous_verify_until)
    upcoming = (f"; next version v{rotation.key.next_version}"
                if rotation.key.next_version else "")
    print(f"rotated {rotation.key.alias}: v{rotation.new_version} signs now (keyid "
          f"{rotation.key.keyid[:16]}); v{rotation.previous_version} verifies until {until}"
          f"{upcoming}")
    return EXIT_OK


def cmd_keys_retire(args: argparse.Namespace) -> int:
    if args.version < 1:
        raise InputError("--version must be 1 or more")
    with open_client(args) as client:
        retirement = client.retire_key(args.alias, version=args.version)
    for warning in retirement.warnings:
        log.warning("%s", warning)
    key = retirement.key
    version = next((v for v in key.versions if v.version == args.version), None)
    ended = _when(version.verify_until) if version else "?"
    print(f"{key.alias} v{args.version} is {version.state if version else 'retired'}: "
          f"its window ended at {ended}")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        keys = client.list_keys()
    if args.json:
        print(json.dumps([key_dict(k) for k in keys], indent=2, sort_keys=True))
        return EXIT_OK
    rows = [("ALIAS", "VERSION", "STATE", "KEYID", "CREATED", "WINDOW ENDS", "NOTE")]
    for key in keys:
        rows.extend(
            (key.alias, f"v{v.version}", v.state, v.keyid[:16], _when(v.created),
             _when(v.verify_until), _note(key, v))
            for v in key.versions
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[-1])
    return EXIT_OK


KEY_HANDLERS: Mapping[str, Callable[[argparse.Namespace], int]] = {
    "list": cmd_keys_list,
    "rotate": cmd_keys_rotate,
    "retire": cmd_keys_retire,
}


def key_dict(key: KeyInfo) -> dict[str, object]:
    """A key as `custody keys list --json` prints it."""
    return {
        "alias": key.alias,
        "algorithm": key.algorithm.value if key.algorithm else None,
        "scheme": key.scheme,
        "keyid": key.keyid,
        "public_key": key.public_key_dict(),
        "rotation_period_seconds": (key.rotation_period.total_seconds()
                                    if key.rotation_period else None),
        "next_rotation": _iso(key.next_rotation),
        "next_version": key.next_version or None,
        "versions": [{"version": v.version, "keyid": v.keyid, "state": v.state,
                      "created": _iso(v.created), "activated": _iso(v.activated),
                      "verify_until": _iso(v.verify_until),
                      "retired": _iso(v.retired), "destroyed": _iso(v.destroyed)}
                     for v in key.versions],
    }


def _note(key: KeyInfo, version: KeyVersionInfo) -> str:
    if version.destroyed:
        return f"private key destroyed {_when(version.destroyed)}"
    if version.retired:
        return "window ended early (retired)"
    if version.state == "active" and key.next_rotation:
        return f"next rotation {_when(key.next_rotation)}"
    if version.state == "next":
        when = f" ({_when(key.next_rotation)})" if key.next_rotation else ""
        return f"signs from the next rotation{when}"
    return ""


def _iso(moment: datetime | None) -> str | None:
    return _when(moment) if moment else None


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
