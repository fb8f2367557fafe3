"""Autoscaling on the runner's backlog: a cluster spec's `adaptive` section grows the cluster
with the partitions waiting and shrinks it back when they are done.

Dask's own `Adaptive` sizes a cluster from the tasks its scheduler holds, but embedscale's
runner hands the scheduler only a few partitions per worker thread at a time (so that fair
sharing and priorities decide what runs next, not the scheduler's queue): a burst of ten
thousand partitions looks like four tasks to Dask. `BacklogAdaptive` asks the runner instead:
one worker per `partitions_per_worker` partitions not yet done (waiting, running or waiting for
a retry, across every job, queued jobs included), never less than Dask's own target, within
`minimum` and `maximum`.

Scale-down goes through Dask's graceful retirement (`retire_workers`, after `wait_count`
consecutive recommendations): a retiring worker takes no new task, and a partition that was
running on it is handed to another worker. Exactly once still holds: a partition's fragments
become visible only through the one result the runner commits.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from dask.utils import parse_timedelta
from distributed.deploy.adaptive import Adaptive

from embedscale.engine.errors import EmbedscaleError

ADAPTIVE_KEYS = ("minimum", "maximum", "partitions_per_worker", "interval", "wait_count")
DEFAULT_PARTITIONS_PER_WORKER = 4  # a few per worker: enough to keep each one busy
DEFAULT_INTERVAL = "1s"
DEFAULT_WAIT_COUNT = 3  # idle looks before a worker is retired: no flapping between jobs
log = logging.getLogger(__name__)


def check_adaptive(options: dict[str, Any]) -> None:
    """EmbedscaleError naming what is wrong with a spec's `adaptive` section."""
    if not isinstance(options, dict):
        raise EmbedscaleError("adaptive: expected minimum, maximum, ...")
    unknown = set(options) - set(ADAPTIVE_KEYS)
    if unknown:
        raise EmbedscaleError(
            f"adaptive: unknown keys {sorted(unknown)}; known: {list(ADAPTIVE_KEYS)}"
        )
    for key in ("minimum", "maximum", "partitions_per_worker", "wait_count"):
        value = options.get(key)
        if value is not None and (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < (1 if key != "minimum" else 0)
        ):
            raise EmbedscaleError(
                f"adaptive: {key} must be a whole number "
                f"{'>= 0' if key == 'minimum' else '>= 1'}, not {value!r}"
            )
    if "maximum" not in options:
        raise EmbedscaleError("adaptive: maximum is required (the most workers to start)")
    if options.get("minimum", 0) > options["maximum"]:
        raise EmbedscaleError(
            f"adaptive: minimum {options['minimum']} is above maximum {options['maximum']}"
        )


def backlog_target(backlog: int, partitions_per_worker: int) -> int:
    """Workers wanted for `backlog` partitions not yet done."""
    return math.ceil(max(0, backlog) / max(1, partitions_per_worker))


class BacklogAdaptive(Adaptive):
    """Dask's Adaptive, with the target raised to what the runner's backlog needs."""

    def __init__(
        self,
        cluster: Any,
        backlog: Callable[[], int],
        partitions_per_worker: int = DEFAULT_PARTITIONS_PER_WORKER,
        **kwargs: Any,
    ) -> None:
        self.backlog = backlog
        self.partitions_per_worker = partitions_per_worker
        super().__init__(cluster, **kwargs)

    async def target(self) -> int:
        own = await super().target()
        try:
            waiting = self.backlog()
        except Exception:  # the runner is gone: Dask's own view is all there is
            waiting = 0
        return max(own, backlog_target(waiting, self.partitions_per_worker))


class ScaleLoop:
    """The same target for cluster managers whose `adapt` takes no Adaptive class (the
    dask-kubernetes operator's takes only minimum and maximum and scales on the scheduler's
    view): a thread that asks for `scale(n)`, at once to grow, after `wait_count` lower
    targets in a row to shrink (the manager retires the workers gracefully)."""

    def __init__(
        self,
        cluster: Any,
        backlog: Callable[[], int],
        partitions_per_worker: int,
        minimum: int,
        maximum: int,
        interval_s: float,
        wait_count: int,
    ) -> None:
        self.cluster, self.backlog = cluster, backlog
        self.partitions_per_worker = partitions_per_worker
        self.minimum, self.maximum = minimum, maximum
        self.interval_s, self.wait_count = interval_s, wait_count
        self.requested = minimum
        self._lower = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedscale-scale", daemon=True)

    def start(self) -> ScaleLoop:
        self.cluster.scale(self.requested)
        self._thread.start()
        return self

    def step(self) -> int:
        """One look at the backlog; returns the size asked for now."""
        try:
            waiting = self.backlog()
        except Exception:
            waiting = 0
        target = min(
            self.maximum, max(self.minimum, backlog_target(waiting, self.partitions_per_worker))
        )
        if target >= self.requested:
            self._lower = 0
        else:
            self._lower += 1
            if self._lower < self.wait_count:
                return self.requested
        if target != self.requested:
            self.cluster.scale(target)
            self.requested, self._lower = target, 0
        return self.requested

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except Exception:
                log.warning("scaling the cluster failed; trying again", exc_info=True)

    def stop(self, reason: str = "") -> None:
        self._stop.set()


def start_adaptive(
    cluster: Any, backlog: Callable[[], int], options: dict[str, Any]
) -> Adaptive | ScaleLoop:
    """Make `cluster` (a LocalCluster or any cluster manager with Dask's `adapt`, or at least
    `scale`) follow the backlog within the options' bounds; returns what scales it."""
    check_adaptive(options)
    per_worker = options.get("partitions_per_worker", DEFAULT_PARTITIONS_PER_WORKER)
    minimum, maximum = options.get("minimum", 0), options["maximum"]
    interval = options.get("interval", DEFAULT_INTERVAL)
    wait_count = options.get("wait_count", DEFAULT_WAIT_COUNT)
    try:
        if "Adaptive" in inspect.signature(cluster.adapt).parameters:
            return cluster.adapt(
                Adaptive=BacklogAdaptive,
                backlog=backlog,
                partitions_per_worker=per_worker,
                minimum=minimum,
                maximum=maximum,
                interval=interval,
                wait_count=wait_count,
            )
        return ScaleLoop(
            cluster,
            backlog,
            per_worker,
            minimum,
            maximum,
            parse_timedelta(interval, "seconds"),
            wait_count,
        ).start()
    except Exception as exc:
        raise EmbedscaleError(
            f"cannot autoscale {type(cluster).__name__}: {type(exc).__name__}: {exc}"
        ) from None
