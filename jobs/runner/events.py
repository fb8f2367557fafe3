"""The events the runner reacts to, one inbox for all: the API's threads, Dask's callbacks
and the preparation pool only ever put one of these; the runner's thread alone acts on them."""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Submitted:
    """A job was submitted: the queue may have a job to admit. The submitting service hands
    over the record and its planned partitions, so admission and preparation need no read of
    the store."""

    record: Any = None  # JobRecord
    partitions: Any = None  # list[Partition]


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """The caller set a job to cancelling: stop its work and remove its rows."""

    job_id: str


@dataclass(frozen=True, slots=True)
class JobPrepared:
    """A job's model is warm and its table ready (a RunningJob), or preparing it failed."""

    job_id: str
    outcome: Any  # RunningJob | BaseException


@dataclass(frozen=True, slots=True)
class TaskDone:
    """A Dask task of one or more partitions finished, failed or was cancelled."""

    future: Any  # distributed.Future


@dataclass(frozen=True, slots=True)
class Drain:
    """Graceful stop: submit nothing new, let what runs finish and be committed."""


@dataclass(frozen=True, slots=True)
class Stop:
    """End the loop."""


@dataclass(frozen=True, slots=True)
class WakeUp:
    """A timer came due (a retry's backoff, the periodic worker check)."""


Event = Submitted | CancelRequested | JobPrepared | TaskDone | Drain | Stop | WakeUp


class Inbox:
    """The runner's one queue of events. Any thread may `put`; the runner's thread takes
    them in batches, so completions that arrive together are committed together."""

    def __init__(self, max_batch: int = 512) -> None:
        self._queue: queue.Queue[Event] = queue.Queue()
        self._returned: list[Event] = []  # put back by the runner's thread, taken first
        self.max_batch = max_batch

    def put(self, event: Event) -> None:
        self._queue.put(event)

    def put_back(self, events: list[Event]) -> None:
        """Events taken but not handled (a step failed): the next `take` returns them first,
        in their order. Only the runner's thread, which takes, puts back."""
        self._returned[:0] = events

    def take(self, timeout: float) -> list[Event]:
        """The next event, waiting no longer than `timeout` seconds (a WakeUp when none
        came), and all those queued behind it, up to `max_batch`."""
        events: list[Event] = self._returned[: self.max_batch]
        del self._returned[: self.max_batch]
        if not events:
            try:
                events.append(self._queue.get(timeout=timeout))
            except queue.Empty:
                return [WakeUp()]
        while len(events) < self.max_batch:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return events
