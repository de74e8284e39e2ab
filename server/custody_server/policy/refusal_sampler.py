"""Which rate-limit refusals reach the audit trail: sampled per identity, none uncounted.

Auditing every refusal would let one identity write to the trail as fast as it can
call, which is what the limit is there to stop. Not auditing them would hide a flood
from the SIEM. So each identity gets at most one audit entry per interval: the first
refusal after a quiet interval is audited at once, and its entry says how many
refusals came since the identity's previous entry (itself included). Refusals in
between are counted, and reported by the identity's next entry, or at shutdown
(`drain`) if none comes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_INTERVAL_SECONDS = 60.0


class RefusalSampler:
    def __init__(self, *, interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 max_identities: int = 10_000) -> None:
        if interval_seconds <= 0 or max_identities < 1:
            raise ValueError("interval_seconds and max_identities must be positive")
        self._interval = interval_seconds
        self._clock = clock
        self._max_identities = max_identities
        self._lock = threading.Lock()
        # identity -> (when its last entry was audited, refusals counted since)
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def refused(self, identity: str) -> int:
        """Count one refusal. 0: only counted; n > 0: audit it, reporting n refusals."""
        with self._lock:
            now = self._clock()
            audited_at, pending = self._last.pop(identity, (None, 0))
            if audited_at is not None and now - audited_at < self._interval:
                self._last[identity] = (audited_at, pending + 1)
                return 0
            self._last[identity] = (now, 0)
            if len(self._last) > self._max_identities:
                # The identity quiet for longest goes (its count with it: rare, and the
                # metrics have every refusal).
                self._last.popitem(last=False)
            return pending + 1

    def drain(self) -> dict[str, int]:
        """The refusals counted but not yet reported, by identity; forgets them."""
        with self._lock:
            pending = {identity: count for identity, (_at, count) in self._last.items()
                       if count}
            self._last.clear()
            return pending
