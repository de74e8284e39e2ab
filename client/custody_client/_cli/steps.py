"""`custody run` and `custody record start|stop`: record, run, ask SignLink, write the link."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

from custody_client._cli.common import (
    EXIT_OK,
    ClientInBackground,
    ProgressLine,
    checked_link_name,
    envelope_from_args,
    metadata_directory,
    recording_options,
    write_file,
)
from custody_client._cli.process import CommandResult, run_command
from custody_client.digest_cache import DigestCache
from custody_client.errors import InputError
from custody_client.link_draft import LinkDraft
from custody_client.models import Byproducts, SignedMetadata
from custody_client.recording import iter_artifacts
from custody_core.errors import MetadataError
from custody_core.strict_json import parse_json

log = logging.getLogger("custody.cli")

_HEX64 = re.compile(r"[0-9a-f]{64}")
STATE_SUFFIX = ".link-unfinished"  # matched by the default exclude "*.link*"


def _check_step_name(name: str) -> str:
    if not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise InputError(f"step name {name!r:.80} cannot name a file (no '/', not empty)")
    return name


def _exit_code(result: CommandResult | None) -> int:
    """The command's own return code; a signal becomes 128 + its number, like a shell."""
    if result is None or result.return_code == 0:
        return EXIT_OK
    if result.return_code < 0:
        return 128 - result.return_code
    return min(result.return_code, 255)


def _write_link(directory: Path, signed: SignedMetadata) -> Path:
    path = directory / checked_link_name(signed.file_name)
    write_file(path, signed.content)
    log.info("wrote %s (key %s v%d, keyid %s, %s)", path, signed.key_alias, signed.key_version,
             signed.keyid[:8], signed.envelope.value)
    return path


def cmd_run(args: argparse.Namespace) -> int:
    step = _check_step_name(args.step_name)
    command: list[str] = [] if args.no_command else list(args.link_cmd)
    if not command and not args.no_command:
        raise InputError("no command given: put it after --, or pass -x/--no-command")
    options = recording_options(args)
    directory = metadata_directory(args.metadata_directory)
    envelope = envelope_from_args(args)
    progress = ProgressLine(enabled=not args.quiet)
    cache = None if args.no_digest_cache else DigestCache()
    result: CommandResult | None = None
    with ClientInBackground(args) as connecting:
        draft = LinkDraft(step_name=step, command=command)
        if args.materials:
            count = draft.add_materials(iter_artifacts(
                args.materials, options, progress=progress.callback("materials"), cache=cache))
            progress.clear()
            log.info("recorded %d materials", count)
        client = connecting.client()  # a build should not run if its link cannot be signed
        if command:
            result = run_command(command, record_streams=args.record_streams,
                                 timeout=args.run_timeout)
            draft.set_byproducts(Byproducts(stdout=result.stdout, stderr=result.stderr,
                                            return_value=result.return_code))
            if result.return_code != 0:
                log.warning("%s returned %d", command[0], result.return_code)
        if args.products:
            count = draft.add_products(iter_artifacts(
                args.products, options, progress=progress.callback("products"), cache=cache))
            progress.clear()
            log.info("recorded %d products (%d unchanged files not read again)", count,
                     cache.hits if cache else 0)
        signed = client.sign_link(draft, key_alias=args.key or "", envelope=envelope)
    _write_link(directory, signed)
    return _exit_code(result)


def _state_path(directory: Path, step: str) -> Path:
    return directory / f".{step}{STATE_SUFFIX}"


def preliminary_link(step: str, materials: dict[str, dict[str, str]]) -> bytes:
    """`record start`'s state: a preliminary link as in-toto-record writes it, but
    unsigned, since the agent holds no key. The server signs the link at `record stop`."""
    state = {"signed": {"_type": "link", "name": step, "command": [], "materials": materials,
                        "products": {}, "byproducts": {}, "environment": {}},
             "signatures": []}
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


def cmd_record_start(args: argparse.Namespace) -> int:
    step = _check_step_name(args.step_name)
    options = recording_options(args)
    directory = metadata_directory(args.metadata_directory)
    progress = ProgressLine(enabled=not args.quiet)
    with ClientInBackground(args) as connecting:  # find out now, not after the work
        materials = {name: {"sha256": digest} for name, digest in iter_artifacts(
            args.materials or [], options, progress=progress.callback("materials"))}
        progress.clear()
        connecting.client()
    path = _state_path(directory, step)
    write_file(path, preliminary_link(step, materials))
    log.info("recorded %d materials for %s in %s", len(materials), step, path)
    return EXIT_OK


def _load_state(path: Path, step: str) -> dict[str, str]:
    try:
        data = parse_json(path.read_bytes(), what=str(path)).value
    except FileNotFoundError:
        raise InputError(f"no recording for step '{step}' in {path.parent}: "
                         f"run `custody record start -n {step}` first") from None
    except (OSError, MetadataError) as error:
        raise InputError(f"cannot read recording state {path}: {error}") from None
    link: Any = data.get("signed") if isinstance(data, dict) else None
    materials = link.get("materials") if isinstance(link, dict) else None
    if not isinstance(link, dict) or link.get("name") != step or not isinstance(materials, dict):
        raise InputError(f"recording state {path} is not a preliminary link for '{step}'")
    result: dict[str, str] = {}
    for name, digest in materials.items():
        sha256 = digest.get("sha256") if isinstance(digest, dict) else None
        if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
            raise InputError(f"recording state {path}: bad digest for {name!r:.100}")
        result[name] = sha256
    return result


def cmd_record_stop(args: argparse.Namespace) -> int:

    step = _check_step_name(args.step_name)
    options = recording_options(args)
    directory = metadata_directory(args.metadata_directory)
    envelope = envelope_from_args(args)
    state = _state_path(directory, step)
    materials = _load_state(state, step)
    progress = ProgressLine(enabled=not args.quiet)
    with ClientInBackground(args) as connecting:
        client = connecting.client()
        draft = LinkDraft(step_name=step)
        draft.add_materials(materials.items())
        del materials
        count = draft.add_products(iter_artifacts(
            args.products or [], options, progress=progress.callback("products")))
        progress.clear()
        log.info("recorded %d products", count)
        signed = client.sign_link(draft, key_alias=args.key or "", envelope=envelope)
    _write_link(directory, signed)
    state.unlink(missing_ok=True)
    return EXIT_OK
