"""The runner's hands on the cluster: which pending partitions go out as Dask tasks now, and
what a finished task means for each partition it carried.

At most `slots` tasks are in flight, chosen in the fair order of `jobs.policies.scheduling`. Small
inline
partitions of different jobs share one task, so their texts share the model's forward passes
(engine.tasks.partition_task.embed_partitions); each still commits, charges and retries on its own.

A task whose workers all died (Dask's KilledWorker) says nothing about which partition killed
them: a worker runs one task and holds the next, and both are lost with it. So each partition
of such a task becomes a suspect and runs again alone on the cluster, nothing beside it: one
that kills its workers then is the culprit and fails its job; one that finishes was only
standing beside it, and no attempt is counted against its job.

A partition of a job that has the cluster to itself goes out as a long task: slice after slice
on its worker (engine.tasks.slices). As soon as another job has work, or the job is cancelled,
the feeder asks every worker to end such tasks at their next slice's end (`ask_to_yield`).
It asks them too when such a job leaves a worker thread idle with nothing pending: a partition
that comes back with enough left is then split into ranges, one for each idle thread besides
its own (jobs/runner/ranges.py), so that a job's last long documents do not run on one worker
each while the others wait.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from distributed import Client, Future
from distributed.scheduler import KilledWorker

from embedscale.engine.errors import error_line
from embedscale.engine.sources.partitions import InlineText, Partition
from embedscale.engine.tasks.partition_task import (
    PartitionFailed,
    PartitionResult,
    embed_partition,
    embed_partitions,
)
from embedscale.engine.tasks.slices import (
    MIN_RANGE_CHUNKS,
    MIN_RANGE_SECONDS,
    SliceCursor,
    ask_to_yield,
    split_cursor,
)
from embedscale.jobs.policies.scheduling import JobView, choose, dask_priority
from embedscale.jobs.runner.preparation import RunningJob
from embedscale.jobs.runner.ranges import RangeGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Completed:
    """A partition's task returned its result."""

    job: RunningJob
    index: int
    result: PartitionResult


@dataclass(frozen=True, slots=True)
class Failed:
    """A partition failed: `exc` raised by its task, or `message` from a shared task."""

    job: RunningJob
    index: int
    exc: BaseException | None
    message: str | None = None

    @property
    def killed_workers_alone(self) -> bool:
        """Its workers died while it ran alone: it killed them."""
        return isinstance(self.exc, KilledWorker)


Outcome = Completed | Failed


def failure_line(exc: BaseException | None) -> str:
    """The error recorded for a partition whose task raised `exc`."""
    if isinstance(exc, KilledWorker):  # only a partition that ran alone is failed by it
        return (
            "KilledWorker: each worker that ran this partition alone died (out of memory, "
            "or crashed); it is not tried again"
        )
    return error_line(exc)


@dataclass(frozen=True)
class FeedConfig:
    """How many tasks go out and which partitions share one."""

    slots_per_thread: int = 2  # tasks in flight per worker thread: one running, one queued
    # Inline partitions this small ride together in one task, up to `batch_partitions` of
    # them (measured on bench_api_load: one task per few-sentence job left the model idle
    # between Dask round trips).
    small_partition_bytes: int = 16 * 1024
    batch_partitions: int = 64
    # ...and up to this many bytes of text in all, so that a shared task stays as short as
    # a slice of a big partition (a worker must become free every few seconds).
    batch_bytes: int = 64 * 1024
    # Tasks per worker thread that small jobs with nothing in flight may send beyond the
    # slots (the express lane): a small job need not wait for a slot held by a big job's
    # queued slices; with a higher Dask priority it runs as soon as the running slice ends.
    express_per_thread: int = 1
    # The least a range split off a partition holds (engine.tasks.slices.split_cursor): chunks,
    # and model time where the holder measured its rate. A partition sent alone is worth
    # splitting once it has two ranges' worth left (before its first slice has counted its
    # chunks: two ranges' worth of bytes, about a kilobyte of text a chunk).
    min_range_chunks: int = MIN_RANGE_CHUNKS
    min_range_seconds: float = MIN_RANGE_SECONDS


