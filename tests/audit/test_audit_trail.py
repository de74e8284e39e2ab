"""The trail on disk: group commit, restart, torn tails, rotation, failures and recovery."""

from __future__ import annotations

import hmac
import json
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from custody_core.audit_check import AuditFile, AuditVerdict, RetainedCheckpoint, verify_audit_trail
from custody_core.keys import PublicKey
from custody_server.audit import AuditTrail, AuditWriteError
from custody_server.audit.anchor import TrailAnchor
from custody_server.audit_events import AuditEvent
from custody_server.errors import AuditUnavailableError

OpenTrail = Callable[..., AuditTrail]


def event(index: int, **details: Any) -> AuditEvent:
    return AuditEvent(action="sign-link", category="process", outcome="success",
                      details={"step": f"step-{index}", "signed_sha256": f"{index:064x}",
                               **details})


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def verify_dir(directory: Path, keys: dict[str, PublicKey],
               names: list[str] | None = None, *, start: bytes | None = None
               ) -> AuditVerdict:
    paths = [directory / n for n in names] if names else sorted(directory.glob("audit*"))
    return verify_audit_trail([AuditFile(p.name, p.read_bytes()) for p in paths],
                              trusted_keys=keys,
                              start=RetainedCheckpoint.from_line(start) if start else None)


def first_line(path: Path) -> bytes:
    return path.read_bytes().split(b"\n", 1)[0]


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Counting:
    def __init__(self) -> None:
        self.commits: list[int] = []
        self.failures: list[str] = []

    def audit_written(self, *, seconds: float, entries: int) -> None:
        self.commits.append(entries)

    def audit_failed(self, *, kind: str) -> None:
        self.failures.append(kind)

    def audit_checkpointed(self, *, at: datetime) -> None:
        pass


def test_concurrent_records_share_fsyncs_and_all_land_in_order(trail_anchor: TrailAnchor,
        tmp_path: Path, audit_signer: Any, audit_keys: dict[str, PublicKey]) -> None:
    from custody_server.audit import AuditSettings

    counting = Counting()
    trail = AuditTrail(settings=AuditSettings(directory=tmp_path),
                       checkpoint_signer=lambda: audit_signer, anchor=trail_anchor,
                       observer=counting)
    threads, per_thread = 16, 100

    def work(worker: int) -> None:
        for index in range(per_thread):
            trail.record(event(worker * per_thread + index))

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    trail.close()
    written = entries(trail.path)
    steps = [e["custody"]["step"] for e in written if e["event"]["action"] == "sign-link"]
    assert sorted(steps) == sorted(f"step-{i}" for i in range(threads * per_thread))
    assert [e["event"]["sequence"] for e in written] == list(range(1, len(written) + 1))
    stamps = [e["@timestamp"] for e in written]
    assert stamps == sorted(stamps)
    assert sum(counting.commits) == len(written)
    assert len(counting.commits) < threads * per_thread / 2  # group commit happened
    ids = [e["event"]["id"] for e in written]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert verify_dir(tmp_path, audit_keys).ok


def test_the_open_file_writes_synchronously(open_trail: OpenTrail) -> None:
    """Durability rests on O_DSYNC: each append returns only once it is on disk."""
    trail = open_trail()
    trail.record(event(1))
    flags = [_open_flags(fd) for fd in _fds_open_on(trail.path)]
    assert flags and all(f & os.O_DSYNC == os.O_DSYNC and f & os.O_APPEND for f in flags)


