"""How hard the runner pushes and how it retries: one settings object for the whole loop."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from embedscale.jobs.policies.decisions import RetryPolicy
from embedscale.jobs.runner.feeder import FeedConfig
from embedscale.jobs.runner.table_maintenance import (
    COMPACT_AFTER_FRAGMENTS,
    RETENTION,
    SWEEP_EVERY_S,
)


@dataclass(frozen=True)
class RunnerConfig:
    """How hard the runner pushes and how it retries."""

    max_attempts: int = 3  # per partition, before the job fails
    backoff_seconds: float = 1.0  # first retry delay; doubles each attempt
    backoff_max_seconds: float = 60.0
    slots_per_thread: int = FeedConfig.slots_per_thread
    token_budget: int | None = None
    prepare_threads: int = 2  # jobs warming their model / checking their table at once
    small_partition_bytes: int = FeedConfig.small_partition_bytes
    batch_partitions: int = FeedConfig.batch_partitions
    batch_bytes: int = FeedConfig.batch_bytes
    express_per_thread: int = FeedConfig.express_per_thread
    # Seconds of model time a task spends on a partition before it yields its worker
    # (engine.tasks.slices); None runs each partition whole in one task. What a small job waits
    # behind a big one's running slice at most.
    slice_seconds: float | None = 1.0
    # A task sent while its job has the cluster to itself goes on, slice after slice, for up to
    # this long; the runner asks for the workers back (they end at their next slice's end) as
    # soon as another job has work or the job is cancelled. None: one slice per task always.
    alone_slice_seconds: float | None = 30.0
    # A lone job's partition is split into ranges for idle threads (jobs/runner/ranges.py),
    # each of at least this much model time where it was measured.
    min_range_seconds: float = FeedConfig.min_range_seconds
    # Table maintenance (jobs/runner/table_maintenance.py): a run once a table has taken this
    # many fragments from commits (None: never on that count), and at least every
    # `maintenance_sweep_s` for a table that took any (None: never on a timer); versions
    # younger than `version_retention` are kept.
    compact_after_fragments: int | None = COMPACT_AFTER_FRAGMENTS
    maintenance_sweep_s: float | None = SWEEP_EVERY_S
    version_retention: timedelta = RETENTION

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.backoff_seconds, self.backoff_max_seconds)

    @property
    def feed(self) -> FeedConfig:
        return FeedConfig(
            self.slots_per_thread,
            self.small_partition_bytes,
            self.batch_partitions,
            self.batch_bytes,
            self.express_per_thread,
            min_range_seconds=self.min_range_seconds,
        )
