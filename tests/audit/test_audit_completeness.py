"""`custody audit verify` proves a trail complete: from its genesis (entry 1), or from a
retained checkpoint the operator names, and says so; one trail at a time; exit codes."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from custody_client.cli import main as custody
from custody_core.audit_check import AuditFile, AuditVerdict, RetainedCheckpoint, verify_audit_trail
from custody_core.audit_trail import checkpoint_signed_bytes, encode_entry, next_chain, without_hash
from custody_core.keys import PublicKey
from custody_core.signer import Signer
from custody_server.audit import AuditSettings, AuditTrail
from custody_server.audit.anchor import TrailAnchor
from custody_server.audit_events import AuditEvent
from custody_server.keystore import Pkcs11KeyStore

TRAIL_A, TRAIL_B = "a" * 32, "b" * 32


def sign_event(index: int) -> AuditEvent:
    return AuditEvent(action="sign-link", category="process", outcome="success",
                      details={"step": f"build-{index}", "signed_sha256": f"{index:064x}"})


def entry(line: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def sequence_of(line: bytes) -> int:
    value: int = entry(line)["event"]["sequence"]
    return value


def checkpoint_indexes(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines)
            if entry(line)["event"]["action"] == "audit-checkpoint"]


def split_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


NewTrail = Callable[..., AuditTrail]


@pytest.fixture
def new_trail(tmp_path: Path, keystore: Pkcs11KeyStore, audit_signer: Signer
              ) -> Iterator[NewTrail]:
    """Opens a trail in tmp_path/NAME, written by a node of its own (one trail each)."""
    opened: list[AuditTrail] = []

    def open_(name: str, **settings: Any) -> AuditTrail:
        anchor = TrailAnchor(keystore, f"test-{uuid.uuid4().hex[:12]}")
        trail = AuditTrail(settings=AuditSettings(directory=tmp_path / name, **settings),
                           checkpoint_signer=lambda: audit_signer, anchor=anchor)
        opened.append(trail)
        return trail

    yield open_
    for trail in opened:
        trail.close()


def closed_trail(new_trail: NewTrail, name: str) -> list[bytes]:
    """One closed file: audit-open, 60 signatures with a checkpoint after every 20, close."""
    trail = new_trail(name)
    for index in range(60):
        trail.record(sign_event(index))
        if index % 20 == 19:
            trail.checkpoint()
    trail.close()
    return split_lines(trail.path)


@pytest.fixture
def lines(new_trail: NewTrail) -> list[bytes]:
    return closed_trail(new_trail, "one")


@pytest.fixture
def rotated(new_trail: NewTrail) -> list[Path]:
    """A trail over several files (oldest first): rotated at 4 KiB, each new file starts
    with a checkpoint that attests the last entry of the file before."""
    trail = new_trail("rotated", max_file_bytes=4096)
    for index in range(60):
        trail.record(sign_event(index))
    trail.close()
    paths = sorted(p for p in trail.path.parent.glob("audit.*.log"))
    paths.append(trail.path)
    assert len(paths) >= 5
    return paths


@pytest.fixture
def key_file(tmp_path: Path, audit_keys: dict[str, PublicKey]) -> Path:
    path = tmp_path / "audit.pub"
    path.write_text(next(iter(audit_keys.values())).public)
    return path


Verify = Callable[..., tuple[int, str]]


@pytest.fixture
def verify_cli(key_file: Path, capsys: pytest.CaptureFixture[str]) -> Verify:
    """`custody audit verify FILE... --key audit.pub [ARGS]`: its exit code and output."""

    def run(*args: str | Path) -> tuple[int, str]:
        capsys.readouterr()
        code = custody(["audit", "verify", *map(str, args), "--key", str(key_file)])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def verify(lines: list[bytes], keys: dict[str, PublicKey], *,
           start: bytes | None = None, **kwargs: Any) -> AuditVerdict:
    return verify_audit_trail(
        [AuditFile("audit.log", b"".join(lines))], trusted_keys=keys,
        start=RetainedCheckpoint.from_line(start) if start is not None else None, **kwargs)


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


# A head cut at a genuine checkpoint, or the oldest rotated file deleted


def test_head_cut_at_a_genuine_checkpoint_fails(lines: list[bytes], tmp_path: Path,
                                                audit_keys: dict[str, PublicKey],
                                                verify_cli: Verify) -> None:
    cut = checkpoint_indexes(lines)[1]  # the line of entry cut + 1, attesting entry cut
    head_cut = lines[cut:]
    verdict = verify(head_cut, audit_keys)
    problem = verdict.first_problem
    assert problem is not None, verdict.warnings
    assert (problem.line, problem.sequence) == (1, 1)
    assert f"entries 1 to {cut} are missing" in problem.message
    assert "genesis" in problem.message
    retained = [lines[i] for i in checkpoint_indexes(lines)]
    assert not verify(head_cut, audit_keys, retained_checkpoints=retained).ok
    code, output = verify_cli(write(tmp_path / "audit.log", head_cut))
    assert code == 1, output
    assert f"entries 1 to {cut} are missing" in output
    assert "--from-checkpoint" in output  # how to check from a retained checkpoint


def test_deleted_oldest_rotated_file_fails(rotated: list[Path],
                                           audit_keys: dict[str, PublicKey],
                                           verify_cli: Verify) -> None:
    oldest, *rest = rotated
    missing = sequence_of(split_lines(oldest)[-1])
    rest_files = [AuditFile(p.name, p.read_bytes()) for p in rest]
    problem = verify_audit_trail(rest_files, trusted_keys=audit_keys).first_problem
    assert problem is not None
    assert problem.file == rest[0].name
    assert f"entries 1 to {missing} are missing" in problem.message
    assert "rotated file was deleted or the head was cut" in problem.message
    oldest.unlink()
    code, output = verify_cli(*rest)
    assert code == 1, output
    assert f"entries 1 to {missing} are missing" in output


# Starting from a checkpoint the operator names


def test_from_checkpoint_verifies_the_rest_and_says_what_was_not_checked(
        rotated: list[Path], lines: list[bytes], tmp_path: Path, verify_cli: Verify) -> None:
    oldest, *rest = rotated
    first_kept = sequence_of(split_lines(rest[0])[0])
    start = write(tmp_path / "start.jsonl", split_lines(rest[0])[:1])
    oldest.unlink()
    code, output = verify_cli(*rest, "--from-checkpoint", start)
    assert code == 0, output
    assert f"OK: entries {first_kept} to " in output
    assert f"entries 1 to {first_kept - 1} were not checked" in output

    cut = checkpoint_indexes(lines)[1]  # a head cut at a checkpoint the SIEM retained
    log = write(tmp_path / "cut.log", lines[cut:])
    code, output = verify_cli(log, "--from-checkpoint", write(start, [lines[cut]]))
    assert code == 0, output
    assert f"entries 1 to {cut} were not checked" in output


def test_files_that_reach_back_beyond_the_start_are_checked_from_their_own_start(
        rotated: list[Path], tmp_path: Path, verify_cli: Verify) -> None:
    _, second, third, *_ = rotated
    start = write(tmp_path / "start.jsonl", split_lines(third)[:1])
    first_kept = sequence_of(split_lines(second)[0])
    code, output = verify_cli(*rotated[1:], "--from-checkpoint", start)
    assert code == 0, output
    assert f"entries 1 to {first_kept - 1} were not checked" in output
    # The entries between the files' start and the checkpoint named are checked too.
    edited = split_lines(second)
    changed = entry(edited[3])
    changed["custody"]["step"] = "innocent"
    edited[3] = encode_entry(changed) + b"\n"
    write(second, edited)
    code, output = verify_cli(*rotated[1:], "--from-checkpoint", start)
    assert code == 1 and "altered" in output, output


def test_from_checkpoint_the_files_do_not_reach_back_to_fails(
        rotated: list[Path], tmp_path: Path, verify_cli: Verify) -> None:
    oldest, second, *rest = rotated
    start_line = split_lines(second)[0]  # attests the last entry of the oldest file
    attested = sequence_of(start_line) - 1
    first_left = sequence_of(split_lines(rest[0])[0])
    start = write(tmp_path / "start.jsonl", [start_line])
    oldest.unlink()
    second.unlink()
    code, output = verify_cli(*rest, "--from-checkpoint", start)
    assert code == 1, output
    assert f"entries {attested + 1} to {first_left - 1} are missing" in output


def test_a_checkpoint_to_start_from_is_checked_like_any_checkpoint(
        lines: list[bytes], tmp_path: Path, audit_keys: dict[str, PublicKey],
        audit_signer: Signer, new_trail: NewTrail, verify_cli: Verify) -> None:
    cut = checkpoint_indexes(lines)[1]
    log = write(tmp_path / "cut.log", lines[cut:])
    forged = entry(lines[cut])
    forged["custody"]["checkpoint"]["chain"] = "0" * 64
    code, output = verify_cli(log, "--from-checkpoint",
                              write(tmp_path / "start.jsonl", [encode_entry(forged) + b"\n"]))
    assert code == 1, output
    assert "checkpoint to start from is not valid: checkpoint signature is invalid" in output
    # A checkpoint of another trail.
    other = closed_trail(new_trail, "other")
    problem = verify(lines[cut:], audit_keys, start=other[cut]).first_problem
    assert problem is not None
    assert "checkpoint to start from is of trail" in problem.message
    # A checkpoint signed with the audit key that names this trail but attests another
    # chain: entry `cut` of the files disagrees with it.
    ours = entry(lines[0])["custody"]["trail_id"]
    theirs = named_trail(other, audit_signer, ours)[cut]
    assert sequence_of(theirs) == cut + 1
    earlier = checkpoint_indexes(lines)[0]
    problem = verify(lines[earlier:], audit_keys, start=theirs).first_problem
    assert problem is not None
    assert f"checkpoint to start from attests another chain for entry {cut}" in problem.message


# Every retained checkpoint is checked, those before the first file included


def test_retained_checkpoint_before_the_first_file_is_a_failure(
        rotated: list[Path], audit_keys: dict[str, PublicKey], tmp_path: Path,
        verify_cli: Verify) -> None:
    every = [line for path in rotated for line in split_lines(path)]
    retained = [line for line in every if entry(line)["event"]["action"] == "audit-checkpoint"]
    oldest, second, *_ = rotated
    first_kept = sequence_of(split_lines(second)[0])
    early = [sequence_of(line) - 1 for line in retained if sequence_of(line) < first_kept]
    assert early  # the oldest file held checkpoints the SIEM kept
    verdict = verify_audit_trail([AuditFile(p.name, p.read_bytes()) for p in rotated[1:]],
                                 trusted_keys=audit_keys, retained_checkpoints=retained)
    messages = [problem.message for problem in verdict.problems]
    assert any(f"a retained checkpoint attests entry {early[0]}, before the first entry "
               f"of the files ({first_kept}): entries 1 to {first_kept - 1} are missing" in m
               for m in messages), messages
    kept = write(tmp_path / "retained.jsonl", retained)
    oldest.unlink()
    code, output = verify_cli(*rotated[1:], "--checkpoints", kept)
    assert code == 1, output
    # Retained checkpoints before the checkpoint named to start from are not checked.
    start = write(tmp_path / "start.jsonl", split_lines(second)[:1])
    code, output = verify_cli(*rotated[1:], "--checkpoints", kept, "--from-checkpoint", start)
    assert code == 0, output


def test_retained_checkpoints_still_expose_a_cut_tail_and_tampering(
        lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    retained = [lines[i] for i in checkpoint_indexes(lines)]
    cut = checkpoint_indexes(lines)[1]
    problem = verify(lines[:cut + 1], audit_keys, retained_checkpoints=retained).first_problem
    assert problem is not None and "tail was cut" in problem.message
    start_from = checkpoint_indexes(lines)[0]
    problem = verify(lines[start_from:cut + 1], audit_keys, start=lines[start_from],
                     retained_checkpoints=retained).first_problem
    assert problem is not None and "tail was cut" in problem.message


# Exit codes: 0 intact, 1 tampered or incomplete, 2 could not check


def test_exit_code_2_when_the_trail_cannot_be_checked(
        lines: list[bytes], tmp_path: Path, key_file: Path, verify_cli: Verify,
        capsys: pytest.CaptureFixture[str]) -> None:
    log = write(tmp_path / "audit.log", lines)
    assert verify_cli(log)[0] == 0
    code, output = verify_cli(log, tmp_path / "audit.000000000001-000000000009.log")
    assert code == 2 and "No such file" in output, output
    assert verify_cli(tmp_path)[0] == 2  # a directory, not a file
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    for key in (bad_key, tmp_path / "missing.pub"):
        capsys.readouterr()
        assert custody(["audit", "verify", str(log), "--key", str(key)]) == 2
    not_a_checkpoint = write(tmp_path / "start.jsonl", lines[5:6])
    code, output = verify_cli(log, "--from-checkpoint", not_a_checkpoint)
    assert code == 2 and "not a checkpoint" in output, output
    two = write(tmp_path / "two.jsonl", [lines[i] for i in checkpoint_indexes(lines)[:2]])
    assert verify_cli(log, "--from-checkpoint", two)[0] == 2
    assert verify_cli(log, "--from-checkpoint", tmp_path / "missing.jsonl")[0] == 2
    assert custody(["audit", "verify", str(log)]) == 2  # no --key, no --no-signatures
    with pytest.raises(SystemExit) as exited:
        custody(["audit", "verify", str(log), "--no-such-option"])
    assert exited.value.code == 2


def test_the_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        custody(["audit", "verify", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for text in ("0 the trail is intact", "1 it is tampered with or incomplete",
                 "2 it could not be checked", "--from-checkpoint"):
        assert text in help_text


# Trail ids: one trail at a time


def named_trail(lines: list[bytes], signer: Signer, trail_id: str | None,
                *, only: int | None = None) -> list[bytes]:
    """`lines` with `custody.trail_id` set on every entry (or only on line `only`; None
    removes it), rechained, and every checkpoint signed again with the audit key: a trail
    as another writer would have written it (seals aside: only the server checks them)."""
    result: list[bytes] = []
    previous = "0" * 64
    for index, line in enumerate(lines):
        value = entry(line)
        if only is None or index == only:
            value["custody"].pop("trail_id", None)
            if trail_id is not None:
                value["custody"]["trail_id"] = trail_id
        checkpoint = value["custody"].get("checkpoint")
        if checkpoint is not None:
            checkpoint["chain"] = previous
            checkpoint["sig"] = base64.b64encode(signer.sign(checkpoint_signed_bytes(
                sequence=checkpoint["sequence"], chain=previous,
                time=checkpoint["time"]))).decode()
        value["event"]["hash"] = previous = next_chain(previous, without_hash(value))
        result.append(encode_entry(value) + b"\n")
    return result


def test_the_ok_line_names_the_trail(lines: list[bytes], tmp_path: Path,
                                     audit_signer: Signer, verify_cli: Verify) -> None:
    legacy = named_trail(lines, audit_signer, None)  # as written before trails had ids
    code, output = verify_cli(write(tmp_path / "legacy.log", legacy))
    assert code == 0 and "legacy trail (no trail id)" in output, output
    ours = entry(lines[0])["custody"]["trail_id"]
    code, output = verify_cli(write(tmp_path / "audit.log", lines))
    assert code == 0 and f"of trail {ours}" in output, output
    code, output = verify_cli(write(tmp_path / "audit.log",
                                    named_trail(lines, audit_signer, TRAIL_A)))
    assert code == 0, output
    assert f"OK: entries 1 to {len(lines)} of trail {TRAIL_A}" in output


def test_files_of_two_trails_given_together_fail(lines: list[bytes], tmp_path: Path,
                                                 audit_signer: Signer,
                                                 audit_keys: dict[str, PublicKey],
                                                 verify_cli: Verify) -> None:
    first = write(tmp_path / "a.log", named_trail(lines, audit_signer, TRAIL_A))
    second = write(tmp_path / "b.log", named_trail(lines, audit_signer, TRAIL_B))
    assert verify_cli(second)[0] == 0  # each trail alone is intact
    code, output = verify_cli(first, second)
    assert code == 1, output
    assert "verify each trail apart" in output
    assert TRAIL_A in output and TRAIL_B in output


@pytest.mark.parametrize("foreign", [TRAIL_B, None], ids=["another-trail", "no-trail-id"])
def test_an_entry_naming_another_trail_is_tampering(lines: list[bytes], foreign: str | None,
                                                    audit_signer: Signer,
                                                    audit_keys: dict[str, PublicKey]) -> None:
    """Even with the chain and every checkpoint made consistent again."""
    named = named_trail(lines, audit_signer, TRAIL_A)
    mixed = named_trail(named, audit_signer, foreign, only=30)
    verdict = verify(mixed, audit_keys)
    problem = verdict.first_problem
    assert problem is not None, verdict
    assert problem.sequence == 31
    assert f"the trail is {TRAIL_A}" in problem.message
    assert len(verdict.problems) == 1
    # A legacy trail (no ids) with one entry that names a trail is just as wrong.
    legacy = named_trail(lines, audit_signer, None)
    problem = verify(named_trail(legacy, audit_signer, TRAIL_B, only=30),
                     audit_keys).first_problem
    assert problem is not None and problem.sequence == 31
    assert f"names trail {TRAIL_B}" in problem.message


def test_retained_checkpoints_of_other_trails_are_set_aside(
        lines: list[bytes], audit_signer: Signer, audit_keys: dict[str, PublicKey]) -> None:
    """A SIEM keeps the checkpoints of every replica's trail in one place."""
    ours = named_trail(lines, audit_signer, TRAIL_A)
    theirs = named_trail(lines[:50], audit_signer, TRAIL_B)
    retained = [line for line in ours + theirs
                if entry(line)["event"]["action"] == "audit-checkpoint"]
    verdict = verify(ours, audit_keys, retained_checkpoints=retained)
    assert verdict.ok, verdict.problems
    assert verdict.trail_id == TRAIL_A
    assert any("of other trails were not used" in w for w in verdict.warnings)
    only_theirs = [line for line in theirs if entry(line)["event"]["action"]
                   == "audit-checkpoint"]
    problem = verify(ours, audit_keys, retained_checkpoints=only_theirs).first_problem
    assert problem is not None
    assert f"none of the {len(only_theirs)} retained checkpoints" in problem.message


def test_entries_of_any_shape_are_problems_not_crashes(lines: list[bytes], tmp_path: Path,
                                                       audit_keys: dict[str, PublicKey],
                                                       verify_cli: Verify) -> None:
    """Lines in canonical form whose `custody` is not an object, in the files or given apart."""
    odd = []
    shapes: list[Any] = [[], "x", None]
    for shape in shapes:
        value = entry(lines[21])  # a checkpoint
        value["custody"] = shape
        odd.append(encode_entry(value) + b"\n")
    verdict = verify([*lines[:21], odd[0], *lines[22:]], audit_keys)
    problem = verdict.first_problem
    assert problem is not None and problem.sequence == 22
    verdict = verify(lines, audit_keys, retained_checkpoints=odd)
    assert [p.message for p in verdict.problems] == [
        "a retained checkpoint is not valid: checkpoint entry has no custody.checkpoint "
        "object"] * 3
    code, output = verify_cli(write(tmp_path / "audit.log", lines), "--from-checkpoint",
                              write(tmp_path / "start.jsonl", odd[:1]))
    assert code == 2 and "no custody.checkpoint object" in output, output
