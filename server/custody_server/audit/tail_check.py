"""Start-up: check the file the server is about to continue against the token's anchor.

The whole file is read: its first entry is the genesis (entry 1) or a signed checkpoint
(the file's anchor), every entry must follow the chain and name this trail, the last
sealed entry must carry a seal the token accepts, and the file must reach the checkpoint
the token recorded. What follows the last seal is the unfinished write of a crash only
when the file ends with a torn line (a write cut short never ends at a line break); it is
dropped, as its callers never got an answer. Complete lines after the last seal were not
written by this server: refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from custody_core.audit_trail import (
    CHECKPOINT_ACTION,
    GENESIS_CHAIN,
    Checkpoint,
    EntryError,
    encode_entry,
    next_chain,
    parse_entry,
    seal_input,
    trail_id_of,
    without_hash,
    without_seal,
)
from custody_server.audit.anchor import AnchorRecord
from custody_server.errors import AuditUnavailableError

SealCheck = Callable[[bytes, bytes], bool]
NEW_SEGMENT_HINT = ("check the trail with `custody audit verify`, keep it for the "
                    "investigation, then start a new segment: custody-server "
                    "--new-audit-segment REASON (it moves these files aside and names the "
                    "break in the new segment)")


class AuditTrailRefused(AuditUnavailableError):
    """The trail on disk is not the one this server wrote: it will not continue it."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"audit trail refused: {problem}; {NEW_SEGMENT_HINT}")
        self.problem = problem


@dataclass(frozen=True)
class CheckedTail:
    sequence: int  # the last sealed entry: the chain continues from it
    chain: str
    first_sequence: int  # of the file
    start_chain: str  # the chain before the file's first entry
    keep_bytes: int  # the file's size without an unfinished write
    dropped: dict[str, Any] | None  # what an unfinished write left, if anything


def check_file(path: Path, content: bytes, *, record: AnchorRecord,
               check_seal: SealCheck) -> CheckedTail | None:
    """The verified end of `content` (None: the file holds no complete entry)."""
    lines = content.split(b"\n")
    torn = lines.pop()
    if not lines:
        return None
    walk = _Walk(path=path, record=record)
    offset = 0
    for number, raw in enumerate(lines, start=1):
        offset += len(raw) + 1
        walk.visit(number, raw, end=offset)
    last = walk.last_sealed
    if last is None:
        raise AuditTrailRefused(f"{path}: no entry carries this server's seal "
                                f"(trail {record.trail_id})")
    if not check_seal(seal_input(last.previous, encode_entry(without_seal(last.entry))),
                      bytes.fromhex(last.entry["custody"]["seal"])):
        raise AuditTrailRefused(
            f"{path}: entry {last.sequence} does not carry the seal of trail "
            f"{record.trail_id}: the trail was rewritten while the server was down")
    unsealed = walk.last_sequence - last.sequence
    if unsealed and not torn:
        extra = (f"entry {walk.last_sequence}" if unsealed == 1
                 else f"entries {last.sequence + 1} to {walk.last_sequence}")
        raise AuditTrailRefused(
            f"{path}: {extra} after the last entry this server sealed ({last.sequence}) "
            "were not written by it (appended while it was down?)")
    if (walk.first_sequence, walk.start_chain) != (record.file_sequence, record.file_chain):
        raise AuditTrailRefused(
            f"{path}: the file starts at entry {walk.first_sequence}, but the token records "
            f"that it starts at entry {record.file_sequence}: its head was cut, or it was "
            "replaced")
    if record.sequence > last.sequence:
        raise AuditTrailRefused(
            f"{path}: the trail ends at entry {last.sequence} but the token records that it "
            f"reached entry {record.sequence}: entries were removed")
    recorded = walk.chains.get(record.sequence)
    if recorded is not None and recorded != record.chain:
        raise AuditTrailRefused(f"{path}: entry {record.sequence} is not the one the token "
                                "recorded: the trail was replaced")
    dropped = None
    if torn or unsealed:
        cut = content[last.end:]
        dropped = {"entries": unsealed, "bytes": len(cut),
                   "sha256": hashlib.sha256(cut).hexdigest()}
    return CheckedTail(sequence=last.sequence, chain=last.entry["event"]["hash"],
                       first_sequence=walk.first_sequence, start_chain=walk.start_chain,
                       keep_bytes=last.end,
                       dropped=dropped)


@dataclass(frozen=True)
class _Sealed:
    sequence: int
    previous: str  # the chain before it
    entry: dict[str, Any]
    end: int  # offset just after its line


class _Walk:
    def __init__(self, *, path: Path, record: AnchorRecord) -> None:
        self.path = path
        self.record = record
        self.chain: str | None = None
        self.start_chain = ""
        self.first_sequence = 0
        self.last_sequence = 0
        self.last_sealed: _Sealed | None = None
        self.chains: dict[int, str] = {}

    def visit(self, number: int, raw: bytes, *, end: int) -> None:
        try:
            entry = parse_entry(raw)
        except EntryError as error:
            self._refuse(number, f"not a valid entry ({error})")
        sequence = entry["event"]["sequence"]
        custody = entry.get("custody")
        seal = custody.get("seal") if isinstance(custody, dict) else None
        if seal is not None and not (isinstance(seal, str) and len(seal) == 64
                                     and all(c in "0123456789abcdef" for c in seal)):
            self._refuse(number, "custody.seal is not 64 lowercase hex digits")
        if self.chain is None:
            self.chain = self.start_chain = self._start(number, entry)
            self.first_sequence = sequence
        elif sequence != self.last_sequence + 1:
            self._refuse(number, f"entry {sequence} where entry {self.last_sequence + 1} "
                                 "belongs")
        if trail_id_of(entry) != self.record.trail_id:
            self._refuse(number, f"the entry names trail {trail_id_of(entry)}, not "
                                 f"{self.record.trail_id}")
        previous = self.chain
        if next_chain(previous, without_hash(entry)) != entry["event"]["hash"]:
            self._refuse(number, "the entry does not match its hash")
        self.chain = entry["event"]["hash"]
        self.last_sequence = sequence
        self.chains[sequence] = self.chain
        if seal is not None:
            self.last_sealed = _Sealed(sequence=sequence, previous=previous, entry=entry,
                                       end=end)

    def _start(self, number: int, entry: dict[str, Any]) -> str:
        sequence = entry["event"]["sequence"]
        if sequence == 1:
            return GENESIS_CHAIN
        if entry["event"].get("action") == CHECKPOINT_ACTION:
            try:
                checkpoint = Checkpoint.from_entry(entry)
            except ValueError as error:
                self._refuse(number, str(error))
            if checkpoint.sequence == sequence - 1:
                return checkpoint.chain
        self._refuse(number, "the file starts neither at entry 1 nor with a checkpoint")

    def _refuse(self, number: int, message: str) -> NoReturn:
        raise AuditTrailRefused(f"{self.path} line {number}: {message}")
