"""The server thread that runs the lifecycle manager's due work every `interval` seconds.

Each run rotates every scheduled alias that is due and destroys every version past its
retention (see KeyLifecycle.run_due). Several replicas may run it at once: the
lifecycle guard makes each change happen once.
"""

from __future__ import annotations

import threading

import structlog

from custody_server.lifecycle.manager import DueWork, KeyLifecycle

log = structlog.get_logger("custody.lifecycle")


class LifecycleScheduler:
    def __init__(self, lifecycle: KeyLifecycle, *, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the scheduler interval must be positive")
        self._lifecycle = lifecycle
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="custody-lifecycle",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run_once(self) -> DueWork:
        work = self._lifecycle.run_due()
        if work.rotated or work.destroyed or work.adopted:
            log.info("lifecycle.due_work", rotated=list(work.rotated),
                     destroyed=list(work.destroyed), adopted=list(work.adopted))
        return work

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once()
            except Exception:  # the thread must survive a token outage and try again
                log.exception("lifecycle.run_failed")