def test_event_ids_stay_unique_in_a_forked_child() -> None:
    from custody_server.audit.entry import new_event_id

    parent = [new_event_id() for _ in range(3)]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        os.write(write, new_event_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = os.read(read, 64).decode()
    os.close(read)
    assert in_child[:16] != parent[0][:16]  # a new instance id, not the parent's counter
    assert len({*parent, in_child}) == 4


def _fds_open_on(path: Path) -> list[int]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                found.append(int(name))
        except OSError:
            continue
    return found


def _open_flags(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no flags for fd {fd}")


def test_restart_continues_the_chain(open_trail: OpenTrail,
                                     audit_keys: dict[str, PublicKey]) -> None:
    first = open_trail()
    for index in range(5):
        first.record(event(index))
    first.close()
    last_before = entries(first.path)[-1]["event"]["sequence"]
    second = open_trail()
    second.record(event(99))
    second.close()
    written = entries(second.path)
    reopened = written[last_before]
    assert reopened["event"]["action"] == "audit-open"
    assert reopened["custody"]["continued_from"] == last_before
    verdict = verify_dir(second.path.parent, audit_keys)
    assert verdict.ok and verdict.sealed, verdict.problems


def test_a_torn_last_line_is_dropped_and_recorded(open_trail: OpenTrail,
                                                  audit_keys: dict[str, PublicKey]) -> None:
    first = open_trail()
    first.record(event(1))
    first.close()
    torn = b'{"@timestamp":"2030-01-01T00:00:00.000000Z","custody":{"ste'
    with first.path.open("ab") as file:
        file.write(torn)  # what a kill -9 in the middle of a write leaves
    before = verify_dir(first.path.parent, audit_keys)
    assert before.ok and any("incomplete line" in w for w in before.warnings)
    second = open_trail()
    second.close()
    opened = [e for e in entries(second.path) if e["event"]["action"] == "audit-open"][-1]
    assert opened["custody"]["torn_tail"]["bytes"] == len(torn)
    after = verify_dir(second.path.parent, audit_keys)
    assert after.ok and after.warnings == (), after


def test_a_corrupt_last_entry_stops_the_start(open_trail: OpenTrail) -> None:
    trail = open_trail()
    trail.close()
    with trail.path.open("ab") as file:
        file.write(b'{"not": "an entry"}\n')
    with pytest.raises(AuditUnavailableError, match="line 3: not a valid entry"):
        open_trail()


def test_rotation_keeps_the_chain_across_files(open_trail: OpenTrail,
                                               audit_keys: dict[str, PublicKey]) -> None:
    trail = open_trail(max_file_bytes=4096)
    for index in range(60):
        trail.record(event(index))
    trail.close()
    directory = trail.path.parent
    names = sorted(p.name for p in directory.glob("audit*"))
    rotated = [n for n in names if n != "audit.log"]
    assert len(rotated) >= 3
    shuffled = list(names)
    random.Random(7).shuffle(shuffled)
    verdict = verify_dir(directory, audit_keys, shuffled)
    assert verdict.ok and verdict.sealed, verdict.problems
    assert verdict.entries == sum(len(entries(directory / n)) for n in names)
    for name in rotated[1:]:  # each file is anchored by the checkpoint it starts with
        first, *_, last = entries(directory / name)
        assert first["event"]["action"] == last["event"]["action"] == "audit-checkpoint"
        assert name == f"audit.{first['event']['sequence']:012d}-" \
                       f"{last['event']['sequence']:012d}.log"
        alone = verify_dir(directory, audit_keys, [name])  # does not start at entry 1
        assert not alone.ok and "missing" in alone.problems[0].message
        from_its_start = verify_dir(directory, audit_keys, [name],
                                    start=first_line(directory / name))
        assert from_its_start.ok, from_its_start.problems
    without_middle = [n for n in names if n != rotated[1]]
    problem = verify_dir(directory, audit_keys, without_middle).first_problem
    assert problem is not None and "missing" in problem.message


def test_unwritable_file_fails_closed_and_recovers(open_trail: OpenTrail,
                                                   audit_keys: dict[str, PublicKey]) -> None:
    """The file replaced by a directory: root ignores permissions, so a read-only
    file or directory would not stop this process; a directory in its place does."""
    trail = open_trail()
    heard: list[bool] = []
    trail.set_health_listener(heard.append)
    trail.record(event(1))
    moved = trail.path.with_name("audit.moved")
    trail.path.rename(moved)
    trail.path.mkdir()
    with pytest.raises(AuditWriteError):
        trail.record(event(2))
    assert heard == [True, False] and not trail.healthy
    with pytest.raises(AuditWriteError):
        trail.record(event(3))  # refused at once while it cannot write
    time.sleep(0.2)
    with pytest.raises(AuditWriteError):
        trail.record(event(4))  # the retry also fails: still a directory
    trail.path.rmdir()
    wait_for(lambda: trail.healthy)  # recovers by itself, without traffic
    assert heard == [True, False, True]
    trail.record(event(5))
    trail.close()
    new = entries(trail.path)
    assert new[0]["event"]["action"] == "audit-checkpoint"  # the new file's anchor
    recovered = new[1]
    assert recovered["event"]["action"] == "audit-recovered"
    assert recovered["custody"]["file"] == "recreated: it was missing"
    assert recovered["custody"]["refused"] >= 2
    steps = [e["custody"].get("step") for e in entries(moved) + new]
    assert "step-1" in steps and "step-5" in steps
    assert not {"step-2", "step-3", "step-4"} & set(steps)  # refused: not recorded
    assert verify_dir(trail.path.parent, audit_keys, ["audit.moved", "audit.log"]).ok


def test_removed_file_fails_the_batch_then_starts_a_new_file(
        open_trail: OpenTrail, audit_keys: dict[str, PublicKey]) -> None:
    trail = open_trail()
    trail.record(event(1))
    trail.path.unlink()
    with pytest.raises(AuditWriteError):
        trail.record(event(2))  # it went to a file no longer there: not durable
    wait_for(lambda: trail.healthy)
    trail.record(event(3))
    trail.close()
    verdict = verify_dir(trail.path.parent, audit_keys)
    assert verdict.first_sequence > 1  # anchored by a checkpoint, not entry 1: the
    assert "entries 1 to" in verdict.problems[0].message  # removed file's entries are lost
    after = verify_dir(trail.path.parent, audit_keys, start=first_line(trail.path))
    assert after.ok, after.problems


def test_a_foreign_file_is_moved_aside(open_trail: OpenTrail,
                                       audit_keys: dict[str, PublicKey]) -> None:
    trail = open_trail()
    trail.record(event(1))
    trail.path.unlink()
    trail.path.write_bytes(b"someone else's file\n")
    with pytest.raises(AuditWriteError):
        trail.record(event(2))
    wait_for(lambda: trail.healthy)
    trail.close()
    displaced = [p for p in trail.path.parent.iterdir() if ".displaced-" in p.name]
    assert len(displaced) == 1 and displaced[0].read_bytes() == b"someone else's file\n"
    anchor = first_line(trail.path)  # the removed file's entries are lost
    assert verify_dir(trail.path.parent, audit_keys, ["audit.log"], start=anchor).ok


def test_checkpoints_come_on_time_without_traffic(open_trail: OpenTrail) -> None:
    trail = open_trail(checkpoint_interval_seconds=0.1)
    trail.record(event(1))
    wait_for(lambda: entries(trail.path)[-1]["event"]["action"] == "audit-checkpoint")
    assert entries(trail.path)[-1]["event"]["reason"] == "interval"


def test_an_unsigned_checkpoint_does_not_fail_records(
        trail_anchor: TrailAnchor,
        tmp_path: Path) -> None:
    from custody_server.audit import AuditSettings

    def broken_signer() -> Any:
        raise AuditUnavailableError("token gone")

    counting = Counting()
    trail = AuditTrail(settings=AuditSettings(directory=tmp_path,
                                              checkpoint_interval_seconds=0.01),
                       checkpoint_signer=broken_signer, anchor=trail_anchor, observer=counting)
    for index in range(3):
        trail.record(event(index))
        time.sleep(0.02)
    trail.close()
    assert "checkpoint" in counting.failures
    assert all(e["event"]["action"] != "audit-checkpoint" for e in entries(trail.path))


def test_entries_use_ecs_fields_and_never_hold_secrets(open_trail: OpenTrail) -> None:
    trail = open_trail()
    structlog.contextvars.bind_contextvars(request_id="r-1", rpc="/custody.v1.Custody/SignLink",
                                           peer="ipv6:[::1]:40000")
    try:
        trail.record(AuditEvent(
            action="sign-link", category="process", outcome="failure",
            reason="bad\nrequest \ud800",
            details={"caller": "spiffe://ci/agent", "key_alias": "build", "key_version": 2,
                     "keyid": "ab" * 32, "user_pin": "123456", "payload": "secret bytes",
                     "ratio": 0.5, "step": "build"},
        ))
    finally:
        structlog.contextvars.clear_contextvars()
    trail.close()
    lines = trail.path.read_bytes().splitlines()
    written = json.loads(lines[1])
    assert written["event"]["action"] == "sign-link"
    assert written["event"]["outcome"] == "failure"
    assert written["event"]["type"] == ["creation"]
    assert written["event"]["reason"].startswith("bad\nrequest")
    assert written["source"] == {"ip": "::1", "address": "::1", "port": 40000}
    assert written["user"] == {"name": "spiffe://ci/agent"}
    assert written["service"]["name"] == "custody"
    assert written["service"]["node"]["name"].startswith("test-")
    assert written["custody"]["key"] == {"alias": "build", "version": 2, "id": "ab" * 32}
    assert written["custody"]["request_id"] == "r-1"
    assert written["custody"]["user_pin"] == written["custody"]["payload"] == "[redacted]"
    assert written["custody"]["ratio"] == "0.5"
    assert b"123456" not in trail.path.read_bytes()
    assert len(lines) == 3  # the newline in the reason is escaped


def test_records_after_close_are_refused(open_trail: OpenTrail) -> None:
    trail = open_trail()
    trail.close()
    trail.close()
    with pytest.raises(AuditWriteError):
        trail.record(event(1))
    assert os.stat(trail.path).st_mode & 0o777 == 0o600


@settings(max_examples=200, deadline=None)
@given(details=st.dictionaries(st.text(min_size=1, max_size=12),
                               st.one_of(st.text(max_size=40), st.integers(), st.booleans(),
                                         st.none(), st.lists(st.text(max_size=8), max_size=3)),
                               max_size=6),
       reason=st.text(max_size=60))
def test_rendered_lines_are_the_canonical_entries_on_the_chain(details: dict[str, Any],
                                                               reason: str) -> None:
    """The writer builds lines from parts; they must equal the verifier's definition."""
    from custody_core.audit_trail import (
        encode_entry,
        next_chain,
        parse_entry,
        seal_input,
        without_hash,
        without_seal,
    )
    from custody_server.audit.entry import ecs_entry
    from custody_server.audit.render import ChainState, EntryRenderer

    entry = ecs_entry(AuditEvent(action="sign-link", category="process", outcome="failure",
                                 reason=reason, details=details),
                      event_id="0" * 32, request={"peer": "ipv4:10.0.0.1:5"})
    entry["@timestamp"] = "2030-01-01T00:00:00.000000Z"
    after = ChainState(sequence=41, chain="ab" * 32)
    sealed: list[bytes] = []

    def sealer(data: bytes) -> bytes:  # the token's HMAC in the server
        sealed.append(data)
        return hmac.digest(b"k" * 32, data, "sha256")

    renderer = EntryRenderer(trail_id="cd" * 16, node="node-1", sealer=sealer)
    (line,), state = renderer.render([entry], after=after, seal=True)
    parsed = parse_entry(line.rstrip(b"\n"))  # canonical, or it raises
    assert encode_entry(parsed) + b"\n" == line
    assert parsed["event"]["sequence"] == state.sequence == 42
    assert next_chain(after.chain, without_hash(parsed)) == parsed["event"]["hash"] == state.chain
    assert parsed["custody"]["trail_id"] == "cd" * 16
    assert parsed["service"]["node"] == {"name": "node-1"}
    # The seal covers the chain before the entry and the entry without its hash and seal.
    assert sealed == [seal_input(after.chain, encode_entry(without_seal(parsed)))]
    assert parsed["custody"]["seal"] == hmac.digest(b"k" * 32, sealed[0], "sha256").hex()
