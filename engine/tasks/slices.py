"""Slices: a partition embedded a few seconds at a time, so that no task holds a worker long.

A partition of a big job is minutes of model time; run as one task it would keep its worker from
every other tenant's work until it ends. So each task embeds only the next slice of a partition,
as many chunks as the model embeds on this worker in `slice_seconds` (its measured rate, by
tokens), and returns a cursor; the runner sends the next slice when the fair order says so, and
other jobs' tasks run between them (jobs/runner/feeder.py).

Between slices the partition's documents, chunks and the vectors not yet written stay in this
worker process's memory (`WorkerStates`, keyed by the run's token), and the runner sends the next
slice back to this worker. Rows are written as fragments every `FLUSH_ROWS` chunks and at the
end; fragments stay invisible until the runner commits the partition as a whole, so slicing
changes nothing in exactly-once: a partition's rows become visible in one commit, as before.

A slice sent while its job has the cluster to itself goes on, slice after slice in one task,
until its partition ends, `alone_slice_seconds` pass, or the runner asks for the workers back
(another job wants them, or the job was cancelled): the runner then calls `ask_to_yield` on every
worker, and each such task ends at its next slice's end. Alone, a job's partitions run nearly
whole (measured: 1-second slices cost 11% of a 2-worker job here, mostly by interleaving a big
partition with the others on its worker, so that it ends last, alone on one worker); beside
other jobs every task is still one slice.

A partition whose job has the cluster to itself and workers to spare is split into ranges
(`split_cursor`): the worker holding it keeps the first range, and each other range is a
slice cursor of its own that starts where no worker holds state, so that it is read again
there (below) and embedded from its start to its `stop`. The runner commits the partition once
every range is done (jobs/runner/ranges.py).

A slice that finds no state here (the worker that held it died, or Dask ran it elsewhere) reads
and chunks the partition again, embeds from the last flush and writes what it embedded at once
(so a partition whose state is lost at every slice still moves on). Its chunking must match the
first slice's (`digest`); if the source changed meanwhile, PartitionChanged fails the slice and the
runner runs the partition again from its start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# Chunks embedded but not yet written that a worker holds before it writes them as fragments:
# bounds what a lost worker costs, while a partition still becomes few fragments (each flush is
# one fragment; small fragments slow the table until compaction).
FLUSH_ROWS = 2048
STATES_PER_WORKER = 8  # partitions mid-way on one worker process (the runner keeps ~2 a thread)
STATE_TTL_S = 600.0  # a state not continued this long belongs to a job that ended
RATE_SMOOTHING = 0.5  # weight of the newest measurement in a model's tokens-per-second
# The least a range split off a partition may hold: a range is read and chunked again on its
# worker (its whole partition), a cost worth paying for a few seconds of model time, not for
# the fraction of a second that many chunks take on a GPU.
MIN_RANGE_CHUNKS = 32
MIN_RANGE_SECONDS = 4.0


@dataclass(frozen=True, slots=True)
class SliceCursor:
    """Where a partition's next slice starts; small, travels to the driver and back."""

    run: str  # this run of the partition: the key of its state on `holder`
    written: int  # chunks whose rows are in fragments the runner already holds
    embedded: int  # chunks embedded; those past `written` exist only in `holder`'s memory
    total: int  # chunks in the partition
    digest: str  # of the partition as first chunked: a re-read must chunk the same
    holder: str = ""  # the worker address holding the state ("" outside a Dask worker)
    stop: int | None = None  # a range's end (split_cursor); None: the partition's end
    # Model seconds to the range's end at the holder's measured rate (None: not measured).
    seconds_left: float | None = None

    @property
    def end(self) -> int:
        """Where this cursor's range ends: its `stop`, or the partition's end."""
        return self.total if self.stop is None else self.stop


class PartitionChanged(Exception):
    """The partition read again for a later slice is not what its first slice chunked."""


class PreparedPartition(Protocol):
    """What a slice state needs of its prepared partition (engine.tasks.partition_task's
    _Prepared, which imports this module)."""

    @property
    def inputs(self) -> Sequence[np.ndarray]: ...


@dataclass
class SliceState:
    """A partition mid-way on this worker: what `_prepare` made, and vectors not yet written."""

    run: str
    prepared: PreparedPartition  # engine.tasks.partition_task._Prepared
    digest: str
    written: int = 0
    embedded: int = 0
    unwritten: list[np.ndarray] = field(default_factory=list)
    used_at: float = field(default_factory=time.monotonic)
    reread: bool = False  # read again for a later slice: its next flush is due at once
    stop: int | None = None  # the end of the range this state embeds; None: the partition's

    @property
    def total(self) -> int:
        return len(self.prepared.inputs)

    @property
    def end(self) -> int:
        return self.total if self.stop is None else self.stop