def task_key(future: Future) -> str:
    """A task's key: always one of the strings `Feeder._submit` made (Dask's type allows
    other kinds of keys)."""
    return cast(str, future.key)


class Feeder:
    """Submits partitions of the runner's jobs and sorts out what comes back. Owned by the
    runner's thread; `on_done` is called by Dask's callback thread (it only enqueues)."""

    def __init__(
        self,
        client: Callable[[], Client],
        config: FeedConfig,
        on_done: Callable[[Future], None],
        workers: Callable[[], list[str]] = list,
    ) -> None:
        self._client, self.config, self._on_done = client, config, on_done
        self._workers = workers
        self.tasks: dict[str, list[tuple[str, int]]] = {}  # task key -> (job, partition)s
        self._suspects: deque[tuple[str, int]] = deque()  # to run alone, in order
        self._pinned: dict[str, str] = {}  # task key -> the worker it must run on
        self._alone: str | None = None  # the key of the suspect running alone
        self._long: set[str] = set()  # keys of tasks sent as their job's alone, to yield
        self._unsent: list[Failed] = []  # this feed's partitions the client refused
        self._groups: dict[str, RangeGroup] = {}  # range task key -> its partition's ranges
        self._splittable: set[str] = set()  # long tasks with enough left to be split
        self._threads = 1  # worker threads at the last feed

    def __len__(self) -> int:
        """Tasks submitted and not yet handled."""
        return len(self.tasks)

    # --- sending --------------------------------------------------------------------------

    def feed(self, jobs: Mapping[str, RunningJob], threads: int, now: float) -> list[Failed]:
        """Submit what fits: a suspect alone once the cluster is empty; or else the fair
        order's picks for `slots_per_thread` tasks per worker thread (one running, one
        queued), small ones sharing tasks; and then small jobs with nothing in flight on the
        express lane, up to `express_per_thread` tasks per thread more, so they never wait
        for a big job's queued slices to leave a slot. Returns the partitions that could not
        be sent through a working client (`_unsendable`): each failed an attempt."""
        self._unsent = []
        if self._alone is not None or self._run_a_suspect(jobs, now):
            return self._unsent
        if not jobs:
            return self._unsent
        self._threads = max(1, threads)
        slots = self._threads * self.config.slots_per_thread
        alone = sum(1 for job in jobs.values() if job.pending or job.in_flight) == 1
        if not alone:
            self.yield_long_tasks()  # another job has work: long tasks end at their slice's end
        # A job may fill the whole cluster when it runs alone.
        self._send(jobs, list(jobs.values()), slots - len(self.tasks), slots, now, alone)
        if alone and len(self.tasks) < self._threads and self._splittable & self._long:
            # A thread is idle and nothing is pending: the long tasks end at their slice's
            # end, and what they bring back is split (_submit_partition).
            self.yield_long_tasks()
        express = slots + max(1, threads) * self.config.express_per_thread - len(self.tasks)
        small = [job for job in jobs.values() if self._express(job)]
        if express > 0 and small:
            self._send(jobs, small, express, 1, now)
        return self._unsent

    def _express(self, job: RunningJob) -> bool:
        """A small job waiting to start: nothing in flight, all it has left is small."""
        return (
            not job.in_flight
            and bool(job.pending)
            and not job.progress
            and len(job.pending) <= self.config.batch_partitions
            and all(
                job.partitions[i].size_bytes <= self.config.small_partition_bytes
                for i in job.pending
            )
        )

    def _send(
        self,
        jobs: Mapping[str, RunningJob],
        candidates: list[RunningJob],
        free: int,
        per_job_cap: int,
        now: float,
        alone: bool = False,
    ) -> None:
        """Submit up to `free` tasks of `candidates`' pending partitions in the fair order;
        `alone`: theirs is the only job with work, its partitions go out as long tasks."""
        if free <= 0:
            return
        views = {
            j.record.id: JobView(
                j.record.id,
                j.record.tenant,
                j.record.priority,
                j.tier.weight,
                j.submitted_at,
                len(j.pending),
                len(j.in_flight),
                j.served_at,
            )
            for j in candidates
        }
        tenant_load: dict[str, int] = {}
        for job in jobs.values():  # every job's tasks count toward its tenant's share
            tenant_load[job.record.tenant] = tenant_load.get(job.record.tenant, 0) + len(
                job.in_flight
            )
        # The policy's fair order, for more partitions than there are slots only when small
        # ones can share a task.
        sharing = any(job.pending and self._batchable(job, job.pending[0]) for job in candidates)
        picks = free * self.config.batch_partitions if sharing else free
        order = choose(list(views.values()), picks, now, per_job_cap)
        tasks: list[list[tuple[RunningJob, int, int]]] = []
        batch: list[tuple[RunningJob, int, int]] = []
        batch_bytes = 0
        for job_id in order:
            job = jobs[job_id]
            index = job.pending[0]
            size = job.partitions[index].size_bytes
            small = self._batchable(job, index)
            if (
                small
                and batch
                and (
                    len(batch) >= self.config.batch_partitions
                    or batch_bytes + size > self.config.batch_bytes
                    or batch[0][0].config.model != job.config.model
                )
            ):
                tasks.append(batch)
                batch, batch_bytes = [], 0
            opens_a_task = not small or not batch
            if opens_a_task and len(tasks) + (1 if batch else 0) >= free:
                break
            job.pending.popleft()
            tenant = job.record.tenant
            priority = dask_priority(views[job_id], now, tenant_load[tenant])
            tenant_load[tenant] += 1
            if small:
                batch.append((job, index, priority))
                batch_bytes += size
            else:
                tasks.append([(job, index, priority)])
        if batch:
            tasks.append(batch)
        for position, members in enumerate(tasks):
            job = members[0][0]
            # The job's last pending partition, sent alone: it may take the idle threads.
            last = alone and position == len(tasks) - 1 and len(members) == 1 and not job.pending
            try:
                self._submit(
                    [(job, index) for job, index, _ in members],
                    max(priority for _, _, priority in members),
                    alone,
                    spare=self._threads - len(self.tasks) - 1 if last else 0,
                )
            except Exception as exc:
                if not self._unsendable([(job, index) for job, index, _ in members], exc):
                    for rest in tasks[position:]:  # the client is down: all wait for it
                        for job, index, _ in reversed(rest):
                            job.pending.appendleft(index)
                    return
                continue
            for job, _, _ in members:
                job.served_at = now

    def _unsendable(self, members: list[tuple[RunningJob, int]], exc: Exception) -> bool:
        """A task Dask's client refused (its arguments would not serialize, say). Whether the
        fault is the task's: with the client running, each partition of a task of its own
        fails an attempt (the retry policy then decides, and one job's bad partition stops
        neither the runner nor the other jobs); those of a shared task go back to be sent
        alone, which finds the culprit. A client that is not running refuses every task: the
        caller puts them all back, to be sent once it runs again."""
        if getattr(self._client(), "status", None) != "running":
            log.warning("could not send tasks (the client is not running): %s", error_line(exc))
            return False
        # Dask's own error says which type it could not serialize; its cause says why.
        cause = exc.__cause__ or exc
        message = f"the client could not send its task: {error_line(cause)}"
        for job, index in members:
            if len(members) == 1:
                self._unsent.append(Failed(job, index, exc, message))
            else:
                job.solo.add(index)
                job.pending.appendleft(index)
        return True

    def _run_a_suspect(self, jobs: Mapping[str, RunningJob], now: float) -> bool:
        """Whether suspects hold the cluster: nothing new goes out until they have run."""
        while self._suspects and not self.tasks:
            job_id, index = self._suspects.popleft()
            job = jobs.get(job_id)
            if job is None or index not in job.suspects:
                continue  # its job ended meanwhile
            job.suspects.discard(index)
            try:
                self._alone = self._submit([(job, index)], priority=0)
            except Exception as exc:
                if self._unsendable([(job, index)], exc):
                    continue
                job.suspects.add(index)
                self._suspects.appendleft((job_id, index))
            return True
        return bool(self._suspects)

    def _batchable(self, job: RunningJob, index: int) -> bool:
        part: Partition = job.partitions[index]
        return (
            index not in job.solo
            and not job.attempts.get(index)
            and part.size_bytes <= self.config.small_partition_bytes
            and all(isinstance(i, InlineText) for i in part.items)
        )

    def _submit(
        self,
        members: list[tuple[RunningJob, int]],
        priority: int,
        alone: bool = False,
        spare: int = 0,
    ) -> str:
        """Send one task: a partition (in ranges, where it has several), or small partitions
        sharing one; returns its key (the first range's)."""
        if len(members) == 1:
            job, index = members[0]
            return self._submit_partition(job, index, priority, alone, spare)
        client = self._client()
        key = f"embed-partitions-{uuid.uuid4().hex}"
        future = client.submit(
            embed_partitions,
            [(job.partitions[i], job.config) for job, i in members],
            pure=False,
            key=key,
            priority=priority,
        )
        self.tasks[key] = [(job.record.id, index) for job, index in members]
        for job, index in members:
            job.in_flight[index] = future
        future.add_done_callback(self._on_done)
        return key

    def _submit_partition(
        self, job: RunningJob, index: int, priority: int, alone: bool, spare: int
    ) -> str:
        """Send a partition's next slice, or one for each of its ranges; split first, where it
        has enough left (engine.tasks.slices.split_cursor), into as many ranges as its own
        thread and the `spare` ones."""
        client = self._client()
        held = job.progress.get(index)
        # Its ranges may take its own thread and the spare ones: one more range a thread.
        if held is not None and spare + 1 > len(ranges := held.ranges_left()):
            biggest = max(ranges, key=lambda c: c.end - c.embedded)
            pieces = split_cursor(
                biggest,
                spare + 2 - len(ranges),
                self.config.min_range_chunks,
                self.config.min_range_seconds,
            )
            held.set_ranges([c for c in ranges if c is not biggest] + pieces)
        cursors: list[SliceCursor | None] = list(held.ranges_left()) if held is not None else []
        long = (
            alone and job.config.slice_seconds is not None and bool(job.config.alone_slice_seconds)
        )
        workers = set(self._workers()) if any(c.holder for c in cursors if c) else set()
        sent: list[tuple[str, Future, SliceCursor | None, str]] = []
        try:
            for cursor in cursors or [None]:
                # The job, partition and attempt, for the dashboard; then a fresh part, as a
                # partition that ran alone after its task died runs again on the same attempt.
                key = (
                    f"embed-partition-{job.record.id}-{index}-{job.attempts.get(index, 0)}-"
                    f"{uuid.uuid4().hex[:8]}"
                )
                # The next slice goes back to the worker that holds the partition's state
                # (engine.tasks.slices), while it is alive; anywhere else it is read again.
                holder = cursor.holder if cursor is not None and cursor.holder in workers else ""
                pin = {"workers": [holder], "allow_other_workers": True} if holder else {}
                future = client.submit(
                    embed_partition,
                    job.partitions[index],
                    job.config,
                    cursor,
                    time.time() if long else None,  # alone_since: may go on past one slice
                    pure=False,
                    key=key,
                    priority=priority,
                    **pin,
                )
                sent.append((key, future, cursor, holder))
        except Exception:
            for _, future, _, _ in sent:  # a partition goes out whole or not at all
                future.cancel()
            raise
        if len(sent) > 1:
            group = RangeGroup(
                job.record.id,
                index,
                sent[0][1],
                {key: future for key, future, _, _ in sent},
                {key: cursor.embedded for key, _, cursor, _ in sent if cursor is not None},
            )
            self._groups.update((key, group) for key, *_ in sent)
        for key, _, cursor, holder in sent:
            self.tasks[key] = [(job.record.id, index)]
            if holder:
                self._pinned[key] = holder
            if long:
                self._long.add(key)
                if self._worth_splitting(job, index, cursor):
                    self._splittable.add(key)
        job.in_flight[index] = sent[0][1]
        for _, future, _, _ in sent:
            future.add_done_callback(self._on_done)
        return sent[0][0]

    def _worth_splitting(self, job: RunningJob, index: int, cursor: SliceCursor | None) -> bool:
        """Whether a partition's range (its whole, before a first slice) has enough left."""
        if cursor is None:
            return job.partitions[index].size_bytes >= 2 * self.config.min_range_chunks * 1024
        return cursor.end - cursor.embedded >= 2 * self.config.min_range_chunks and (
            cursor.seconds_left is None or cursor.seconds_left >= 2 * self.config.min_range_seconds
        )

    # --- receiving ------------------------------------------------------------------------

    def done(self, future: Future, jobs: Mapping[str, RunningJob]) -> list[Outcome]:
        """What a finished task means for each live partition it carried. Partitions of a
        task that failed as a whole are put back to run again, alone, with no attempt
        counted: shared tasks go back to the queue, tasks whose workers died become
        suspects."""
        group = self._groups.get(task_key(future))
        if group is not None:
            return self._range_done(future, group, jobs)
        # Kept in `tasks` until sorted out: what the runner re-runs (`forget`) if this fails.
        members = self.tasks.get(task_key(future), [])
        ran_alone = task_key(future) == self._alone
        live: list[tuple[int, RunningJob, int]] = []
        for position, (job_id, index) in enumerate(members):
            job = jobs.get(job_id)
            if job is not None and job.in_flight.get(index) is future:
                del job.in_flight[index]
                live.append((position, job, index))
        outcomes: list[Outcome] = []
        if future.status == "finished" and live:
            results = future.result()
            results = results if isinstance(results, list) else [results]
            for position, job, index in live:
                result = results[position]
                if isinstance(result, PartitionFailed):
                    outcomes.append(Failed(job, index, None, result.error))
                    continue
                held = job.progress.pop(index, None)
                outcomes += self._returned(job, index, held.add_slice(result) if held else result)
        elif future.status == "cancelled":
            # Not by this feeder: it forgets its own cancels' partitions before it cancels
            # (cancel_for, unpin_lost). The client cancels every open future when it loses
            # the scheduler and reconnects; the partitions go back, with any slices held.
            for _, job, index in live:
                job.pending.appendleft(index)
        elif future.status != "finished":
            exc = future.exception()
            for _, job, index in live:
                outcomes += self._failed(job, index, exc, ran_alone, shared=len(members) > 1)
        self.forget(future)
        return outcomes

    def _range_done(
        self, future: Future, group: RangeGroup, jobs: Mapping[str, RunningJob]
    ) -> list[Outcome]:
        """A range of a split partition returned: the partition comes back once every range
        has; one that failed (or was cancelled) takes the others with it, and the partition
        is handled as its one task's failure would be."""
        key, job = task_key(future), jobs.get(group.job_id)
        if job is None or job.in_flight.get(group.index) is not group.lead:
            self.forget(future)  # its job ended, or its partition went out again since
            return []
        if future.status == "finished":
            result = future.result()
            self._release(future)
            if not group.returned(key, result):
                return []  # the other ranges run on; the thread this one had is free
            self._end_group(group)
            del job.in_flight[group.index]
            held = job.progress.pop(group.index)  # ranges go out from slices held only
            return self._returned(job, group.index, group.joined(held))
        # Read before the future is released: a released future no longer says it failed.
        exc = future.exception() if future.status == "error" else None
        group.running.pop(key, None)
        self.forget(future)  # and the other ranges with it
        del job.in_flight[group.index]
        if exc is None:  # cancelled, by the client as above
            job.pending.appendleft(group.index)
            return []
        return self._failed(job, group.index, exc, False, shared=False)

    def _returned(self, job: RunningJob, index: int, result: PartitionResult) -> list[Outcome]:
        """A partition's slices so far: done, or held while the rest waits its turn."""
        if result.ranges_left():
            job.progress[index] = result
            job.pending.appendleft(index)
            return []
        return [Completed(job, index, result)]

    def _failed(
        self, job: RunningJob, index: int, exc: BaseException | None, ran_alone: bool, shared: bool
    ) -> list[Outcome]:
        """A partition whose task failed: it runs again from its start (the fragments of its
        earlier slices are never committed), alone on the cluster where its workers died."""
        job.progress.pop(index, None)
        if isinstance(exc, KilledWorker) and not ran_alone:
            job.suspects.add(index)
            self._suspects.append((job.record.id, index))
            return []
        if shared:
            job.solo.add(index)
            job.pending.appendleft(index)
            return []
        return [Failed(job, index, exc)]

    def carries(self, job: RunningJob, index: int, future: Future) -> bool:
        """Whether `future` is (a range of) the task in flight for the job's partition."""
        lead = job.in_flight.get(index)
        group = self._groups.get(task_key(future))
        return lead is future or (group is not None and group.lead is lead)

    def forget(self, future: Future) -> None:
        """Stop tracking a task: sorted out, or its outcome could not be handled. A range's
        other ranges are cancelled with it: its partition runs again as a whole."""
        group = self._groups.get(task_key(future))
        self._release(future)
        if group is not None:
            self._end_group(group)

    def _release(self, future: Future) -> None:
        self.tasks.pop(task_key(future), None)
        self._pinned.pop(task_key(future), None)
        self._long.discard(task_key(future))
        self._splittable.discard(task_key(future))
        if task_key(future) == self._alone:
            self._alone = None
        future.release()

    def _end_group(self, group: RangeGroup) -> None:
        """Forget a split partition's ranges, cancelling those still running."""
        for other in list(group.running.values()):
            other.cancel()
            self._release(other)
        group.running.clear()
        for key in group.starts:
            self._groups.pop(key, None)

    def _running(self, future: Future) -> list[Future]:
        """A task in flight: itself, or every range of its partition still running."""
        group = self._groups.get(task_key(future))
        return list(group.running.values()) if group is not None else [future]

    def unpin_lost(self, jobs: Mapping[str, RunningJob], alive: set[str]) -> None:
        """Send again, to any worker, the slices pinned to a worker that is gone. Dask would
        run them elsewhere while other workers live, but one that finds no worker alive
        waits for its own for ever, even once new workers join (a one-worker cluster whose
        worker restarted); the state it was sent to is lost with its worker anyway. No
        workers known (the scheduler out of reach) says nothing: nothing is sent again. A
        split partition goes back whole, its ranges as they were sent."""
        if not alive:
            return
        for key, holder in list(self._pinned.items()):
            if holder in alive or key not in self._pinned:
                continue
            group = self._groups.get(key)
            if group is not None:
                job = jobs.get(group.job_id)
                if job is not None and job.in_flight.get(group.index) is group.lead:
                    del job.in_flight[group.index]
                    job.pending.appendleft(group.index)
                self._end_group(group)
                continue
            del self._pinned[key]
            self._long.discard(key)
            self._splittable.discard(key)
            for job_id, index in self.tasks.pop(key, []):
                job = jobs.get(job_id)
                if job is None:
                    continue
                future = job.in_flight.pop(index, None)
                if future is not None:
                    future.cancel()
                    job.pending.appendleft(index)

    def yield_long_tasks(self) -> None:
        """Ask every worker to end the long tasks sent so far at their next slice's end (their
        slices go on as ordinary tasks, in the fair order). Sent from a thread of its own: a
        broadcast to the workers must not hold up the runner, and one that fails costs only
        time (each long task still ends within its config's `alone_slice_seconds`)."""
        if not self._long:
            return
        self._long.clear()
        self._splittable.clear()
        at = time.time()

        def broadcast() -> None:
            try:
                self._client().run(ask_to_yield, at, on_error="ignore")
            except Exception as exc:  # the scheduler out of reach: the tasks end on time
                log.debug("could not ask the workers to yield: %s", error_line(exc))

        threading.Thread(target=broadcast, name="embedscale-yield", daemon=True).start()

    def cancel_for(self, job: RunningJob) -> None:
        """Cancel a dropped job's tasks that carry no other job's partitions (a running task
        goes on until it returns: a long one is asked to end at its slice's end)."""
        running = [self._running(f) for f in job.in_flight.values()]
        if any(task_key(each) in self._long for task in running for each in task):
            self.yield_long_tasks()
        for future, task in zip(job.in_flight.values(), running):
            if len(self.tasks.get(task_key(future), ())) <= 1:
                for each in task:
                    each.cancel()

    def cancel_all(self, jobs: Mapping[str, RunningJob]) -> None:
        """Cancel every task in flight (at stop: they run again after a restart)."""
        self.yield_long_tasks()
        for job in jobs.values():
            for future in job.in_flight.values():
                for each in self._running(future):
                    each.cancel()
