"""The offline check of an audit trail: every entry from the genesis (or a retained
checkpoint the operator names) to the end, against its chain, its signed checkpoints and
the checkpoints a SIEM retained; the first problem at each place, with its file and line.

The format it checks is custody_core.audit_trail; `custody audit verify` is its command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from custody_core.audit_trail import (
    CHECKPOINT_ACTION,
    GENESIS_CHAIN,
    Checkpoint,
    EntryError,
    next_chain,
    parse_entry,
    trail_id_of,
    without_hash,
)

if TYPE_CHECKING:
    from custody_core.keys import PublicKey

MAX_PROBLEMS = 100


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
        if not self.line:  # not at a line of the files: the checkpoints given apart
            return f"{self.file}: {self.message}"
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
    trail_id: str | None = None  # the trail the entries name (None: a legacy trail)
    last_checkpoint: int = 0  # the last checkpoint entry that matched (0: none)

    @property
    def unsealed(self) -> int:
        """Entries after the last checkpoint: nothing offline authenticates them yet."""
        return self.last_sequence - self.last_checkpoint if self.entries else 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> AuditProblem | None:
        return self.problems[0] if self.problems else None


@dataclass(frozen=True)
class RetainedCheckpoint:
    """A checkpoint line kept apart from the files: by a SIEM, or named to start from."""

    checkpoint: Checkpoint
    trail_id: str | None  # the trail its line names (None: a legacy trail)

    @classmethod
    def from_line(cls, raw: bytes) -> RetainedCheckpoint:
        """The checkpoint in one line as the trail wrote it; ValueError when it is not one."""
        entry = parse_entry(raw.rstrip(b"\n"))
        if entry["event"].get("action") != CHECKPOINT_ACTION:
            raise ValueError(f"the line is not a checkpoint (its event.action is not "
                             f"{CHECKPOINT_ACTION})")
        return cls(checkpoint=Checkpoint.from_entry(entry), trail_id=trail_id_of(entry))


def _trail_name(trail_id: str | None) -> str:
    return f"trail {trail_id}" if trail_id else "a legacy trail (no trail id)"


@dataclass
class _Walk:
    """Walks the entries in order, recomputing the chain; collects problems and warnings.

    Completeness: the entries must start at entry 1 (the genesis), or reach back to the
    checkpoint named to start from (`start`); every retained checkpoint must agree with
    the chain, and none may attest an entry the files do not hold (before the first
    one, unless it is before the start, or after the last one).
    """

    trusted_keys: Mapping[str, PublicKey] | None
    retained: dict[int, Checkpoint]
    start: Checkpoint | None = None  # the retained checkpoint named to start from
    trail_id: str | None = None  # the trail the files name (None: a legacy trail)
    problems: list[AuditProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chain: str | None = None  # chain of the last entry seen (None: nothing seen yet)
    expected: int = 1
    first_sequence: int = 0
    entries: int = 0
    checkpoints: int = 0
    last_checkpoint: int = 0  # sequence of the last checkpoint whose chain matched
    last_entry: dict[str, Any] | None = None
    foreign: bool = False  # the entry before names another trail than `trail_id`
    place: tuple[str, int] = ("", 0)
    head: tuple[str, int] = ("", 0)  # the place of the first entry

    def problem(self, message: str, *, sequence: int | None = None,
                place: tuple[str, int] | None = None) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            file, line = place or self.place
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
        self._check_trail_id(trail_id_of(entry))
        before = self.chain
        if sequence != self.expected:
            self._sequence_problem(sequence)
        elif before is not None and next_chain(before, without_hash(entry)) != stored:
            self.problem("the entry does not match its hash: it was altered "
                         "(or its hash was)")
        elif checkpoint is not None:
            self._check_checkpoint(checkpoint, sequence, before)
        for name, attested in (("a retained checkpoint", self.retained.get(sequence)),
                               ("the checkpoint to start from", self.start)):
            if attested is not None and attested.sequence == sequence \
                    and attested.chain != stored:
                self.problem(f"{name} attests another chain for entry {sequence}: an entry "
                             f"after {self.last_checkpoint} was altered, added or removed",
                             sequence=self.last_checkpoint + 1)
        self.chain, self.expected = stored, sequence + 1
        self.entries += 1
        self.last_entry = entry

    def _anchor(self, sequence: int, checkpoint: Checkpoint | None) -> None:
        """The chain before the first entry: the genesis, the checkpoint named to start
        from, or the checkpoint the file starts with; and whether the head is complete."""
        self.first_sequence, self.expected, self.head = sequence, sequence, self.place
        start = self.start
        if sequence == 1:
            self.chain = GENESIS_CHAIN
            return
        if start is not None and sequence == start.sequence + 1:
            self.chain = start.chain
        elif checkpoint is not None and checkpoint.sequence == sequence - 1:
            self.chain = checkpoint.chain  # its signature is checked like any checkpoint's
        if start is None:
            self.problem(f"{_missing(1, sequence - 1)}: the files given start at entry "
                         f"{sequence}, not at the trail's genesis (entry 1): a rotated "
                         "file was deleted or the head was cut", sequence=1)
        elif sequence > start.sequence + 1:
            self.problem(f"{_missing(start.sequence + 1, sequence - 1)}: the checkpoint to "
                         f"start from attests entry {start.sequence}, the files start at "
                         f"entry {sequence}: a rotated file was deleted or the head was cut",
                         sequence=start.sequence + 1)
        else:
            unchecked = f"entries 1 to {sequence - 1}" if sequence > 2 else "entry 1"
            self.warnings.append(f"verified from the checkpoint named to start from (it "
                                 f"attests entry {start.sequence}) on: {unchecked} "
                                 f"{'were' if sequence > 2 else 'was'} not checked")
        if self.chain is None:
            self.problem("the first entry is neither entry 1 nor a checkpoint: "
                         "the start of the chain cannot be checked", sequence=sequence)
            return
        retained = self.retained.get(sequence - 1)
        if retained is not None and retained.chain != self.chain:
            self.problem(f"a retained checkpoint attests another chain for entry "
                         f"{sequence - 1} than the checkpoint the files start from",
                         sequence=sequence)

    def _check_trail_id(self, named: str | None) -> None:
        """Every entry names the trail's id (or, in a legacy trail, none)."""
        foreign, self.foreign = self.foreign, named != self.trail_id
        if not self.foreign or foreign:
            return  # reported once for a run of entries
        if named is None:
            message = f"the entry names no trail, but the trail is {self.trail_id}"
        elif self.trail_id is None:
            message = (f"the entry names trail {named}, the trail names none (a legacy "
                       "trail)")
        else:
            message = f"the entry names trail {named}, but the trail is {self.trail_id}"
        self.problem(f"{message}: it was altered, or comes from another trail")

    def _sequence_problem(self, sequence: int) -> None:
        expected = self.expected
        if sequence > expected:
            self.problem(f"{_missing(expected, sequence - 1)}: this line holds entry "
                         f"{sequence} (lines removed, or swapped)")
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

    def _check_attested_range(self, last: int) -> None:
        """Retained checkpoints (and the start) that attest entries the files lack."""
        if not self.entries:
            if not self.problems:
                self.problem("the files hold no entry: the trail's genesis (entry 1) is "
                             "missing", sequence=1, place=self.head)
            return
        attested = [*self.retained.values(), *([self.start] if self.start else [])]
        beyond = [c.sequence for c in attested if c.sequence > last]
        if beyond:
            self.problem(f"the trail ends at entry {last} but a retained checkpoint "
                         f"covers entry {min(beyond)}: its tail was cut", sequence=last + 1)
        floor = self.start.sequence if self.start else 0
        before = [c.sequence for c in self.retained.values()
                  if floor <= c.sequence < self.first_sequence - 1]
        if before:
            self.problem(f"a retained checkpoint attests entry {min(before)}, before the "
                         f"first entry of the files ({self.first_sequence}): "
                         f"{_missing(floor + 1, self.first_sequence - 1)}: a rotated file "
                         "was deleted or the head was cut",
                         sequence=floor + 1, place=self.head)

    def finish(self, *, torn_tail: int) -> AuditVerdict:
        last = self.expected - 1
        self._check_attested_range(last)
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
            trail_id=self.trail_id, last_checkpoint=self.last_checkpoint,
        )