class WorkerStates:
    """The partitions mid-way on one worker process: a small LRU, thread-safe (a worker may
    run several threads), each state used by one task at a time (the runner never sends two
    slices of one partition at once)."""

    def __init__(self, capacity: int = STATES_PER_WORKER, ttl: float = STATE_TTL_S) -> None:
        self.capacity, self.ttl = capacity, ttl
        self._states: OrderedDict[str, SliceState] = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0  # later slices that found no state here and read their partition again

    def take(self, cursor: SliceCursor) -> SliceState | None:
        """The state `cursor` continues, removed from the cache while its slice runs; None
        when it is not here, or not where the cursor says. The runner's cursor is the truth:
        Dask may have run a slice twice (again elsewhere after its worker died, or while the
        runner sent it anew), and a state ahead of the cursor holds vectors whose rows the
        result the runner discarded had written."""
        with self._lock:
            state = self._states.pop(cursor.run, None)
        if state is None or (state.written, state.embedded) != (cursor.written, cursor.embedded):
            return None
        state.stop = cursor.stop  # the runner may have split the rest off since (split_cursor)
        return state

    def keep(self, state: SliceState) -> None:
        """Hold `state` for its next slice, dropping states of ended jobs and the oldest."""
        now = time.monotonic()
        with self._lock:
            state.used_at = now
            self._states[state.run] = state
            for run in [r for r, s in self._states.items() if now - s.used_at > self.ttl]:
                del self._states[run]
            while len(self._states) > self.capacity:
                self._states.popitem(last=False)

    def __len__(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()


class YieldRequests:
    """When the runner last asked this worker process's long tasks to end (its clock,
    time.time()): a task sent alone at `since` stops at its next slice's end once asked after."""

    def __init__(self) -> None:
        self.latest = 0.0
        self._lock = threading.Lock()

    def ask(self, at: float) -> None:
        with self._lock:
            self.latest = max(self.latest, at)

    def asked_since(self, since: float) -> bool:
        return self.latest >= since


def ask_to_yield(at: float) -> None:
    """Run on every worker by the runner (Client.run): tasks sent alone before `at` end at
    their next slice's end."""
    YIELDS.ask(at)


class ModelRates:
    """Tokens per second of each model in this process, measured on the slices it ran."""

    def __init__(self) -> None:
        self._rates: dict[Hashable, float] = {}

    def record(self, model: Hashable, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        rate = tokens / seconds
        old = self._rates.get(model)
        self._rates[model] = (
            rate if old is None else (RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * old)
        )

    def get(self, model: Hashable) -> float | None:
        return self._rates.get(model)

    def slice_tokens(self, model: Hashable, seconds: float, first: int) -> int:
        """Tokens that take about `seconds` of the model on this worker; `first` (one batch)
        until its rate here is known."""
        rate = self._rates.get(model)
        return first if rate is None else max(1, int(rate * seconds))


def split_cursor(
    cursor: SliceCursor,
    parts: int,
    min_chunks: int = MIN_RANGE_CHUNKS,
    min_seconds: float = MIN_RANGE_SECONDS,
) -> list[SliceCursor]:
    """`cursor`'s range cut into up to `parts` ranges of at least `min_chunks` chunks and
    `min_seconds` of model time (where the holder measured it) each, in order: the first
    keeps `cursor` (its holder's state goes on up to the new stop), each other is a cursor of
    its own run, which no worker holds (its worker reads the partition again and embeds from
    the range's start: `written` = `embedded` = its start)."""
    left = cursor.end - cursor.embedded
    parts = min(parts, left // max(1, min_chunks))
    if cursor.seconds_left is not None:
        parts = min(parts, int(cursor.seconds_left // max(min_seconds, 1e-9)))
    if parts <= 1:
        return [cursor]
    bounds = [cursor.embedded + left * i // parts for i in range(parts + 1)]
    ranges = [dataclasses.replace(cursor, stop=bounds[1], seconds_left=None)]
    for start, stop in zip(bounds[1:-1], bounds[2:]):
        ranges.append(
            SliceCursor(uuid.uuid4().hex, start, start, cursor.total, cursor.digest, "", stop)
        )
    return ranges


def slice_stop(lengths: np.ndarray, start: int, budget_tokens: int) -> int:
    """The end of the slice that starts at chunk `start`: as many chunks, in order, as fit in
    `budget_tokens`, and at least one."""
    cumulative = np.cumsum(lengths[start:])
    fits = int(np.searchsorted(cumulative, budget_tokens, side="right"))
    return min(len(lengths), start + max(1, fits))


def chunking_digest(
    doc_ids: Sequence[str], content_hashes: Sequence[str], lengths: np.ndarray
) -> str:
    """A fingerprint of a partition as chunked: its documents, their content, and each chunk's
    token count. Two reads that agree on it cut the same chunks in the same order."""
    h = hashlib.blake2b(digest_size=16)
    for doc_id, content in zip(doc_ids, content_hashes):
        h.update(doc_id.encode())
        h.update(b"\0")
        h.update(content.encode())
        h.update(b"\0")
    h.update(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
    return h.hexdigest()


def worker_address() -> str:
    """This Dask worker's address, or "" when not running in one (in-process use, tests)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return ""


STATES = WorkerStates()  # this process's partitions mid-way
RATES = ModelRates()  # this process's measured model rates
YIELDS = YieldRequests()  # the runner's latest request that long tasks end
