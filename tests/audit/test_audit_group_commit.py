"""Group commit by leader and followers: who writes, and what a slow write does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from custody_core.signer import Signer
from custody_server import config
from custody_server.audit import AuditSettings, AuditTrail, AuditWriteError
from custody_server.audit.anchor import TrailAnchor
from custody_server.audit_events import AuditEvent


def event(index: int) -> AuditEvent:
    return AuditEvent(action="sign-link", category="process", outcome="success",
                      details={"step": f"step-{index}", "signed_sha256": f"{index:064x}"})


def written_steps(path: Path) -> list[str]:
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    return [e["custody"]["step"] for e in lines if e["event"]["action"] == "sign-link"]


class Writers:
    """Observer: which thread wrote each commit; optionally one slow commit."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.sizes: list[int] = []
        self.stall_once = threading.Event()  # set: the next commit takes `stall` seconds
        self.stall = 0.0

    def audit_written(self, *, seconds: float, entries: int) -> None:
        self.threads.append(threading.current_thread().name)
        self.sizes.append(entries)
        if self.stall_once.is_set():
            self.stall_once.clear()
            time.sleep(self.stall)

    def audit_failed(self, *, kind: str) -> None:
        pass

    def audit_checkpointed(self, *, at: datetime) -> None:
        pass


NewTrail = Callable[..., AuditTrail]


@pytest.fixture
def new_trail(trail_anchor: TrailAnchor, tmp_path: Path, audit_signer: Signer) -> NewTrail:
    """Opens a trail in tmp_path: new_trail(observer, **settings) (AuditSettings' fields)."""

    def open_(observer: Writers | None = None, **settings: Any) -> AuditTrail:
        return AuditTrail(settings=AuditSettings(directory=tmp_path, **settings),
                          checkpoint_signer=lambda: audit_signer, anchor=trail_anchor,
                          observer=observer)

    return open_


def test_a_lone_caller_writes_its_own_entry(new_trail: NewTrail) -> None:
    """One request in flight: no hand-off to another thread, in either direction."""
    writers = Writers()
    trail = new_trail(writers)
    writers.threads.clear()

    def caller() -> None:
        for index in range(20):
            trail.record(event(index))

    thread = threading.Thread(target=caller, name="lone-caller")
    thread.start()
    thread.join()
    assert writers.threads == ["lone-caller"] * 20
    trail.close()


def record_concurrently(trail: AuditTrail, *, callers: int, each: int) -> None:
    """`callers` threads record `each` events at once: caller w's are step-{w*100+i}."""
    def caller(worker: int) -> None:
        for index in range(each):
            trail.record(event(worker * 100 + index))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_under_concurrent_load_the_leader_waits_and_batches_grow(new_trail: NewTrail) -> None:
    writers = Writers()
    trail = new_trail(writers, commit_delay_seconds=0.01)
    trail.expect_entries_from(lambda: 8)  # as the server tells it: 8 calls under way
    writers.sizes = []
    record_concurrently(trail, callers=8, each=40)
    trail.close()
    assert sorted(written_steps(trail.path)) == sorted(
        f"step-{w * 100 + i}" for w in range(8) for i in range(40))
    # The leader waits until all 8 are in (at most 10 ms), so batches come close to 8
    # (docs/PERFORMANCE.md#audit-group-commit-batches); 5 leaves room for a busy machine.
    assert sum(writers.sizes) / len(writers.sizes) >= 5


def test_entries_queued_during_a_write_share_the_next_one(new_trail: NewTrail) -> None:
    writers = Writers()
    trail = new_trail(writers)
    writers.stall, writers.sizes = 0.3, []
    writers.stall_once.set()
    first = threading.Thread(target=trail.record, args=(event(0),))
    first.start()
    while writers.stall_once.is_set():  # the first caller is the leader, inside its write
        time.sleep(0.001)
    others = [threading.Thread(target=trail.record, args=(event(n),)) for n in range(1, 9)]
    for thread in others:
        thread.start()
    for thread in (first, *others):
        thread.join()
    trail.close()
    assert writers.sizes[:2] == [1, 8]  # the eight waited for one write together
    assert sorted(written_steps(trail.path)) == sorted(f"step-{n}" for n in range(9))


def test_a_write_that_hangs_times_out_its_followers_and_the_trail_goes_on(
        new_trail: NewTrail) -> None:
    """Followers give up after write_timeout_seconds (no signature for them); those never
    taken into a write are never written; the trail keeps working after the slow write."""
    writers = Writers()
    trail = new_trail(writers, write_timeout_seconds=0.2)
    writers.stall = 0.6
    writers.stall_once.set()
    outcomes: dict[int, str] = {}

    def call(index: int) -> None:
        try:
            trail.record(event(index))
            outcomes[index] = "ok"
        except AuditWriteError:
            outcomes[index] = "refused"

    leader = threading.Thread(target=call, args=(0,))
    leader.start()
    while writers.stall_once.is_set():
        time.sleep(0.001)
    followers = [threading.Thread(target=call, args=(n,)) for n in range(1, 6)]
    for thread in followers:
        thread.start()
    for thread in (leader, *followers):
        thread.join()
    assert outcomes[0] == "ok"  # the leader's own write was slow, not failed
    assert all(outcomes[n] == "refused" for n in range(1, 6))
    for index in range(6, 16):  # nothing is stuck: new callers lead and write
        call(index)
    trail.close()
    steps = written_steps(trail.path)
    assert all(outcomes[n] == "ok" for n in range(6, 16))
    assert {f"step-{n}" for n, o in outcomes.items() if o == "ok"} <= set(steps)
    assert not {f"step-{n}" for n in range(1, 6)} & set(steps)  # timed out while queued
    assert len(steps) == len(set(steps))


