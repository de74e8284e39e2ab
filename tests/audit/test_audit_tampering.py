"""Every kind of tampering with the audit trail is detected, and the first bad entry named."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from custody_core.audit_check import AuditFile, AuditVerdict, verify_audit_trail
from custody_core.audit_trail import encode_entry, next_chain, without_hash
from custody_core.keys import PublicKey
from custody_core.software_signer import SoftwareSigner
from custody_server.audit import AuditTrail
from custody_server.audit_events import AuditEvent

ENTRIES = 60
CHECKPOINT_EVERY = 20


def sign_event(index: int) -> AuditEvent:
    return AuditEvent(action="sign-link", category="process", outcome="success", details={
        "step": f"build-{index}", "key_alias": "build", "key_version": 1, "keyid": "ab" * 32,
        "signed_sha256": f"{index:064x}", "caller": "spiffe://ci/agent",
    })


@pytest.fixture
def lines(open_trail: Callable[..., AuditTrail]) -> list[bytes]:
    """A closed trail: audit-open, 60 signatures with a checkpoint after every 20, close."""
    trail = open_trail()
    for index in range(ENTRIES):
        trail.record(sign_event(index))
        if index % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
            trail.checkpoint()
    trail.close()
    return trail.path.read_bytes().splitlines(keepends=True)


def verify(lines: list[bytes], keys: dict[str, PublicKey], **kwargs: Any) -> AuditVerdict:
    return verify_audit_trail([AuditFile("audit.log", b"".join(lines))], trusted_keys=keys,
                              **kwargs)


def entry(line: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def checkpoint_lines(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines)
            if entry(line)["event"]["action"] == "audit-checkpoint"]


def rechain(lines: list[bytes], start: int) -> list[bytes]:
    """What an attacker without the audit key can do: recompute every hash from `start` on."""
    result = list(lines[:start])
    previous = entry(result[-1])["event"]["hash"]
    for index, line in enumerate(lines[start:], start=start):
        value = entry(line)
        value["event"]["sequence"] = index + 1
        value["event"]["hash"] = next_chain(previous, without_hash(value))
        previous = value["event"]["hash"]
        result.append(encode_entry(value) + b"\n")
    return result


def edit(line: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    value = entry(line)
    change(value)
    return encode_entry(value) + b"\n"


def test_untouched_trail_verifies_and_is_sealed(lines: list[bytes],
                                                audit_keys: dict[str, PublicKey]) -> None:
    verdict = verify(lines, audit_keys)
    assert verdict.ok, verdict.problems
    assert verdict.sealed
    assert verdict.entries == len(lines) == 1 + ENTRIES + ENTRIES // CHECKPOINT_EVERY + 1
    assert verdict.checkpoints == len(checkpoint_lines(lines)) == 4
    assert verdict.warnings == ()


def test_changed_field_is_named(lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    lines[30] = edit(lines[30], lambda v: v["custody"].update(step="innocent"))
    problem = verify(lines, audit_keys).first_problem
    assert problem is not None
    assert (problem.line, problem.sequence) == (31, 31)
    assert "altered" in problem.message


def test_changed_field_with_recomputed_chain_is_caught_by_the_next_checkpoint(
        lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    lines[30] = edit(lines[30], lambda v: v["custody"].update(step="innocent"))
    verdict = verify(rechain(lines, 30), audit_keys)
    first_checkpoint, second = checkpoint_lines(lines)[:2]
    problem = verdict.first_problem
    assert problem is not None
    # Without the key the attacker cannot re-sign; the checkpoint after the change
    # names the range that holds the first bad entry.
    assert problem.line == second + 1
    assert problem.sequence == first_checkpoint + 2
    assert "altered, added or removed" in problem.message


def test_deleted_line_is_named(lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    del lines[10]
    problem = verify(lines, audit_keys).first_problem
    assert problem is not None
    assert problem.sequence == 11 and problem.line == 11
    assert "entry 11 is missing" in problem.message


def test_swapped_lines_are_named(lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    lines[40], lines[41] = lines[41], lines[40]
    problem = verify(lines, audit_keys).first_problem
    assert problem is not None
    assert (problem.line, problem.sequence) == (41, 41)
    assert "this line holds entry 42" in problem.message


def test_inserted_line_is_named(lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    forged = edit(lines[5], lambda v: v["custody"].update(step="forged"))
    lines.insert(20, forged)
    problem = verify(lines, audit_keys).first_problem
    assert problem is not None
    assert (problem.line, problem.sequence) == (21, 21)


def test_inserted_line_with_renumbering_is_caught_by_the_next_checkpoint(
        lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    lines.insert(45, edit(lines[44], lambda v: v["custody"].update(step="forged")))
    problem = verify(rechain(lines, 45), audit_keys).first_problem
    assert problem is not None
    last_good_checkpoint = checkpoint_lines(lines)[1]  # before the insertion
    assert problem.sequence == last_good_checkpoint + 2
    assert "altered, added or removed" in problem.message


def test_cut_tail_after_a_checkpoint_is_detected_with_the_retained_checkpoints(
        lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    retained = [lines[i] for i in checkpoint_lines(lines)]  # what the SIEM kept
    cut_after = checkpoint_lines(lines)[1]
    cut = lines[:cut_after + 1]
    alone = verify(cut, audit_keys)
    assert alone.ok and not alone.sealed  # the file alone cannot tell...
    assert any("closing checkpoint" in w for w in alone.warnings)  # ...but says so
    problem = verify(cut, audit_keys, retained_checkpoints=retained).first_problem
    assert problem is not None
    assert problem.sequence == cut_after + 2
    assert "tail was cut" in problem.message


def test_cut_tail_mid_way_is_reported_as_unsealed(lines: list[bytes],
                                                  audit_keys: dict[str, PublicKey]) -> None:
    verdict = verify(lines[:50], audit_keys)
    assert any("not sealed" in warning for warning in verdict.warnings)


def test_reformatted_line_is_named(lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    lines[7] = json.dumps(entry(lines[7]), indent=1).replace("\n", "").encode() + b"\n"
    problem = verify(lines, audit_keys).first_problem
    assert problem is not None and problem.line == 8
    assert "canonical" in problem.message


def test_checkpoint_signed_by_another_key_is_refused(
        lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    index = checkpoint_lines(lines)[0]
    impostor = SoftwareSigner.generate("ecdsa-sha2-nistp256")
    problem = verify(lines, {impostor.public_key.keyid: impostor.public_key}).first_problem
    assert problem is not None and problem.line == index + 1
    assert "not trusted" in problem.message

    def resign(value: dict[str, Any]) -> None:
        value["custody"]["checkpoint"]["sig"] = base64.b64encode(b"0" * 70).decode()

    lines[index] = edit(lines[index], resign)
    assert verify(rechain(lines, index), audit_keys).first_problem is not None


def test_checkpoint_signature_is_ecdsa_over_the_documented_bytes(
        lines: list[bytes], audit_keys: dict[str, PublicKey]) -> None:
    """Checked with `cryptography` directly, as a SIEM's own verifier would."""
    value = entry(lines[checkpoint_lines(lines)[0]])["custody"]["checkpoint"]
    body = json.dumps({"chain": value["chain"], "sequence": value["sequence"],
                       "time": value["time"]}, sort_keys=True, separators=(",", ":")).encode()
    payload_type = b"application/vnd.custody.audit-checkpoint+json"
    signed = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(body), body)
    key = audit_keys[value["keyid"]].crypto_key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(base64.b64decode(value["sig"]), signed, ec.ECDSA(hashes.SHA256()))


def test_the_command_names_the_first_bad_entry(lines: list[bytes], tmp_path: Path,
                                               audit_keys: dict[str, PublicKey],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from custody_client.audit_verify import main

    key_file = tmp_path / "audit.pub"
    key_file.write_text(next(iter(audit_keys.values())).public)
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(lines))
    assert main([str(log), "--key", str(key_file)]) == 0
    assert "OK: entries 1 to 65" in capsys.readouterr().out
    del lines[12]
    log.write_bytes(b"".join(lines))
    assert main([str(log), "--key", str(key_file)]) == 1
    assert "first bad entry: " + str(log) + " line 13, entry 13" in capsys.readouterr().out
    assert main([str(log)]) == 2