def _missing(first: int, last: int) -> str:
    return (f"entry {first} is missing" if first == last
            else f"entries {first} to {last} are missing")


def verify_audit_trail(files: Sequence[AuditFile], *,
                       trusted_keys: Mapping[str, PublicKey] | None,
                       retained_checkpoints: Sequence[bytes] = (),
                       start: RetainedCheckpoint | None = None) -> AuditVerdict:
    """Check the files of one trail (any order): the chain, the checkpoints, and that no
    entry is missing at either end.

    `trusted_keys` are the audit key's versions by keyid; None skips the signatures
    (with a warning). The files must start at entry 1, the trail's genesis, unless
    `start` names a retained checkpoint to start from: then they must reach back to the
    entry after the one it attests, and the verdict warns that entries before the first
    one given were not checked. `retained_checkpoints` are checkpoint lines kept apart
    from the files (by a SIEM): one that attests an entry the files do not hold (a cut
    tail, a deleted rotated file or a cut head) or another chain is a problem; those of
    other trails are set aside. All entries must name one trail id (or none: a legacy
    trail); files of several trails are a problem: verify each trail apart.
    """
    heads = sorted(((*_head(audit_file), audit_file) for audit_file in files),
                   key=lambda head: head[0])
    ordered = [audit_file for _, _, audit_file in heads]
    named = [head for head in heads if head[1] is not None]
    trail_id = named[0][1] if named else None
    other = next((head for head in named if head[1] != trail_id), None)
    if other is not None:
        sequence, other_id, audit_file = other
        trails = len({head[1] for head in named})
        problem = AuditProblem(audit_file.name, 1, sequence, (
            f"this file is of trail {other_id}, {named[0][2].name} of trail {trail_id}: "
            f"the files given hold {trails} trails; verify each trail apart"))
        return AuditVerdict(entries=0, checkpoints=0, first_sequence=0, last_sequence=0,
                            last_chain=GENESIS_CHAIN, sealed=False, problems=(problem,),
                            trail_id=trail_id)
    walk = _Walk(trusted_keys=trusted_keys, retained={}, trail_id=trail_id,
                 head=(ordered[0].name, 1) if ordered else ("the files given", 0))
    _take_start(walk, start)
    _take_retained(walk, retained_checkpoints)
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


