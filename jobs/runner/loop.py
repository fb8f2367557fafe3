"""The runner: the one driver loop of embedscale. It feeds the cluster from every running job,
commits what completes, retries what fails, cancels on request, and resumes after a restart.

One thread owns all the state and reacts to one inbox of typed events (jobs/runner/events.py):
a job submitted, a job prepared, a task done, a cancel, a drain or stop, and the timers of
retries and worker checks as the inbox's wait. Every decision is a pure policy
(jobs/policies/decisions.py, jobs/policies/scheduling.py, jobs/policies/conflicts.py); this module
does the I/O.

Partitions wait here, not in the Dask scheduler: at most `slots_per_thread` tasks per worker
thread are in flight, submitted by jobs/runner/feeder.py in the order `jobs.policies.scheduling`
chooses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from distributed import Future
from distributed.scheduler import KilledWorker

from embedscale.engine.cluster.start import Cluster
from embedscale.engine.cluster.worker_recovery import WorkerRecovery
from embedscale.engine.errors import error_line
from embedscale.engine.sources.file_access import FileAccess
from embedscale.engine.sources.partitions import Partition
from embedscale.engine.storage.locations import Location
from embedscale.jobs.errors import PartitionsNotDoneError, StoreUnavailableError
from embedscale.jobs.events import EventBus
from embedscale.jobs.generations import job_physical, job_table
from embedscale.jobs.ledger import versions_needed_from
from embedscale.jobs.log_context import call_with_log_fields, log_fields
from embedscale.jobs.policies.decisions import is_done
from embedscale.jobs.runner.admission import AdmissionQueue
from embedscale.jobs.runner.commits import Finished, commit_batch
from embedscale.jobs.runner.config import RunnerConfig
from embedscale.jobs.runner.endings import completion, remove_job_rows
from embedscale.jobs.runner.event_failures import RUNNER_ERROR, EventRetries, job_of
from embedscale.jobs.runner.events import (
    CancelRequested,
    Drain,
    Event,
    Inbox,
    JobPrepared,
    Stop,
    Submitted,
    TaskDone,
    WakeUp,
)
from embedscale.jobs.runner.feeder import Completed, Feeder, failure_line, task_key
from embedscale.jobs.runner.maintenance_runs import StoredMaintenanceRuns
from embedscale.jobs.runner.preparation import JobPreparer, RunningJob
from embedscale.jobs.runner.store_outage import StoreOutage
from embedscale.jobs.runner.table_maintenance import TableMaintenance, Target
from embedscale.jobs.spec import JobSpec
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.records import JobRecord
from embedscale.jobs.tally import Tally
from embedscale.jobs.tenants.tiers import Tier

__all__ = ["Runner", "RunnerConfig"]
log = logging.getLogger(__name__)
RECOVERY_CHECK_S = 5.0  # how often lost workers of a cluster we started are looked for
EVENT_RETRY_PAUSE_S = 0.5  # before events whose handling failed transiently are handled again
THREADS_MAX_AGE_S = 2.0  # the cluster's thread count, asked of the scheduler at most this often


class Runner:
    """Runs the jobs of a Store on a Cluster. `start()` resumes unfinished jobs."""

    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        bus: EventBus,
        tier_of: Callable[[str], Tier],
        data_dir_of: Callable[[str], Path | Location],
        config: RunnerConfig | None = None,
        access: FileAccess | None = None,
        check_spec: Callable[[JobSpec], None] | None = None,
    ) -> None:
        self.store, self.cluster, self.bus = store, cluster, bus
        self.tier_of, self.data_dir_of = tier_of, data_dir_of
        self.config = config or RunnerConfig()
        self._inbox = Inbox(max_batch=512)  # events handled before a commit of their batch
        self._jobs: dict[str, RunningJob] = {}
        self._feeder = Feeder(
            lambda: cluster.client,
            self.config.feed,
            lambda f: self._inbox.put(TaskDone(f)),
            lambda: cluster.worker_addresses(THREADS_MAX_AGE_S),
        )
        self._preparing: set[str] = set()
        self._admission = AdmissionQueue()
        self._cancel_when_prepared: set[str] = set()
        self._finished: list[Finished] = []  # completions of this batch, committed together
        self._draining = False
        self._next_recovery_check = 0.0
        self._stopping = threading.Event()
        self._preparer = JobPreparer(
            store,
            cluster,
            tier_of,
            data_dir_of,
            self.config.token_budget,
            access or FileAccess(),
            check_spec,
            self.config.slice_seconds,
            self.config.alone_slice_seconds,
        )
        self._pool = ThreadPoolExecutor(self.config.prepare_threads, "embedscale-prepare")
        self._thread = threading.Thread(target=self._loop, name="embedscale-runner", daemon=True)
        self.recovery = WorkerRecovery(cluster)
        self._outage = StoreOutage(store, data_dir_of, self._publish)
        # Maintains the tables as commits add fragments (a job of kind maintenance each run);
        # wakes the loop to commit what waited for a compaction.
        self._maintenance_runs = StoredMaintenanceRuns(store, self._publish)
        self.maintenance = TableMaintenance(
            lambda: self._inbox.put(WakeUp()),
            self.config.compact_after_fragments,
            runs=self._maintenance_runs,
            keep_from=lambda target: versions_needed_from(
                store, target.tenant, target.table, target.physical
            ),
            retention=self.config.version_retention,
            sweep_every_s=self.config.maintenance_sweep_s,
        )
        self._event_retries = EventRetries()
        self.error: BaseException | None = None
        # Failed partition attempts by kind ('error', 'killed_worker'), for /metrics.
        self.partition_failures = Tally()

    # --- control, from any thread ---------------------------------------------------------

    def start(self) -> None:
        """Pick up where a previous process left off, then start the loop."""
        for run in self._maintenance_runs.end_interrupted():
            log.warning("maintenance run %s of table %r was interrupted", run.id, run.table_name)
        for job in self.store.unfinished_jobs():
            if job.status == JobStatus.QUEUED:
                self._admission.add(job)
                continue
            self._admission.hold(job.id, job.tenant)
            if job.status == JobStatus.RUNNING:
                self._start_preparing(job, resumed=True)
            elif job.status == JobStatus.CANCELLING:
                self._inbox.put(CancelRequested(job.id))
        self._thread.start()

    def wake(
        self, record: JobRecord | None = None, partitions: list[Partition] | None = None
    ) -> None:
        """A job was submitted (`record`, queued, with its planned `partitions`)."""
        self._inbox.put(Submitted(record, partitions))

    def request_cancel(self, job_id: str) -> None:
        """Stop a job whose status the caller has set to cancelling."""
        self._inbox.put(CancelRequested(job_id))

    def forget_table(self, uri: str) -> None:
        """A table was dropped: the next job on that name prepares it afresh, and no sweep of
        the maintenance brings a run of it back."""
        self._preparer.forget_table(uri)
        self.maintenance.forget(uri)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: feed nothing new, let in-flight partitions finish and be
        committed for up to `timeout` seconds, then cancel the rest (they stay pending and
        run again after a restart)."""
        self._inbox.put(Drain())
        deadline = time.monotonic() + timeout
        while self._feeder and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        self._stopping.set()
        self._inbox.put(Stop())
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, deadline - time.monotonic()))
        self._feeder.cancel_all(dict(self._jobs))
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.maintenance.close()

    def _in_flight(self) -> int:
        """Tasks submitted and not yet handled."""
        return len(self._feeder)

    def _slots_of(self, tenant: str) -> int | None:
        """How many jobs the tenant may run at once (None: no limit)."""
        return self.tier_of(tenant).max_concurrent_jobs

    def backlog(self) -> int:
        """Partitions not yet done, across all jobs: waiting to be fed, on the cluster, waiting
        for a retry, and those of jobs queued for a slot. What autoscaling sizes the cluster
        from (engine.cluster.autoscale): the cluster only ever sees the few the feeder hands it.
        Read
        from another thread; a figure a moment old is good enough there."""
        running = sum(
            len(j.pending) + len(j.in_flight) + len(j.retry_at) for j in list(self._jobs.values())
        )
        return running + self._admission.queued_partitions(self._slots_of)

    @property
    def alive(self) -> bool:
        """Whether the loop is running (it ends only on stop() or a fatal error)."""
        return self._thread.is_alive()

    # --- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                events = self._inbox.take(self._until_next_timer())
                if any(isinstance(e, Stop) for e in events):
                    return
                again: list[Event] = []
                for position, event in enumerate(events):
                    try:
                        self.handle(event)
                        self._event_retries.handled(event)
                    except StoreUnavailableError:
                        self._inbox.put_back(self._outage.unhandled(event, events[position + 1 :]))
                        raise
                    except Exception as exc:  # this event's failure: the others go on
                        if self._event_failed(event, exc):
                            again.append(event)
                self._act()
                self.error = None
                if again:  # after a pause, as a passing I/O error may need
                    self._inbox.put_back(again)
                    self._stopping.wait(EVENT_RETRY_PAUSE_S)
            except StoreUnavailableError as exc:  # a full disk: jobs/runner/store_outage.py
                log.warning("runner step failed: %s; retrying in 1 s", exc)
                self.error = exc
                self._outage.stop(exc, self._jobs, self._drop)
                self._stopping.wait(1.0)
                self._inbox.put(WakeUp())  # settle what is owed as soon as the store is back
            except Exception as exc:  # e.g. a transient I/O error: report it, back off, go on
                log.exception("runner step failed; retrying in 1 s")
                self.error = exc
                self._stopping.wait(1.0)
            except BaseException as exc:  # the process is going down: say so, then go
                log.exception("runner loop stopped")
                self.error = exc
                raise

    def _until_next_timer(self) -> float:
        timers = [self._next_recovery_check] + [
            due for job in self._jobs.values() for due in job.retry_at.values()
        ]
        return max(0.0, min(timers) - time.monotonic())

    def handle(self, event: Event) -> None:
        """React to one event; completions are gathered and committed together by `_act`."""
        if isinstance(event, Submitted):
            if event.record is not None:
                self._admission.add(event.record, event.partitions)
            self._admission.due = True
        elif isinstance(event, CancelRequested):
            with log_fields(**self._about(event.job_id)):
                self._cancel(event.job_id)
        elif isinstance(event, JobPrepared):
            with log_fields(**self._about(event.job_id, event.outcome)):
                self._on_prepared(event.job_id, event.outcome)
        elif isinstance(event, TaskDone):
            self._on_task_done(event.future)
        elif isinstance(event, Drain):
            self._draining = True
            self._feeder.yield_long_tasks()  # what runs returns at its slice's end

    def _act(self) -> None:
        """What the handled events call for: commit, check workers, admit, retry, feed."""
        self._outage.settle()  # endings owed since a store outage, once it is back
        # A job cancelled or failed since its partitions finished commits none of them (a
        # cancel's undo ran already: a commit now would leave its rows, and charge them).
        self._finished = [f for f in self._finished if f[0].record.id in self._jobs]
        if self._finished:
            # A table being compacted takes its partitions at the next commit after it.
            waiting = [f for f in self._finished if self.maintenance.busy(f[0].table.uri)]
            finished = [f for f in self._finished if not self.maintenance.busy(f[0].table.uri)]
            self._finished = waiting
            if finished:
                self._commit(finished)
        now = time.monotonic()
        if now >= self._next_recovery_check:
            self._next_recovery_check = now + RECOVERY_CHECK_S
            self.recovery.check()
            self._feeder.unpin_lost(self._jobs, set(self.cluster.worker_addresses()))
            self._end_idle_jobs()
            self.maintenance.sweep()  # tables below the fragment count, on the timer
        if self._draining:
            return
        if self._admission.due:
            self._admission.due = False
            try:
                self._admit_queued()
            except BaseException:
                self._admission.due = True  # try again after the back-off
                raise
        for job in self._jobs.values():
            for index, due in list(job.retry_at.items()):
                if due <= now:
                    del job.retry_at[index]
                    job.pending.appendleft(index)
        self._feed()

    # --- admission and preparation --------------------------------------------------------

    def _admit_queued(self) -> None:
        """Start the queued jobs the admission policy lets through, in one transaction."""
        admitted = self._admission.admissible(self._slots_of)
        if not admitted:
            return
        running = self.store.start_jobs([job.id for job in admitted])
        for record, partitions in self._admission.started(admitted, running):
            self._publish(record)
            self._start_preparing(record, resumed=False, partitions=partitions)

    def _start_preparing(
        self, record: JobRecord, resumed: bool, partitions: list[Partition] | None = None
    ) -> None:
        self._preparing.add(record.id)
        future = self._pool.submit(
            call_with_log_fields,
            {"job_id": record.id, "tenant": record.tenant},
            self._preparer.prepare,
            record,
            resumed,
            partitions,
        )
        future.add_done_callback(
            lambda f: self._inbox.put(JobPrepared(record.id, f.exception() or f.result()))
        )

    def _on_prepared(self, job_id: str, outcome: RunningJob | BaseException) -> None:
        self._preparing.discard(job_id)
        if isinstance(outcome, BaseException):
            self._finish(
                job_id, JobStatus.FAILED, error=error_line(outcome), error_reason="start_failed"
            )
            return
        self._jobs[job_id] = outcome
        if job_id in self._cancel_when_prepared:
            self._cancel_when_prepared.discard(job_id)
            self._cancel(job_id)
        elif is_done(outcome):  # resumed with every partition already in the table
            self._succeed(outcome)

    # --- the cluster ---------------------------------------------------------------------

    def _feed(self) -> None:
        threads = self.cluster.worker_threads(THREADS_MAX_AGE_S)
        for unsent in self._feeder.feed(self._jobs, threads, time.time()):
            if unsent.job.record.id in self._jobs:  # not failed by an earlier one
                with log_fields(job_id=unsent.job.record.id, tenant=unsent.job.record.tenant):
                    self._on_error(unsent.job, unsent.index, unsent.exc, unsent.message)

    def _event_failed(self, event: Event, exc: Exception) -> bool:
        """A failure to handle `event`: whether to handle it again; otherwise the job it
        concerns ends failed (a task's partitions not accounted for run again instead)."""
        log.error(
            "runner: handling %s failed: %s", type(event).__name__, error_line(exc), exc_info=exc
        )
        if self._event_retries.again(event, exc):
            return True
        job_id = job_of(event)
        if job_id is not None:
            self._finish(
                job_id,
                JobStatus.FAILED,
                error_reason=RUNNER_ERROR,
                error=f"the runner could not handle this job's "
                f"{type(event).__name__} event: {error_line(exc)}",
            )
        return False

    def _task_unaccounted(
        self, future: Future, members: list[tuple[str, int]], exc: Exception
    ) -> None:
        """A finished task whose outcome could not be handled: each of its partitions that
        is neither finished, queued, waiting for a retry nor running again counts a failed
        attempt (and is retried, or fails its job, by the retry policy)."""
        # Before forgetting it: a range of a split partition is carried by its first range's
        # future, which is what the partition's in_flight holds (jobs/runner/ranges.py).
        carried = {
            (job_id, index)
            for job_id, index in members
            if job_id in self._jobs and self._feeder.carries(self._jobs[job_id], index, future)
        }
        self._feeder.forget(future)
        finished = {(job.record.id, result.partition) for job, result in self._finished}
        for job_id, index in members:
            job = self._jobs.get(job_id)
            if (
                job is None
                or (job_id, index) in finished
                or index in job.pending
                or index in job.retry_at
                or index in job.suspects
                or (index in job.in_flight and (job_id, index) not in carried)
            ):
                continue
            job.in_flight.pop(index, None)
            job.progress.pop(index, None)  # from its start: the held slices are not trusted
            with log_fields(job_id=job_id, tenant=job.record.tenant):
                self._on_error(job, index, exc)

    def _on_task_done(self, future: Future) -> None:
        members = list(self._feeder.tasks.get(task_key(future), ()))  # done() forgets them
        try:
            for outcome in self._feeder.done(future, self._jobs):
                if isinstance(outcome, Completed):
                    self._finished.append((outcome.job, outcome.result))
                elif outcome.job.record.id in self._jobs:  # not failed by an earlier outcome
                    with log_fields(job_id=outcome.job.record.id, tenant=outcome.job.record.tenant):
                        self._on_error(outcome.job, outcome.index, outcome.exc, outcome.message)
        except StoreUnavailableError:
            raise
        except Exception as exc:  # e.g. its result could not be read: its partitions run again
            log.error(
                "runner: the outcome of task %s could not be handled: %s",
                task_key(future),
                error_line(exc),
                exc_info=exc,
            )
            self._task_unaccounted(future, members, exc)

    def _on_error(
        self, job: RunningJob, index: int, exc: BaseException | None, message: str | None = None
    ) -> None:
        attempts = job.attempts[index] = job.attempts.get(index, 0) + 1
        self.partition_failures.add("killed_worker" if isinstance(exc, KilledWorker) else "error")
        # Only a partition that ran alone reaches here with KilledWorker (jobs/runner/feeder.py).
        delay = self.config.retry.delay(attempts, isinstance(exc, KilledWorker))
        error = message or failure_line(exc)
        self.store.record_attempt_failed(job.record.id, index, attempts, error, delay is None)
        if delay is None:
            self._finish(
                job.record.id,
                JobStatus.FAILED,
                error_reason="partition_failed",
                error=f"partition {index} failed after {attempts} attempts: {error}",
            )
            return
        log.warning(
            "job %s partition %d failed (%s); retry %d in %.1fs",
            job.record.id,
            index,
            error,
            attempts,
            delay,
        )
        job.retry_at[index] = time.monotonic() + delay

    def _commit(self, results: list[Finished]) -> None:
        """Commit and record a batch of finished partitions (jobs.runner.commits), then tell."""
        outcome = commit_batch(self.store, self.tier_of, results)
        fragments: dict[str, tuple[Target, int]] = {}
        for job, result in outcome.committed:
            self._publish(job.record, "progress", partition_seconds=result.seconds)
            target = Target(
                job.table,
                job.record.tenant,
                job.record.table_name,
                job_physical(self.store, job.record),
            )
            _, added = fragments.get(job.table.uri, (target, 0))
            fragments[job.table.uri] = (target, added + len(result.fragments))
        for target, added in fragments.values():
            self.maintenance.committed(target, added)
        for job_id in outcome.succeeded:
            self._jobs.pop(job_id, None)
            self._admission.release(job_id)
            self._publish(outcome.records[job_id])
        for job_id, (reason, error) in outcome.failed.items():
            self._finish(job_id, JobStatus.FAILED, error_reason=reason, error=error)
        for job in outcome.unconfirmed:
            self._run_again_unfinished(job)
        for job in outcome.sync_due:
            self._succeed(job)

    # --- ending jobs ----------------------------------------------------------------------

    def _cancel(self, job_id: str) -> None:
        if job_id in self._preparing:
            self._cancel_when_prepared.add(job_id)  # cancel once it is prepared
            return
        self._drop(job_id)
        record = self.store.get_job(job_id)
        if record.status == JobStatus.RUNNING:
            record = self.store.set_status(job_id, JobStatus.CANCELLING)
            self._publish(record)
        if record.status == JobStatus.CANCELLING:
            table = job_table(self.store, self.data_dir_of(record.tenant), record)
            with self.maintenance.exclusive(table.uri):  # its deletion after any compaction
                remove_job_rows(self.store, self.data_dir_of(record.tenant), record)
            self._publish(self.store.set_status(job_id, JobStatus.CANCELLED))

    def _succeed(self, job: RunningJob) -> None:
        """End a job whose partitions are all done (a sync job deletes what is gone first)."""
        try:
            with self.maintenance.exclusive(job.table.uri):  # a sync's deletions, likewise
                status, fields = completion(self.store, job)
            self._finish(job.record.id, status, **fields)
        except PartitionsNotDoneError:
            self._run_again_unfinished(job)

    def _end_idle_jobs(self) -> None:
        """Jobs with nothing left to run here and nothing waiting to be committed: a job
        ends when its last partition is committed, so one here lost a partition from the
        bookkeeping. The store decides: it succeeds if every partition is recorded done,
        and otherwise runs again what is not."""
        waiting = {job.record.id for job, _ in self._finished}
        for job in [j for j in self._jobs.values() if is_done(j) and j.record.id not in waiting]:
            self._succeed(job)

    def _run_again_unfinished(self, job: RunningJob) -> None:
        """A job this runner ran out of work for, which the store does not show done: a
        partition went missing from the bookkeeping here. Never call it a success; prepare
        it again as after a restart, which runs what the store and the table do not show
        committed (and records what the table does)."""
        log.error(
            "job %s: no work was left for it here, but the store shows partitions not "
            "done; preparing it again to run them",
            job.record.id,
        )
        self._jobs.pop(job.record.id, None)
        self._feeder.cancel_for(job)
        self._admission.hold(job.record.id, job.record.tenant)  # still its tenant's slot
        self._start_preparing(self.store.get_job(job.record.id), resumed=True)

    def _finish(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        """End a job, unless a cancel came first (one store call decides: the cancel wins)."""
        self._drop(job_id)
        record = self._outage.finish(job_id, status, **fields)  # owed while the store is out
        if record is not None:
            self._publish(record)

    def _drop(self, job_id: str) -> None:
        """Forget a job (its concurrency slot frees); cancel its tasks that serve no other."""
        self._admission.release(job_id)
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._feeder.cancel_for(job)

    def _about(self, job_id: str, outcome: Any = None) -> dict[str, str | None]:
        """The log fields of a job (jobs/log_context.py): its id and, where known here, its
        tenant."""
        job = self._jobs.get(job_id) or (outcome if isinstance(outcome, RunningJob) else None)
        return {"job_id": job_id, "tenant": job.record.tenant if job is not None else None}

    def _publish(self, record: JobRecord, kind: str = "status", **extra: Any) -> None:
        self.bus.publish(record.id, {"type": kind, "job": record.to_dict(), **extra})
