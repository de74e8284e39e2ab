"""Per-identity token buckets.

Each identity has a bucket of at most `burst` tokens that refills at `per_second`;
a call takes one token or is refused with the time until one is there. The limit
is looked up at each call, so a reloaded policy applies at once; the bucket's
level carries over (capped at the new burst). At most `max_identities` buckets
are kept; the least recently used goes first (it is full again by then, unless
more than that many identities are calling at once).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from custody_server.policy.model import RateLimit


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 max_identities: int = 10_000) -> None:
        if max_identities < 1:
            raise ValueError("max_identities must be at least 1")
        self._clock = clock
        self._max_identities = max_identities
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def acquire(self, identity: str, limit: RateLimit) -> float:
        """0.0 if the call may go ahead (a token was taken); else seconds until a token."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(identity)
            if bucket is None:
                bucket = _Bucket(tokens=float(limit.burst), updated=now)
                self._buckets[identity] = bucket
                if len(self._buckets) > self._max_identities:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(identity)
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(limit.burst),
                                    bucket.tokens + elapsed * limit.per_second)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / limit.per_second

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)
