"""The audit trail's format and its check: entries, canonical form, chain, checkpoints.

This is the contract between the server's writer, `custody audit verify` and any
SIEM-side checker, so the bytes that are hashed and signed are defined once, here in
the pure core (no I/O: callers hand in the files' bytes). docs/AUDIT.md explains the
format and what a SIEM must keep.

- One JSON object per line in canonical form: keys sorted, no whitespace, UTF-8,
  integers only (RFC 8785 for these value types). A line in any other form is wrong.
- `event.sequence` counts 1, 2, 3, ... across all files of a trail.
- `event.hash` is the chain: chain(n) = SHA-256(chain(n-1) as 32 bytes || canonical
  bytes of entry n without `event.hash`), and chain(0) is 32 zero bytes.
- A checkpoint is an entry with `event.action` "audit-checkpoint" and
  `custody.checkpoint` = {sequence, chain, time, keyid, sig}: the audit key's
  signature (base64) over PAE(CHECKPOINT_PAYLOAD_TYPE, canonical {chain, sequence,
  time}), attesting the entry just before it (sequence = its own sequence - 1).
- A file that does not start at sequence 1 starts with a checkpoint: its anchor.
- Every entry names its trail: `custody.trail_id` (32 hex digits, fixed when the trail
  starts) and the server that writes it, `service.node.name`. One server writes one
  trail; replicas write one each. Entry 1 of a trail is its genesis ("audit-open").
- The last entry of every write carries `custody.seal`: an HMAC-SHA256 made inside the
  HSM with the trail's secret seal key over `seal_input(chain(n-1), entry n without
  event.hash and custody.seal)`. It covers the whole chain up to that entry. Only the
  server can check it (the key never leaves the token): it proves at start-up that the
  tail it continues is the one it wrote. Verifiers without the key check the chain and
  the checkpoints; a seal is part of the entry like any other field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from custody_core.keys import PublicKey

# custody_core.envelope and .keys load `cryptography`: they are imported where they are
# used, since the CLI imports this module to build its parser for every command.

GENESIS_CHAIN = "0" * 64
CHECKPOINT_ACTION = "audit-checkpoint"
CHECKPOINT_PAYLOAD_TYPE = "application/vnd.custody.audit-checkpoint+json"
SEAL_DOMAIN = b"custody-audit-seal-v1\x00"
MAX_PROBLEMS = 100


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


def canonical_json(value: Any) -> bytes:
    return _CANONICAL.encode(value).encode("utf-8")


def encode_entry(entry: Mapping[str, Any]) -> bytes:
    """The canonical bytes of an entry: what a line holds and what the chain hashes."""
    return canonical_json(entry)


def next_chain(previous: str, entry_without_hash: Mapping[str, Any]) -> str:
    data = bytes.fromhex(previous) + encode_entry(entry_without_hash)
    return hashlib.sha256(data).hexdigest()


def checkpoint_signed_bytes(*, sequence: int, chain: str, time: str) -> bytes:
    """The bytes a checkpoint signature covers (DSSE PAE: never valid as in-toto metadata)."""
    from custody_core.envelope import pae

    body = encode_entry({"chain": chain, "sequence": sequence, "time": time})
    return pae(CHECKPOINT_PAYLOAD_TYPE, body)


def without_hash(entry: Mapping[str, Any]) -> dict[str, Any]:
    event = {k: v for k, v in entry["event"].items() if k != "hash"}
    return {**entry, "event": event}


def seal_input(previous_chain: str, unsealed: bytes) -> bytes:
    """What a seal's HMAC covers: the chain before the entry and the digest of the entry's
    canonical bytes without `event.hash` and `custody.seal` (`unsealed`)."""
    return SEAL_DOMAIN + bytes.fromhex(previous_chain) + hashlib.sha256(unsealed).digest()


def without_seal(entry: Mapping[str, Any]) -> dict[str, Any]:
    """`entry` without `event.hash` and `custody.seal`: the bytes `seal_input` takes."""
    custody = {k: v for k, v in entry.get("custody", {}).items() if k != "seal"}
    return {**without_hash(entry), "custody": custody}


def trail_id_of(entry: Mapping[str, Any]) -> str | None:
    """The trail an entry names (None: written before trails had ids)."""
    value = entry.get("custody", {}).get("trail_id")
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    chain: str
    time: str
    keyid: str
    sig: bytes

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> Checkpoint:
        value = entry.get("custody", {}).get("checkpoint")
        if not isinstance(value, dict):
            raise ValueError("checkpoint entry has no custody.checkpoint object")
        sequence, chain = value.get("sequence"), value.get("chain")
        time, keyid, sig = value.get("time"), value.get("keyid"), value.get("sig")
        if not (isinstance(sequence, int) and isinstance(chain, str) and _is_hash(chain)
                and isinstance(time, str) and isinstance(keyid, str) and isinstance(sig, str)):
            raise ValueError("custody.checkpoint needs sequence, chain, time, keyid and sig")
        try:
            signature = base64.b64decode(sig, validate=True)
        except binascii.Error:
            raise ValueError("custody.checkpoint.sig is not base64") from None
        return cls(sequence=sequence, chain=chain, time=time, keyid=keyid, sig=signature)

    def problem(self, trusted_keys: Mapping[str, PublicKey]) -> str | None:
        """Why the signature does not hold, or None when it does."""
        key = trusted_keys.get(self.keyid)
        if key is None:
            return f"checkpoint is signed by key {self.keyid[:16]}, which is not trusted"
        data = checkpoint_signed_bytes(sequence=self.sequence, chain=self.chain, time=self.time)
        return None if key.verify(self.sig, data) else "checkpoint signature is invalid"


@dataclass(frozen=True)
class AuditFile:
    name: str
    content: bytes


@dataclass(frozen=True)
class AuditProblem:
    """The first thing wrong at one place: `sequence` is the entry expected there."""

    file: str
    line: int
    sequence: int
    message: str

    def __str__(self) -> str:
        return f"{self.file} line {self.line}, entry {self.sequence}: {self.message}"


@dataclass(frozen=True)
class AuditVerdict:
    entries: int
    checkpoints: int
    first_sequence: int
    last_sequence: int
    last_chain: str
    sealed: bool  # the trail ends with a closing checkpoint
    problems: tuple[AuditProblem, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> AuditProblem | None:
        return self.problems[0] if self.problems else None


class EntryError(ValueError):
    """A line is not a well-formed entry of the trail."""


def parse_entry(raw: bytes) -> dict[str, Any]:
    """One line (without its newline) as an entry: strict JSON, canonical, with the chain fields."""
    try:
        entry = json.loads(raw, object_pairs_hook=_no_duplicates, parse_float=_no_float,
                           parse_constant=_no_float)
    except (ValueError, UnicodeDecodeError) as error:
        raise EntryError(f"not JSON ({error})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("event"), dict):
        raise EntryError("not an object with an event object")
    event = entry["event"]
    sequence, chain = event.get("sequence"), event.get("hash")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise EntryError("event.sequence is not a positive integer")
    if not isinstance(chain, str) or not _is_hash(chain):
        raise EntryError("event.hash is not 64 lowercase hex characters")
    try:
        canonical = encode_entry(entry)
    except UnicodeEncodeError:
        canonical = b""
    if canonical != raw:
        raise EntryError("the line is not in canonical form (reformatted or edited)")
    return entry


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_float(text: str) -> Any:
    raise ValueError(f"non-integer number {text[:20]}")


def _is_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass
class _Walk:
    """Walks the entries in order, recomputing the chain; collects problems and warnings."""

    trusted_keys: Mapping[str, PublicKey] | None
    retained: dict[int, Checkpoint]
    problems: list[AuditProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chain: str | None = None  # chain of the last entry seen (None: nothing seen yet)
    expected: int = 1
    first_sequence: int = 0
    entries: int = 0
    checkpoints: int = 0
    last_checkpoint: int = 0  # sequence of the last checkpoint whose chain matched
    last_entry: dict[str, Any] | None = None
    place: tuple[str, int] = ("", 0)

    def problem(self, message: str, *, sequence: int | None = None) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            file, line = self.place
            self.problems.append(AuditProblem(file, line, sequence or self.expected, message))

    def visit(self, raw: bytes) -> None:
        try:
            entry = parse_entry(raw)
        except EntryError as error:
            self.problem(f"not a valid entry: {error}")
            self.expected += 1
            return
        sequence, stored = entry["event"]["sequence"], entry["event"]["hash"]
        checkpoint = None
        if entry["event"].get("action") == CHECKPOINT_ACTION:
            try:
                checkpoint = Checkpoint.from_entry(entry)
            except ValueError as error:
                self.problem(str(error), sequence=sequence)
        if self.chain is None:
            self._anchor(sequence, checkpoint)
        before = self.chain
        if sequence != self.expected:
            self._sequence_problem(sequence)
        elif before is not None and next_chain(before, without_hash(entry)) != stored:
            self.problem("the entry does not match its hash: it was altered "
                         "(or its hash was)")
        elif checkpoint is not None:
            self._check_checkpoint(checkpoint, sequence, before)
        retained = self.retained.get(sequence)
        if retained is not None and retained.chain != stored:
            self.problem(f"a retained checkpoint attests another chain for entry {sequence}: "
                         f"an entry after {self.last_checkpoint} was altered, added or removed",
                         sequence=self.last_checkpoint + 1)
        self.chain, self.expected = stored, sequence + 1
        self.entries += 1
        self.last_entry = entry

    def _anchor(self, sequence: int, checkpoint: Checkpoint | None) -> None:
        self.first_sequence = sequence
        if sequence == 1:
            self.chain = GENESIS_CHAIN
        elif checkpoint is not None and checkpoint.sequence == sequence - 1:
            self.chain = checkpoint.chain  # its signature is checked like any checkpoint's
            self.warnings.append(f"the trail given starts at entry {sequence}: entries "
                                 "before it are in earlier files")
        else:
            self.problem("the first entry is neither entry 1 nor a checkpoint: "
                         "the start of the chain cannot be checked", sequence=sequence)
        self.expected = sequence

    def _sequence_problem(self, sequence: int) -> None:
        expected = self.expected
        if sequence > expected:
            missing = (f"entry {expected} is missing" if sequence == expected + 1
                       else f"entries {expected} to {sequence - 1} are missing")
            self.problem(f"{missing}: this line holds entry {sequence} (lines removed, "
                         "or swapped)")
        else:
            self.problem(f"found entry {sequence} where entry {expected} belongs "
                         "(lines swapped, duplicated or inserted)")

    def _check_checkpoint(self, checkpoint: Checkpoint, sequence: int, before: str | None
                          ) -> None:
        if self.trusted_keys is not None:
            bad_signature = checkpoint.problem(self.trusted_keys)
            if bad_signature:
                self.problem(bad_signature, sequence=sequence)
                return
        if checkpoint.sequence != sequence - 1 or checkpoint.chain != before:
            self.problem(f"checkpoint {sequence} attests another chain: an entry between "
                         f"{self.last_checkpoint + 1} and {sequence - 1} was altered, added "
                         "or removed", sequence=self.last_checkpoint + 1)
            return
        self.checkpoints += 1
        self.last_checkpoint = sequence

    def finish(self, *, torn_tail: int) -> AuditVerdict:
        last = self.expected - 1
        for checkpoint in self.retained.values():
            if checkpoint.sequence > last:
                self.problem(f"the trail ends at entry {last} but a retained checkpoint "
                             f"covers entry {checkpoint.sequence}: its tail was cut",
                             sequence=last + 1)
                break
        if torn_tail:
            self.warnings.append(f"the last file ends with an incomplete line ({torn_tail} "
                                 "bytes): a write cut short by a crash; the server drops "
                                 "it when it starts again")
        last_entry = self.last_entry or {}
        is_checkpoint = last_entry.get("event", {}).get("action") == CHECKPOINT_ACTION
        sealed = is_checkpoint and last_entry["event"].get("reason") == "close"
        if self.entries and not is_checkpoint:
            self.warnings.append(f"entries {self.last_checkpoint + 1} to {last} are not "
                                 "sealed by a checkpoint yet: compare them with the "
                                 "checkpoints your SIEM retained")
        elif self.entries and not sealed:
            self.warnings.append("the trail does not end with a closing checkpoint: the "
                                 "server is running or crashed, or the tail was cut")
        if self.trusted_keys is None:
            self.warnings.append("checkpoint signatures were not checked (no audit key given)")
        return AuditVerdict(
            entries=self.entries, checkpoints=self.checkpoints,
            first_sequence=self.first_sequence, last_sequence=last,
            last_chain=self.chain or GENESIS_CHAIN, sealed=sealed,
            problems=tuple(self.problems), warnings=tuple(self.warnings),
        )


def verify_audit_trail(files: Sequence[AuditFile], *,
                       trusted_keys: Mapping[str, PublicKey] | None,
                       retained_checkpoints: Sequence[bytes] = ()) -> AuditVerdict:
    """Check the files of one trail (any order) against the chain and the checkpoints.

    `trusted_keys` are the audit key's versions by keyid; None skips the signatures
    (with a warning). `retained_checkpoints` are checkpoint lines kept apart from the
    files (by a SIEM): they expose a tail that was cut after the last checkpoint.
    """
    walk = _Walk(trusted_keys=trusted_keys, retained={})
    for raw in retained_checkpoints:
        walk.place = ("retained checkpoints", 0)
        try:
            checkpoint = Checkpoint.from_entry(parse_entry(raw.rstrip(b"\n")))
        except ValueError as error:
            walk.problem(f"a retained checkpoint is not valid: {error}")
            continue
        bad = checkpoint.problem(trusted_keys) if trusted_keys is not None else None
        if bad:
            walk.problem(f"a retained checkpoint is not valid: {bad}")
        else:
            walk.retained[checkpoint.sequence] = checkpoint
    ordered = sorted(files, key=_first_sequence)
    torn_tail = 0
    for index, audit_file in enumerate(ordered):
        lines = audit_file.content.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        for number, raw in enumerate(lines, start=1):
            walk.place = (audit_file.name, number)
            walk.visit(raw)
        if tail and index == len(ordered) - 1:
            torn_tail = len(tail)
        elif tail:
            walk.place = (audit_file.name, len(lines) + 1)
            walk.problem("an incomplete line in a file that is not the last one")
    return walk.finish(torn_tail=torn_tail)


def _first_sequence(audit_file: AuditFile) -> int:
    first = audit_file.content.split(b"\n", 1)[0]
    try:
        sequence = json.loads(first)["event"]["sequence"]
    except (ValueError, KeyError, TypeError):
        return sys.maxsize
    return sequence if isinstance(sequence, int) else sys.maxsize
