"""Rate limiting: token buckets keyed by who asks (a tenant, or a client address for requests
without a valid key) and by kind of request, each holding a minute's worth of requests and
refilled at its rate per minute.

The buckets of tenants are sized by their tier (jobs/tenants/tiers.py: requests_per_minute for each
kind of costly request, reads_per_minute for everything else), as the cluster's share is: a
tenant pays for a bigger allowance, and no tenant's loop of requests can take the service's
time from the others. Buckets of client addresses are sized by the settings
(api/settings.py, unauthenticated_per_minute).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

# The kinds of request (bucket names, as 429 answers and /metrics name them).
JOB_CREATION = "job creation"
SEARCH = "search"
EMBEDDINGS = "embeddings"
SCHEDULE_CREATION = "schedule creation"
READS = "reads"
UNAUTHENTICATED = "requests without a valid key"
# Buckets kept at most; the least recently used go first (a bucket dropped is full again when
# next seen, which only ever errs towards letting a request through).
MAX_BUCKETS = 100_000


class RateLimiter:
    """Token buckets keyed by (owner, bucket name), thread-safe and bounded in number."""

    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        self.max_buckets = max_buckets
        self._lock = threading.Lock()
        # (owner, bucket) -> (tokens, last refill, monotonic)
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def acquire(
        self, owner: str, bucket: str, per_minute: int | None, cost: int = 1
    ) -> float | None:
        """Take `cost` tokens; returns None if allowed, else the seconds until they are
        there (and takes nothing). A cost over a minute's worth costs a minute's worth."""
        return self._take(owner, bucket, per_minute, cost, take=True)

    def check(self, owner: str, bucket: str, per_minute: int | None, cost: int = 1) -> float | None:
        """As acquire, without taking: None if `cost` tokens are there now, else the seconds
        until they are."""
        return self._take(owner, bucket, per_minute, cost, take=False)

    def _take(
        self, owner: str, bucket: str, per_minute: int | None, cost: int, take: bool
    ) -> float | None:
        if per_minute is None:
            return None
        if per_minute <= 0:
            return 60.0
        rate = per_minute / 60.0
        cost = min(max(cost, 0), per_minute)
        now = time.monotonic()
        key = (owner, bucket)
        with self._lock:
            tokens, last = self._buckets.get(key, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * rate)
            allowed = tokens >= cost
            if take or key in self._buckets:
                self._buckets[key] = (tokens - cost if allowed and take else tokens, now)
                self._buckets.move_to_end(key)
                while len(self._buckets) > self.max_buckets:
                    self._buckets.popitem(last=False)
            return None if allowed else (cost - tokens) / rate
