"""GET /metrics rendered at most once a second, whatever the number of requests.

Why: a render asks the scheduler for its workers and the store whether it answers, and each
request used to render anew, so a flood of /metrics requests (it needs no key) competed with
the runner for the scheduler, the store's lock and the process's one interpreter lock. A
Prometheus scrape every few seconds loses nothing to a page up to MAX_AGE_S old; every request
within that time gets the same bytes, and while a new page is being made the last one is
served rather than a second render started.
"""

from __future__ import annotations

import asyncio
import time

from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, generate_latest

MAX_AGE_S = 1.0


class MetricsPage:
    """The registry's exposition text, made in a worker thread and kept for `max_age_s`."""

    def __init__(self, registry: CollectorRegistry, max_age_s: float = MAX_AGE_S) -> None:
        self.registry, self.max_age_s = registry, max_age_s
        self._body: bytes | None = None
        self._made_at = 0.0
        self._rendering = asyncio.Lock()

    async def body(self) -> bytes:
        """The page: the one kept if it is fresh (or a new one is being made), else a new
        one."""
        if self._body is not None and (self._fresh() or self._rendering.locked()):
            return self._body
        async with self._rendering:
            if self._body is None or not self._fresh():  # not made while this one waited
                self._body = await run_in_threadpool(generate_latest, self.registry)
                self._made_at = time.monotonic()
            return self._body

    def _fresh(self) -> bool:
        return time.monotonic() - self._made_at < self.max_age_s