def _take_start(walk: _Walk, start: RetainedCheckpoint | None) -> None:
    if start is None:
        return
    place = ("the checkpoint to start from", 0)
    if start.trail_id != walk.trail_id:
        walk.problem(f"the checkpoint to start from is of {_trail_name(start.trail_id)}, "
                     f"the files of {_trail_name(walk.trail_id)}", place=place)
        return
    keys = walk.trusted_keys
    bad = start.checkpoint.problem(keys) if keys is not None else None
    if bad:
        walk.problem(f"the checkpoint to start from is not valid: {bad}", place=place)
        return
    walk.start = start.checkpoint


def _take_retained(walk: _Walk, lines: Sequence[bytes]) -> None:
    place = ("retained checkpoints", 0)
    others = 0
    for raw in lines:
        try:
            retained = RetainedCheckpoint.from_line(raw)
        except ValueError as error:
            walk.problem(f"a retained checkpoint is not valid: {error}", place=place)
            continue
        if retained.trail_id != walk.trail_id:
            others += 1
            continue
        keys = walk.trusted_keys
        bad = retained.checkpoint.problem(keys) if keys is not None else None
        if bad:
            walk.problem(f"a retained checkpoint is not valid: {bad}", place=place)
        else:
            walk.retained[retained.checkpoint.sequence] = retained.checkpoint
    if others and not walk.retained:
        walk.problem(f"none of the {others} retained checkpoints is of "
                     f"{_trail_name(walk.trail_id)}: give the checkpoints retained from this "
                     "trail (or the files are not the trail they were retained from)",
                     place=place)
    elif others:
        walk.warnings.append(f"{others} retained checkpoint(s) of other trails were not used")


def _head(audit_file: AuditFile) -> tuple[int, str | None]:
    """The first entry's sequence (sys.maxsize when unreadable) and the trail it names."""
    first = audit_file.content.split(b"\n", 1)[0]
    try:
        entry = json.loads(first)
        sequence = entry["event"]["sequence"]
    except (ValueError, KeyError, TypeError):
        return sys.maxsize, None
    if not isinstance(sequence, int) or not isinstance(entry, dict):
        return sys.maxsize, None
    return sequence, trail_id_of(entry)
