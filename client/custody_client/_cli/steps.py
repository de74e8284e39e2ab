"""`custody run` and `custody record start|stop`: record, run, ask SignLink, write the link."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

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
from custody_client.run_ids import run_id
from custody_client.settings import DEFAULT_MAX_MESSAGE_BYTES
from custody_core.errors import MetadataError
from custody_core.step_names import check_step_name

log = logging.getLogger("custody.cli")

STATE_SUFFIX = ".link-unfinished"  # matched by the default exclude "*.link*"
# A request carries the state whole: no larger than the largest message the server takes.
MAX_STATE_BYTES = DEFAULT_MAX_MESSAGE_BYTES


def _check_step_name(name: str) -> str:
    """The server's step-name grammar (custody_core.step_names): a `/` names a
    subdirectory, as in in-toto-run (`ci/build` -> `ci/build.<keyid8>.link`)."""
    try:
        return check_step_name(name)
    except MetadataError as error:
        raise InputError(str(error)) from None


def _exit_code(result: CommandResult | None) -> int:
    """The command's own return code; a signal becomes 128 + its number, like a shell."""
    if result is None or result.return_code == 0:
        return EXIT_OK
    if result.return_code < 0:
        return 128 - result.return_code
    return min(result.return_code, 255)


def _write_link(directory: Path, signed: SignedMetadata) -> Path:
    path = directory / checked_link_name(signed.file_name)
    _make_parent(path)
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
        draft.set_run_id(run_id(args.run_id))
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
            if result.return_code != 0 and args.no_sign_on_failure:
                log.error("%s returned %d: no link signed (--no-sign-on-failure)",
                          command[0], result.return_code)
                return _exit_code(result)
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


def _make_parent(path: Path) -> None:
    """A step name with `/` puts its files in a subdirectory (in-toto-run needs it to
    exist; made here)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot make {path.parent}: {error.strerror}") from None


def _state_path(directory: Path, step: str) -> Path:
    """`.<step>.link-unfinished`; for `ci/build`, `ci/.build.link-unfinished`."""
    parent, _, last = step.rpartition("/")
    return directory / parent / f".{last}{STATE_SUFFIX}"


def cmd_record_start(args: argparse.Namespace) -> int:
    """Record materials and have them signed now, as in-toto-record signs its unfinished
    link: `record stop` hands the signed link back, and the server uses its materials only
    if its signature still holds, so a change in between is refused."""
    step = _check_step_name(args.step_name)
    options = recording_options(args)
    directory = metadata_directory(args.metadata_directory)
    envelope = envelope_from_args(args)
    progress = ProgressLine(enabled=not args.quiet)
    with ClientInBackground(args) as connecting:
        draft = LinkDraft(step_name=step)
        count = draft.add_materials(iter_artifacts(
            args.materials or [], options, progress=progress.callback("materials")))
        progress.clear()
        signed = connecting.client().sign_link(draft, key_alias=args.key or "",
                                               envelope=envelope)
    path = _state_path(directory, step)
    _make_parent(path)
    write_file(path, signed.content)
    log.info("recorded %d materials for %s in %s (signed by %s v%d, keyid %s)", count, step,
             path, signed.key_alias, signed.key_version, signed.keyid[:8])
    return EXIT_OK


def _load_state(path: Path, step: str) -> bytes:
    """The signed preliminary link; the server checks it (here only what helps say early
    that it is not one)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"no recording for step '{step}' in {path.parent}: "
                         f"run `custody record start -n {step}` first") from None
    except OSError as error:
        raise InputError(f"cannot read recording state {path}: {error.strerror}") from None
    if len(data) > MAX_STATE_BYTES:
        raise InputError(f"recording state {path} is larger than {MAX_STATE_BYTES} bytes")
    from custody_core.envelope import parse_envelope  # loads cryptography: not on `run`'s path

    try:
        envelope = parse_envelope(data)
    except MetadataError as error:
        raise InputError(f"recording state {path} is not a signed link: {error}") from None
    if not envelope.signatures:
        raise InputError(f"recording state {path} is not signed (an older custody wrote "
                         f"it?): run `custody record start -n {step}` again")
    if envelope.payload.get("name") != step and envelope.payload.get("_type") == "link":
        raise InputError(f"recording state {path} is not a preliminary link for '{step}'")
    return data


def cmd_record_stop(args: argparse.Namespace) -> int:

    step = _check_step_name(args.step_name)
    options = recording_options(args)
    directory = metadata_directory(args.metadata_directory)
    envelope = envelope_from_args(args)
    state = _state_path(directory, step)
    preliminary = _load_state(state, step)
    progress = ProgressLine(enabled=not args.quiet)
    with ClientInBackground(args) as connecting:
        client = connecting.client()
        draft = LinkDraft(step_name=step)
        draft.set_run_id(run_id(args.run_id))
        draft.set_preliminary_link(preliminary)  # its materials, if the server signed them
        count = draft.add_products(iter_artifacts(
            args.products or [], options, progress=progress.callback("products")))
        progress.clear()
        log.info("recorded %d products", count)
        signed = client.sign_link(draft, key_alias=args.key or "", envelope=envelope)
    _write_link(directory, signed)
    state.unlink(missing_ok=True)
    return EXIT_OK
