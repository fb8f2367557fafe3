"""Which job's partitions go to the cluster next. Pure policy: no cluster, no database.

Effective priority = the job's priority level (low 0 .. critical 3) + its tier's bonus + an
age bonus that grows while it waits unserved (so low jobs cannot starve), capped below one level
and a half so a fresh critical job still beats any aged low one. The age counts from the job's
last task sent, not from its submission: a big job that is being fed is not starving, and must
not climb above the small jobs that arrive while it runs. Jobs compete in bands of whole
priority: the highest band takes free slots first. Within a band, slots go to the tenant with
the fewest partitions in flight for its weight (fair share), then to that tenant's job with the
fewest in flight, then the oldest. Each job has a cap on partitions in flight, so one huge job
never fills the cluster's queue ahead of others.

The same order reaches the workers through Dask's task priority (`dask_priority`): a worker
runs the highest-priority task it holds next, so a small job's task sent while a big job's
slices wait there goes ahead of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRIORITY_LEVELS = {"low": 0, "normal": 1, "high": 2, "critical": 3}
AGING_SECONDS = 600.0  # waiting this long is worth one priority level...
MAX_AGE_BONUS = 1.5  # ...up to this much
TIER_BONUS_PER_WEIGHT = 0.25  # weight 1 (free) +0, 2 (premium) +0.25, 4 (enterprise) +0.75


@dataclass(frozen=True, slots=True)
class JobView:
    """What the policy needs to know of a running job."""

    job_id: str
    tenant: str
    priority: str
    tier_weight: float
    submitted_at: float  # seconds, any clock shared with `now`
    runnable: int  # partitions ready to submit (not in flight, not waiting for a retry)
    in_flight: int
    # When its last task was sent (None: never, it waits since `submitted_at`).
    served_at: float | None = None


def effective_priority(job: JobView, now: float) -> float:
    """The job's priority level, raised by its tier's weight and by waiting unserved."""
    waiting_since = job.submitted_at if job.served_at is None else job.served_at
    age_bonus = min(MAX_AGE_BONUS, max(0.0, now - waiting_since) / AGING_SECONDS)
    tier_bonus = TIER_BONUS_PER_WEIGHT * (job.tier_weight - 1)
    return PRIORITY_LEVELS[job.priority] + tier_bonus + age_bonus


BAND_PRIORITY = 10_000  # Dask priority per band; within a band, fewer in flight runs first


def dask_priority(job: JobView, now: float, tenant_in_flight: int = 0) -> int:
    """Dask's task priority (higher runs first) for a task of `job` sent while its tenant has
    `tenant_in_flight` tasks out: the band first, as in `choose`, then the tenant's share, so
    on a worker a task of a tenant with little in flight goes ahead of the queued tasks of a
    tenant with much."""
    band = math.floor(effective_priority(job, now))
    share = round(100 * tenant_in_flight / job.tier_weight)
    return band * BAND_PRIORITY - min(BAND_PRIORITY - 1, share)


def choose(jobs: list[JobView], free_slots: int, now: float, per_job_cap: int) -> list[str]:
    """Job ids to submit one partition of each, in order, for up to `free_slots` slots."""
    in_flight = {j.job_id: j.in_flight for j in jobs}
    runnable = {j.job_id: j.runnable for j in jobs}
    tenant_load: dict[str, int] = {}
    for j in jobs:
        tenant_load[j.tenant] = tenant_load.get(j.tenant, 0) + j.in_flight
    bands = {j.job_id: math.floor(effective_priority(j, now)) for j in jobs}
    picks: list[str] = []
    for _ in range(max(0, free_slots)):
        ready = [j for j in jobs if runnable[j.job_id] > 0 and in_flight[j.job_id] < per_job_cap]
        if not ready:
            break
        best = min(
            ready,
            key=lambda j: (
                -bands[j.job_id],
                tenant_load[j.tenant] / j.tier_weight,
                in_flight[j.job_id],
                j.submitted_at,
                j.job_id,
            ),
        )
        picks.append(best.job_id)
        in_flight[best.job_id] += 1
        runnable[best.job_id] -= 1
        tenant_load[best.tenant] += 1
    return picks
