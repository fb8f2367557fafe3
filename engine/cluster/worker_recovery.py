"""Bringing back the workers of a cluster we started.

A nanny restarts its worker process when it dies, but it gives up for good when the restart
itself fails (a worker killed again while it starts, a start that times out on a machine short
of memory): the cluster then stays short of workers, down to none, and every job waits forever.
`WorkerRecovery` notices workers that have been missing from the scheduler for longer than a
restart takes and starts them afresh from the cluster's own worker spec. A cluster reached by
its address is somebody else's to manage: there it only reports.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from embedscale.engine.cluster.start import Cluster

log = logging.getLogger(__name__)
RESTART_GRACE_S = 30.0  # a worker restart with the model preloaded takes ~5-10 s here


class WorkerRecovery:
    """Call `check()` now and then (the runner does, every few seconds)."""

    def __init__(self, cluster: Cluster, grace_s: float = RESTART_GRACE_S) -> None:
        self.cluster = cluster
        self.grace_s = grace_s
        self._missing_since: dict[Any, float] = {}
        self.restarted = 0  # workers started afresh so far

    def missing(self) -> list[Any]:
        """Names of our cluster's workers that the scheduler does not know right now."""
        manager = self.cluster.manager
        if manager is None or not hasattr(manager, "worker_spec"):
            return []
        info = self.cluster.client.scheduler_info(n_workers=-1).get("workers", {})
        registered = {w.get("name") for w in info.values()}
        return [name for name in list(manager.worker_spec) if name not in registered]

    def check(self, now: float | None = None) -> list[Any]:
        """Restart the workers missing for longer than the grace period; returns their names."""
        now = time.monotonic() if now is None else now
        missing = set(self.missing())
        self._missing_since = {n: self._missing_since.get(n, now) for n in missing}
        due = [n for n, since in self._missing_since.items() if now - since >= self.grace_s]
        if due:
            log.warning(
                "workers %s gone for over %.0f s and not restarted by their nannies; "
                "starting them afresh",
                due,
                self.grace_s,
            )
            self._restart(due)
            self.restarted += len(due)
            for name in due:
                self._missing_since.pop(name, None)
        return due

    def _restart(self, names: list[Any]) -> None:
        manager = self.cluster.manager
        assert manager is not None  # names come from missing(), which finds none without one

        async def restart() -> None:
            for name in names:
                nanny = manager.workers.pop(name, None)
                if nanny is not None:
                    try:
                        await nanny.close(timeout=5)
                    except Exception:  # already dead: nothing to close
                        log.debug("closing the old nanny of worker %s failed", name, exc_info=True)
            await manager._correct_state()  # starts what worker_spec has and workers lacks

        manager.sync(restart)
