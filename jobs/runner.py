"""The runner: feeds the cluster from every running job, commits what completes, retries what
fails, cancels on request, and resumes after a restart.

One thread owns the loop; the API's threads talk to it through `wake()` and `request_cancel()`.
Partitions wait here, not in the Dask scheduler: at most `per_job_in_flight` of a job and
`slots_per_thread` per worker thread are submitted at once, chosen by `jobs.scheduling`.
Completed partitions are committed to LanceDB (the engine's two-phase write) and then recorded
in DuckDB with their usage charge; after a crash the table's own commits say which partitions
are in, so nothing is redone, lost or charged twice.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Future
from distributed.scheduler import KilledWorker

from engine.cluster import Cluster
from engine.file_access import FileAccess
from engine.sink import ChunkTable, existing_hashes, partition_counts
from engine.tasks import PartitionResult, embed_partition
from engine.worker_recovery import WorkerRecovery
from jobs.conflicts import clashing
from jobs.events import EventBus
from jobs.preparation import JobPreparer, RunningJob
from jobs.quotas import partition_fits
from jobs.records import JobRecord
from jobs.scheduling import PRIORITY_LEVELS, JobView, choose, dask_priority
from jobs.spec import JobSpec
from jobs.states import IllegalTransitionError, JobStatus
from jobs.store import PartitionDone, Store
from jobs.tiers import Tier

log = logging.getLogger(__name__)
MAX_BATCH = 256  # completions handled together
RECOVERY_CHECK_S = 5.0  # how often lost workers of a cluster we started are looked for


@dataclass(frozen=True)
class RunnerConfig:
    """How hard the runner pushes and how it retries."""

    max_attempts: int = 3  # per partition, before the job fails
    backoff_seconds: float = 1.0  # first retry delay; doubles each attempt
    backoff_max_seconds: float = 60.0
    per_job_in_flight: int = 4  # partitions of one job submitted at once
    slots_per_thread: int = 2  # partitions in flight per worker thread, all jobs together
    token_budget: int | None = None
    prepare_threads: int = 2  # jobs warming their model / checking their table at once


class Runner:
    """Runs the jobs of a Store on a Cluster. `start()` resumes unfinished jobs."""

    def __init__(self, store: Store, cluster: Cluster, bus: EventBus,
                 tier_of: Callable[[str], Tier], data_dir_of: Callable[[str], Path],
                 config: RunnerConfig | None = None, access: FileAccess | None = None,
                 check_spec: Callable[[JobSpec], None] | None = None) -> None:
        self.store, self.cluster, self.bus = store, cluster, bus
        self.tier_of, self.data_dir_of = tier_of, data_dir_of
        self.config = config or RunnerConfig()
        self._jobs: dict[str, RunningJob] = {}
        self._keys: dict[str, tuple[str, int]] = {}
        self._completed: queue.Queue[Future] = queue.Queue()
        self._prepared: queue.Queue[tuple[str, RunningJob | BaseException]] = queue.Queue()
        self._preparing: set[str] = set()
        self._cancels: set[str] = set()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._draining = False
        self._admission_due = True  # set when a job arrives or one ends (a slot frees)
        self._preparer = JobPreparer(store, cluster, tier_of, data_dir_of,
                                     self.config.token_budget, access or FileAccess(),
                                     check_spec)
        self._pool = ThreadPoolExecutor(self.config.prepare_threads, "embedscale-prepare")
        self._thread = threading.Thread(target=self._loop, name="embedscale-runner", daemon=True)
        self.error: BaseException | None = None
        self.recovery = WorkerRecovery(cluster)
        self._next_recovery_check = 0.0

    # --- control, from any thread ---------------------------------------------------------

    def start(self) -> None:
        """Pick up where a previous process left off, then start the loop."""
        for job in self.store.unfinished_jobs():
            if job.status == JobStatus.RUNNING:
                self._start_preparing(job, resumed=True)
            elif job.status == JobStatus.CANCELLING:
                self._cancels.add(job.id)
        self._thread.start()

    def wake(self) -> None:
        """Look at the store again (a job was submitted)."""
        self._admission_due = True
        self._wakeup.set()

    def request_cancel(self, job_id: str) -> None:
        """Stop a job whose status the caller has set to cancelling."""
        with self._lock:
            self._cancels.add(job_id)
        self._wakeup.set()

    def forget_table(self, uri: str) -> None:
        """A table was dropped: the next job on that name prepares it afresh."""
        self._preparer.forget_table(uri)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: feed nothing new, let in-flight partitions finish and be
        committed for up to `timeout` seconds, then cancel the rest (they stay pending and
        run again after a restart)."""
        self._draining = True
        self._wakeup.set()
        deadline = time.monotonic() + timeout
        while self._in_flight() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        self._stopping.set()
        self._wakeup.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, deadline - time.monotonic()))
        for job in list(self._jobs.values()):
            for future in job.in_flight.values():
                future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _in_flight(self) -> int:
        return sum(len(j.in_flight) for j in list(self._jobs.values()))

    # --- the loop -------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the loop is running (it ends only on stop() or a fatal error)."""
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
                self.error = None
            except Exception as exc:  # e.g. a transient I/O error: report it, back off, go on
                log.exception("runner step failed; retrying in 1 s")
                self.error = exc
                self._stopping.wait(1.0)
            except BaseException as exc:  # the process is going down: say so, then go
                log.exception("runner loop stopped")
                self.error = exc
                raise

    def _step(self) -> None:
        if time.monotonic() >= self._next_recovery_check:
            self._next_recovery_check = time.monotonic() + RECOVERY_CHECK_S
            self.recovery.check()
        self._handle_cancels()
        if self._admission_due and not self._draining:
            self._admission_due = False
            try:
                self._admit_queued()
            except BaseException:
                self._admission_due = True  # try again next step
                raise
        self._collect_prepared()
        self._retry_due()
        if not self._draining:
            self._feed()
        self._drain_completions(timeout=0.2)

    def _admit_queued(self) -> None:
        queued = [j for j in self.store.unfinished_jobs() if j.status == JobStatus.QUEUED]
        queued.sort(key=lambda j: (-PRIORITY_LEVELS[j.priority], j.created_at))
        active = self.store.active_job_counts() if queued else {}
        for job in queued:
            limit = self.tier_of(job.tenant).max_concurrent_jobs
            if limit is not None and active.get(job.tenant, 0) >= limit:
                continue  # waits in `queued`: the limit delays, it does not fail
            try:
                # No dashboard link in the record: tenants read it (REST, WebSocket), and the
                # dashboard is the operator's (/v1/cluster when exposed).
                record = self.store.set_status(job.id, JobStatus.RUNNING)
            except IllegalTransitionError:
                continue  # cancelled between the query and now
            active[job.tenant] = active.get(job.tenant, 0) + 1
            self._publish(record)
            self._start_preparing(record, resumed=False)

    def _start_preparing(self, record: JobRecord, resumed: bool) -> None:
        self._preparing.add(record.id)
        future = self._pool.submit(self._preparer.prepare, record, resumed)
        future.add_done_callback(lambda f: self._prepared.put(
            (record.id, f.exception() or f.result())))
        self._wakeup.set()

    def _collect_prepared(self) -> None:
        while True:
            try:
                job_id, outcome = self._prepared.get_nowait()
            except queue.Empty:
                return
            self._preparing.discard(job_id)
            if isinstance(outcome, BaseException):
                self._finish(job_id, JobStatus.FAILED, error=_error_line(outcome),
                             error_reason="start_failed")
                continue
            self._jobs[job_id] = outcome
            self._complete_if_done(outcome)

    def _feed(self) -> None:
        slots = self.cluster.worker_threads() * self.config.slots_per_thread
        free = slots - self._in_flight()
        if free <= 0:
            return
        now = time.time()
        views = {j.record.id: JobView(j.record.id, j.record.tenant, j.record.priority,
                                      j.tier.weight, j.submitted_at, len(j.pending),
                                      len(j.in_flight)) for j in self._jobs.values()}
        for job_id in choose(list(views.values()), free, now, self.config.per_job_in_flight):
            job = self._jobs[job_id]
            index = job.pending.popleft()
            attempt = job.attempts.get(index, 0)
            future = self.cluster.client.submit(
                embed_partition, job.partitions[index], job.config, pure=False,
                key=f"embed-partition-{job_id}-{index}-{attempt}",
                priority=dask_priority(views[job_id], now))
            job.in_flight[index] = future
            self._keys[future.key] = (job_id, index)
            future.add_done_callback(self._completed.put)

    def _retry_due(self) -> None:
        now = time.monotonic()
        for job in self._jobs.values():
            for index, due in list(job.retry_at.items()):
                if due <= now:
                    del job.retry_at[index]
                    job.pending.appendleft(index)

    def _drain_completions(self, timeout: float) -> None:
        """Handle every completion that is ready, as one batch: small jobs that finish
        together share one Lance commit per table and one DuckDB transaction."""
        try:
            futures = [self._completed.get(timeout=timeout)]
        except queue.Empty:
            self._wakeup.wait(timeout)
            self._wakeup.clear()
            return
        while len(futures) < MAX_BATCH:
            try:
                futures.append(self._completed.get_nowait())
            except queue.Empty:
                break
        results: list[tuple[RunningJob, PartitionResult]] = []
        for future in futures:
            job_id, index = self._keys.pop(future.key, (None, None))
            job = self._jobs.get(job_id)
            if job is None or job.in_flight.get(index) is not future:
                future.release()
                continue  # the job was cancelled or failed meanwhile: its work is dropped
            del job.in_flight[index]
            if future.status == "finished":
                results.append((job, future.result()))
            elif future.status != "cancelled":
                self._on_error(job, index, future.exception())
            future.release()
        if results:
            self._commit(results)

    def _on_error(self, job: RunningJob, index: int, exc: BaseException | None) -> None:
        attempts = job.attempts[index] = job.attempts.get(index, 0) + 1
        # A KilledWorker already took down a worker on each of Dask's own re-runs: running it
        # again would only kill more workers, every tenant's work with them.
        final = attempts >= self.config.max_attempts or isinstance(exc, KilledWorker)
        error = _error_line(exc)
        self.store.record_attempt_failed(job.record.id, index, attempts, error, final)
        if final:
            self._finish(job.record.id, JobStatus.FAILED, error_reason="partition_failed",
                         error=f"partition {index} failed after {attempts} attempts: {error}")
            return
        delay = min(self.config.backoff_max_seconds,
                    self.config.backoff_seconds * 2 ** (attempts - 1))
        log.warning("job %s partition %d failed (%s); retry %d in %.1fs", job.record.id, index,
                    error, attempts, delay)
        job.retry_at[index] = time.monotonic() + delay

    def _commit(self, results: list[tuple[RunningJob, PartitionResult]]) -> None:
        """Quota-check, commit to LanceDB, then record in DuckDB a batch of finished
        partitions. A partition that would overdraw its tenant's quota fails its job
        (quota_exhausted) uncommitted; what was committed before stays, and the job ends only
        after the batch's accepted partitions are recorded, so its final state counts them."""
        results = self._without_clashes(results)
        accepted, exhausted = self._within_quota(results)
        by_table: dict[str, tuple[ChunkTable, dict[str, list[PartitionResult]]]] = {}
        for job, result in accepted:
            _, per_job = by_table.setdefault(job.table.uri, (job.table, {}))
            per_job.setdefault(job.record.id, []).append(result)
        committed: list[tuple[RunningJob, PartitionResult]] = []
        for table, per_job in by_table.values():
            try:
                table.commit(per_job)
            except Exception as exc:  # the table vanished or its disk failed
                table.remove_orphan_files()
                for job_id in per_job:
                    self._finish(job_id, JobStatus.FAILED, error_reason="commit_failed",
                                 error=f"commit to table '{table.name}' failed: "
                                       f"{_error_line(exc)}")
                continue
            committed += [(j, r) for j, r in accepted if j.record.id in per_job]
        if committed:
            self._record(committed, ending=exhausted.keys())
        for job_id, error in exhausted.items():
            self._finish(job_id, JobStatus.FAILED, error_reason="quota_exhausted", error=error)

    def _record(self, committed: list[tuple[RunningJob, PartitionResult]],
                ending: Collection[str] = ()) -> None:
        """Record committed partitions; jobs with nothing left succeed, unless they are
        `ending` otherwise (a partition of theirs was refused in this very batch)."""
        jobs = {job.record.id: job for job, _ in committed}
        complete = [job_id for job_id, job in jobs.items() if job_id not in ending
                    and not job.pending and not job.in_flight and not job.retry_at]
        records = self.store.record_partitions_done(
            [PartitionDone(job.record.id, job.record.tenant, result.partition,
                           partition_counts(result), tuple(result.skipped))
             for job, result in committed], succeeded=complete)
        for job, result in committed:
            job.record = records[job.record.id]
            self._publish(job.record, "progress", partition_seconds=result.seconds)
        for job_id in complete:
            self._jobs.pop(job_id, None)
            self._admission_due = True
            self._publish(records[job_id])

    def _without_clashes(self, results: list[tuple[RunningJob, PartitionResult]]
                         ) -> list[tuple[RunningJob, PartitionResult]]:
        """The results whose documents can be committed without repeating a row id; the others
        (a document committed by another job since the worker looked) run again."""
        by_table: dict[str, list[tuple[RunningJob, PartitionResult]]] = {}
        for job, result in results:
            by_table.setdefault(job.table.uri, []).append((job, result))
        keep: list[tuple[RunningJob, PartitionResult]] = []
        for uri, group in by_table.items():
            ids = sorted({d for _, r in group for d in r.doc_ids})
            try:
                in_table = set(existing_hashes(uri, ids)) if ids else set()
            except Exception:  # no table: the commit reports it
                in_table = set()
            rerun = set(clashing([r for _, r in group], in_table))
            for position, (job, result) in enumerate(group):
                if position not in rerun:
                    keep.append((job, result))
                    continue
                log.info("job %s partition %d wrote documents committed meanwhile by other "
                         "work; running it again", job.record.id, result.partition)
                job.pending.appendleft(result.partition)
        return keep

    def _within_quota(self, results: list[tuple[RunningJob, PartitionResult]]
                      ) -> tuple[list[tuple[RunningJob, PartitionResult]], dict[str, str]]:
        """The results that fit their tenants' quotas, and the jobs (with the error) whose
        next partition does not: nothing more of those is committed."""
        used: dict[str, int] = {}
        accepted, exhausted = [], {}
        for job, result in results:
            if job.record.id in exhausted:
                continue
            tenant = job.record.tenant
            tier = job.tier = self.tier_of(tenant)  # limits may change mid-job
            if tenant not in used:
                used[tenant] = self.store.usage(tenant)[0]
            if not partition_fits(tier, used[tenant], result.chunks):
                left = max(0, tier.daily_chunks - used[tenant])
                exhausted[job.record.id] = (
                    f"daily chunk quota exhausted: partition {result.partition} needs "
                    f"{result.chunks} chunks, {left} of {tier.daily_chunks} left today")
                continue
            used[tenant] += result.chunks
            accepted.append((job, result))
        return accepted, exhausted

    def _complete_if_done(self, job: RunningJob) -> None:
        if not job.pending and not job.in_flight and not job.retry_at:
            self._finish(job.record.id, JobStatus.SUCCEEDED)

    def _handle_cancels(self) -> None:
        with self._lock:
            cancels, self._cancels = self._cancels, set()
        for job_id in cancels:
            if job_id in self._preparing:
                with self._lock:
                    self._cancels.add(job_id)  # cancel once it is prepared
                continue
            job = self._jobs.pop(job_id, None)
            if job is not None:
                for future in job.in_flight.values():
                    future.cancel()
            record = self.store.get_job(job_id)
            if record.status == JobStatus.RUNNING:
                record = self.store.set_status(job_id, JobStatus.CANCELLING)
                self._publish(record)
            remove_job_rows(self.data_dir_of(record.tenant), record)
            self._publish(self.store.set_status(job_id, JobStatus.CANCELLED))
            self._admission_due = True

    def _finish(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        self._admission_due = True
        job = self._jobs.pop(job_id, None)
        if job is not None:
            for future in job.in_flight.values():
                future.cancel()
        if self.store.get_job(job_id).status == JobStatus.CANCELLING:
            return  # a cancel came first and wins: _handle_cancels completes it
        self._publish(self.store.set_status(job_id, status, **fields))

    def _publish(self, record: JobRecord, kind: str = "status", **extra: Any) -> None:
        self.bus.publish(record.id, {"type": kind, "job": record.to_dict(), **extra})


def remove_job_rows(data_dir: Path, record: JobRecord) -> None:
    """Delete what a cancelled job wrote to its table."""
    ChunkTable(data_dir, record.table_name).delete_job_rows(record.id)


def _error_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, KilledWorker):
        return ("KilledWorker: each worker that ran this partition died (out of memory, or "
                "crashed); it is not tried again")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
