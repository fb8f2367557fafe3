"""What the store reports for health checks and metrics: cheap aggregate reads."""
from __future__ import annotations

from jobs.states import JobStatus
from jobs.store_connection import Connected

# Jobs whose pending partitions are work waiting (a cancelling job's never run).
_WAITING = (JobStatus.QUEUED, JobStatus.RUNNING)


class StoreReports(Connected):
    """Counts over jobs and partitions."""

    def ping(self) -> None:
        """Raise if the database cannot answer, or its disk is full: a store that would fail
        its next write is not ready (StoreUnavailableError, until the disk takes writes)."""
        with self._lock:
            self._lock.check_space()
            self._con.execute("SELECT 1").fetchone()

    def job_counts(self) -> dict[str, int]:
        """Jobs by status."""
        with self._lock:
            return dict(self._con.execute("SELECT status, count(*) FROM jobs GROUP BY status")
                        .fetchall())

    def embedded_totals(self) -> list[tuple[str, str, int, int]]:
        """(tenant, model, chunks, tokens) embedded by every job ever, for counters."""
        with self._lock:
            return self._con.execute(
                "SELECT tenant, json_extract_string(spec, '$.model'), sum(chunks_done), "
                "sum(tokens_done) FROM jobs GROUP BY ALL").fetchall()

    def pending_partitions(self) -> int:
        """Partitions of queued and running jobs not yet done: the work waiting."""
        with self._lock:
            return self._con.execute(
                "SELECT count(*) FROM job_partitions p JOIN jobs j ON p.job_id = j.id "
                f"WHERE j.status IN ({', '.join('?' for _ in _WAITING)}) AND "
                "p.status != 'done'", [str(s) for s in _WAITING]).fetchone()[0]
