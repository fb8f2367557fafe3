"""Retention of ended jobs' inline texts: once a job has been over for `job_retention_days`, the
texts (and metadata) a tenant sent inline are removed from the store; the job's record, its
figures and its ledger (partitions done, their chunks, each document's id) stay.

A job's inline texts are stored once, in its partitions (jobs.spec.recorded_spec); a record
written before that also kept them in its spec, which goes too. The rows the job wrote to its
table are the tenant's data, not the job's, and are not touched. Only ended jobs are pruned:
an unfinished one still needs its texts to run (or to resume after a restart).

A small thread (started with the job service) prunes at once and then every hour; each pass
looks only at jobs ended since the previous pass's cutoff (the first pass of a process at all
of them), in one statement per table, under the store's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from embedscale.jobs.periodic import PeriodicThread
from embedscale.jobs.states import TERMINAL

log = logging.getLogger("embedscale.retention")

DEFAULT_RETENTION_DAYS = 30.0
PRUNE_EVERY_S = 3600.0  # retention counts in days: an hour late is nothing

_ENDED = ", ".join(repr(str(s)) for s in sorted(TERMINAL))
# The ended jobs whose retention ended in the window [since, before): `{since}` is empty for a
# pass over every ended job.
ENDED_BEFORE = f"SELECT id FROM jobs WHERE status IN ({_ENDED}) AND finished_at < ? {{since}}"
# Each inline item of a partition keeps its document id and loses its text and metadata; items
# of files (paths) stay as they are. Partitions without an inline text left are not rewritten.
PRUNE_PARTITIONS = (
    "UPDATE job_partitions SET items = to_json(list_transform(items::JSON[], lambda e: CASE "
    "WHEN json_extract_string(e, '$.kind') = 'inline' THEN json_object('kind', 'inline', "
    "'doc_id', json_extract_string(e, '$.doc_id')) ELSE e END))::VARCHAR "
    "WHERE job_id IN ({ended}) AND list_bool_or(list_transform(items::JSON[], "
    "lambda e: json_exists(e, '$.text'))) RETURNING job_id"
)
# A record written before the texts were stored once keeps them in its spec: as listings show
# it (their count, no ids or metadata).
PRUNE_SPECS = (
    "UPDATE jobs SET spec = CASE WHEN json_type(spec, '$.texts') = 'ARRAY' THEN "
    "json_merge_patch(spec, json_object('texts', json_array_length(spec, '$.texts'), 'ids', "
    "NULL, 'metadata', NULL))::VARCHAR ELSE spec END WHERE id IN ({ended}) AND "
    "json_type(spec, '$.texts') = 'ARRAY' RETURNING id"
)


class Pruning(Protocol):
    """The store's side: Store.drop_inline_texts."""

    def drop_inline_texts(self, before: datetime, since: datetime | None) -> set[str]: ...


class Retention:
    """Prunes the inline texts of jobs ended more than `days` ago, now and every `every_s`
    seconds, on a thread of its own; `prune()` runs one pass (the tests move the clock)."""

    def __init__(
        self,
        store: Pruning,
        days: float,
        clock: Callable[[], datetime],
        every_s: float = PRUNE_EVERY_S,
    ) -> None:
        if days < 0:
            raise ValueError(f"job_retention_days must be 0 or more, not {days}")
        self.store, self.days, self.clock, self.every_s = store, days, clock, every_s
        self._done_until: datetime | None = None  # jobs ended before this are pruned
        self._loop = PeriodicThread(
            "embedscale-retention", self.prune, every_s, log, "retention: pass"
        )

    def prune(self) -> set[str]:
        """One pass: the ids of the jobs whose inline texts were removed."""
        cutoff = self.clock() - timedelta(days=self.days)
        pruned = self.store.drop_inline_texts(cutoff, self._done_until)
        self._done_until = max(cutoff, self._done_until or cutoff)
        if pruned:
            log.info(
                "retention: removed the inline texts of %d jobs ended before %s",
                len(pruned),
                cutoff.isoformat(),
            )
        return pruned

    def start(self) -> None:
        self._loop.every_s = self.every_s  # as set after construction (the tests pass often)
        self._loop.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._loop.stop(timeout)
