"""Counts of events by key, kept where the events happen (a quota refusal in the service, a
partition failure in the runner) and read by /metrics as counters. The control plane stays
free of Prometheus: api/server/metrics.py turns these into metric families at scrape time."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Hashable


class Tally:
    """A thread-safe Counter: `add` from any thread, `counts` for a snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[Hashable] = Counter()

    def add(self, key: Hashable, n: int = 1) -> None:
        """Count `n` more events of `key`."""
        with self._lock:
            self._counts[key] += n

    def counts(self) -> dict[Hashable, int]:
        """Every key counted so far and its count (a copy)."""
        with self._lock:
            return dict(self._counts)
