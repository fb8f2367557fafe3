"""Per-tenant rate limiting: a token bucket per tenant and kind of request, sized by the
tenant's tier (requests per minute, bursting up to a minute's worth)."""
from __future__ import annotations

import threading
import time


class RateLimiter:
    """Token buckets keyed by (tenant, bucket name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # tokens, last refill

    def acquire(self, tenant: str, bucket: str, per_minute: int | None) -> float | None:
        """Take one token; returns None if allowed, else the seconds until one is free."""
        if per_minute is None:
            return None
        if per_minute <= 0:
            return 60.0
        rate = per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get((tenant, bucket), (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[(tenant, bucket)] = (tokens - 1.0, now)
                return None
            self._buckets[(tenant, bucket)] = (tokens, now)
            return (1.0 - tokens) / rate