def test_many_callers_with_short_timeouts_never_lose_or_duplicate(new_trail: NewTrail) -> None:
    """Timeouts race with promotions to leader: the trail must keep going, and every
    record() that returned is on disk exactly once."""
    writers = Writers()
    trail = new_trail(writers, write_timeout_seconds=0.002)
    returned: list[str] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        for index in range(60):
            name = f"{worker}-{index}"
            try:
                trail.record(AuditEvent(action="sign-link", category="process",
                                        outcome="success", details={"step": name}))
            except AuditWriteError:
                continue
            with lock:
                returned.append(name)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(12)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in pool)
    trail.record(event(999))  # still works
    trail.close()
    steps = written_steps(trail.path)
    assert len(steps) == len(set(steps))
    assert set(returned) <= set(steps)
    assert returned  # most calls succeed even with a 2 ms timeout


def test_close_waits_for_the_writes_in_progress(new_trail: NewTrail) -> None:
    writers = Writers()
    trail = new_trail(writers)
    writers.stall = 0.3
    writers.stall_once.set()
    results: list[str] = []

    def call() -> None:
        trail.record(event(1))
        results.append("ok")

    caller = threading.Thread(target=call)
    caller.start()
    while writers.stall_once.is_set():
        time.sleep(0.001)
    trail.close()
    caller.join()
    assert results == ["ok"]
    lines = [json.loads(line) for line in trail.path.read_bytes().splitlines()]
    assert lines[-2]["custody"]["step"] == "step-1"
    assert lines[-1]["event"]["reason"] == "close"  # sealed after the write in progress


@pytest.fixture
def long_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allow commit delays of seconds, so that no test depends on how fast threads start."""
    monkeypatch.setattr(config, "MAX_COMMIT_DELAY_SECONDS", 60.0)


def test_the_leader_waits_for_the_calls_in_progress_and_no_longer(
        new_trail: NewTrail, long_delays: None) -> None:
    writers = Writers()
    trail = new_trail(writers, commit_delay_seconds=30)
    asked = threading.Event()

    def three_in_progress() -> int:
        asked.set()  # the leader is about to wait for the other two
        return 3

    trail.expect_entries_from(three_in_progress)
    writers.sizes = []
    started = time.monotonic()
    threads = [threading.Thread(target=trail.record, args=(event(0),))]
    threads[0].start()
    assert asked.wait(timeout=10)
    threads += [threading.Thread(target=trail.record, args=(event(n),)) for n in (1, 2)]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert time.monotonic() - started < 15  # woken by the third entry, not the 30 s delay
    assert writers.sizes == [3]  # one write for the three calls
    trail.close()
    assert sorted(written_steps(trail.path)) == ["step-0", "step-1", "step-2"]


@pytest.mark.parametrize("in_progress", [1, 2])
def test_fewer_than_three_calls_in_progress_never_wait(
        new_trail: NewTrail, long_delays: None, in_progress: int) -> None:
    """A caller alone never waits for company; with one other call under way a wait
    rarely catches it, so two callers do not wait for each other either."""
    trail = new_trail(commit_delay_seconds=30)
    trail.expect_entries_from(lambda: in_progress)
    started = time.monotonic()
    record_concurrently(trail, callers=in_progress, each=20)
    assert time.monotonic() - started < 15
    trail.close()
    assert len(written_steps(trail.path)) == 20 * in_progress


def test_without_the_calls_in_progress_the_leader_never_waits(
        new_trail: NewTrail, long_delays: None) -> None:
    trail = new_trail(commit_delay_seconds=30)
    started = time.monotonic()
    record_concurrently(trail, callers=8, each=5)
    assert time.monotonic() - started < 15
    trail.close()


def test_the_wait_for_calls_in_progress_ends_at_the_commit_delay(
        new_trail: NewTrail, long_delays: None) -> None:
    """A call in progress that records late or not at all (a slow Verify) costs at most
    the delay per write."""
    trail = new_trail(commit_delay_seconds=0.2)
    trail.expect_entries_from(lambda: 5)
    started = time.monotonic()
    trail.record(event(0))
    assert 0.2 <= time.monotonic() - started < 10
    trail.close()
    assert written_steps(trail.path) == ["step-0"]
