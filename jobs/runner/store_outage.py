"""The runner through an outage of its store (jobs/store/guard.py): a full disk, say.

While the store records nothing, the runner cannot keep its word on the jobs it runs: a
partition committed to its table whose record then failed is done but not counted, a failure
that could not be written leaves its job `running` for ever. So a runner step that meets
StoreUnavailableError stops every job the runner holds (their tasks are cancelled) and owes each
an ending, failed with the cause named plainly ("no space left on device"); the events of that
step not yet handled go back to the inbox. The owed endings are written first thing once the
store answers again: each job's partitions that its table holds and the store does not (a commit
whose record failed) are recorded first, as a resume after a crash does, so that the ledger
matches the rows and nothing committed is lost; then the job ends. A job cancelled or ended
meanwhile keeps that ending (Store.finish decides).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from embedscale.engine.storage.locations import Location
from embedscale.jobs.errors import StoreUnavailableError
from embedscale.jobs.generations import job_table
from embedscale.jobs.runner.events import CancelRequested, Event
from embedscale.jobs.runner.preparation import record_committed
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.records import JobRecord

log = logging.getLogger(__name__)
STORE_UNAVAILABLE = "store_unavailable"  # the error_reason of the jobs an outage stopped


class StoreOutage:
    """The endings owed to jobs an outage of the store stopped, written once it is back."""

    def __init__(
        self,
        store: Store,
        data_dir_of: Callable[[str], Path | Location],
        publish: Callable[[JobRecord], None],
    ) -> None:
        self.store, self.data_dir_of, self.publish = store, data_dir_of, publish
        self._owed: dict[str, tuple[JobStatus, dict[str, Any]]] = {}

    @property
    def owed(self) -> list[str]:
        """The jobs whose ending waits for the store, oldest first."""
        return list(self._owed)

    def finish(self, job_id: str, status: JobStatus, **fields: Any) -> JobRecord | None:
        """Store.finish; while the store is out, the ending is owed (and the error raised)."""
        try:
            return self.store.finish(job_id, status, **fields)
        except StoreUnavailableError:
            self._owed[job_id] = (status, fields)
            raise

    def stop(
        self, outage: StoreUnavailableError, jobs: Mapping[str, object], drop: Callable[[str], None]
    ) -> None:
        """Stop each of `jobs` (`drop` cancels its tasks and frees its slot); each is owed a
        failure that names the outage's cause."""
        for job_id in list(jobs):
            self._owed.setdefault(
                job_id,
                (
                    JobStatus.FAILED,
                    {
                        "error_reason": STORE_UNAVAILABLE,
                        "error": f"stopped: the job store could not record this job's progress "
                        f"({outage.reason}); what it committed before is kept",
                    },
                ),
            )
            drop(job_id)
        if jobs:
            log.error(
                "the job store is unavailable (%s): %d running job(s) stopped; they "
                "fail once it is back",
                outage.reason,
                len(jobs),
            )

    @staticmethod
    def unhandled(failed: Event, rest: Iterable[Event]) -> list[Event]:
        """The events of a step that met the outage to handle again: those after `failed`,
        and `failed` itself when it is a cancel (it does nothing twice that matters). The
        others' jobs are stopped, what they said moot."""
        return ([failed] if isinstance(failed, CancelRequested) else []) + list(rest)

    def settle(self) -> None:
        """Write the owed endings, oldest first (StoreUnavailableError while still out)."""
        for job_id, (status, fields) in list(self._owed.items()):
            record = self.store.get_job(job_id)
            if record.status == JobStatus.RUNNING:
                try:
                    self._record_committed(record)
                except StoreUnavailableError:
                    raise
                except Exception:  # the table is gone or unreadable: the job fails all the same
                    log.warning(
                        "job %s: its table's commits could not be read", job_id, exc_info=True
                    )
            ended = self.store.finish(job_id, status, **fields)
            del self._owed[job_id]
            if ended is not None:
                log.info(
                    "job %s %s after the job store came back",
                    job_id,
                    ended.status,
                    extra={"job_id": job_id, "tenant": ended.tenant},
                )
                self.publish(ended)

    def _record_committed(self, record: JobRecord) -> None:
        """Record the partitions the job's table holds and the store does not, as a resume
        does, charged to the tenant as usual."""
        record_committed(
            self.store, record, job_table(self.store, self.data_dir_of(record.tenant), record)
        )
