"""The events the runner reacts to, one inbox for all: the API's threads, Dask's callbacks
and the preparation pool only ever put one of these; the runner's thread alone acts on them."""
from __future__ import annotations

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
