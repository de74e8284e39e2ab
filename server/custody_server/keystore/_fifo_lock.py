"""A mutex that passes itself to waiting threads in arrival order.

`threading.Lock` is not fair: a thread that releases it and asks again at once (holding the
GIL) usually wins, so under load some callers wait for many turns: with 8 threads signing,
the p99 of a signature grew several times over (docs/PERFORMANCE.md#the-hsm-lock). Handing the lock
directly to the oldest waiter bounds every wait by the queue ahead of it.
"""

from __future__ import annotations

import threading
from collections import deque


class FifoLock:
    """Non-reentrant mutex with first-come, first-served hand-over. Use with `with`."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder before us: the lock is now ours

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of an unlocked FifoLock")
            if self._waiters:
                self._waiters.popleft().release()  # stays held: ownership moves on
            else:
                self._held = False

    def locked(self) -> bool:
        return self._held

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
