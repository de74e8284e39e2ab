"""Concurrent calls' links share a transaction; a failed one fails every call in it."""

from __future__ import annotations

import threading

import pytest

from custody_server.errors import StoreUnavailableError
from custody_server.store import NewRecord
from custody_server.store.group_commit import GroupCommit


def record(number: int) -> NewRecord:
    return NewRecord.link(content=f"link {number}".encode(), step="build", keyid="ab" * 32,
                          file_name="build.abababab.link", products={}, run_id="r",
                          origin="signed", caller="test")


class GatedWriter:
    """Holds its first transaction open until told; fails while `failing` is set."""

    def __init__(self) -> None:
        self.transactions: list[list[NewRecord]] = []
        self.first_started = threading.Event()
        self.release_first = threading.Event()
        self.failing = False

    def __call__(self, records: list[NewRecord]) -> None:
        if not self.transactions and not self.first_started.is_set():
            self.first_started.set()
            assert self.release_first.wait(30)
        if self.failing:
            raise StoreUnavailableError("down")
        self.transactions.append(records)


def _callers(group: GroupCommit, numbers: range, errors: list[BaseException]
             ) -> list[threading.Thread]:
    def call(number: int) -> None:
        try:
            group.insert([record(number)])
        except BaseException as error:
            errors.append(error)

    return [threading.Thread(target=call, args=(n,)) for n in numbers]


def _queued(group: GroupCommit, count: int) -> bool:
    with group._queue_lock:
        return len(group._queue) >= count


def test_calls_that_wait_share_the_next_transaction() -> None:
    writer = GatedWriter()
    group = GroupCommit(writer)
    errors: list[BaseException] = []
    first = _callers(group, range(1), errors)[0]
    first.start()
    assert writer.first_started.wait(30)  # the first call is committing...
    others = _callers(group, range(1, 9), errors)
    for thread in others:
        thread.start()
    while not _queued(group, 8):  # ...while eight more arrive
        threading.Event().wait(0.001)
    writer.release_first.set()
    for thread in (first, *others):
        thread.join(30)
    assert errors == []
    assert [len(batch) for batch in writer.transactions] == [1, 8]
    assert group.transactions == 2
    stored = {r.content for batch in writer.transactions for r in batch}
    assert stored == {f"link {n}".encode() for n in range(9)}


def test_a_failed_transaction_fails_each_call_in_it_and_the_next_ones_work() -> None:
    writer = GatedWriter()
    writer.failing = True
    group = GroupCommit(writer)
    errors: list[BaseException] = []
    first = _callers(group, range(1), errors)[0]
    first.start()
    assert writer.first_started.wait(30)
    others = _callers(group, range(1, 4), errors)
    for thread in others:
        thread.start()
    while not _queued(group, 3):
        threading.Event().wait(0.001)
    writer.release_first.set()
    for thread in (first, *others):
        thread.join(30)
    assert len(errors) == 4 and all(isinstance(e, StoreUnavailableError) for e in errors)
    writer.failing = False
    group.insert([record(99)])
    assert [r.content for r in writer.transactions[-1]] == [b"link 99"]
    with pytest.raises(StoreUnavailableError):
        writer.failing = True
        group.insert([record(100)])
