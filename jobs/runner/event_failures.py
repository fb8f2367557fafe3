"""What the runner does when it fails to handle one event: the rest of the batch goes on.

Events are handled one at a time and each failure stays with its own event. A failure that can
pass (an I/O error of object storage, a lost connection) is tried again, a few times, after the
batch; one that cannot, or that keeps failing, ends only the job the event concerns, with the
reason. A task's completion is not handled twice (its bookkeeping may be
half done): its partitions that were not accounted for run again as a failed attempt, so the
retry policy and its limit apply to them as to any failed partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embedscale.jobs.runner.events import CancelRequested, Event, JobPrepared, Submitted

EVENT_ATTEMPTS = 3  # handlings of one event before its job is failed
RUNNER_ERROR = "runner_error"  # the error_reason of a job ended by a failure to handle it


def is_transient(exc: BaseException) -> bool:
    """Whether handling again may succeed: I/O and connections, not a bug or bad data (the
    DuckDB file's own failures reach the runner as StoreUnavailableError: a store outage)."""
    from distributed.comm.core import CommClosedError

    return isinstance(exc, (OSError, TimeoutError, ConnectionError, CommClosedError))


def job_of(event: Event) -> str | None:
    """The job an event concerns (None: the runner as a whole, or a task's several jobs)."""
    if isinstance(event, (CancelRequested, JobPrepared)):
        return event.job_id
    if isinstance(event, Submitted) and event.record is not None:
        return event.record.id
    return None


@dataclass
class EventRetries:
    """Failed handlings of events, counted until an event is handled or given up."""

    attempts: int = EVENT_ATTEMPTS
    _failures: dict[int, tuple[Event, int]] = field(default_factory=dict)

    def again(self, event: Event, exc: BaseException) -> bool:
        """Count a failure of `event`: whether to handle it again (transient, and not too
        often); when not, it is forgotten here."""
        _, failures = self._failures.get(id(event), (event, 0))
        if is_transient(exc) and failures + 1 < self.attempts:
            self._failures[id(event)] = (event, failures + 1)  # the event kept: its id stays
            return True
        self._failures.pop(id(event), None)
        return False

    def handled(self, event: Event) -> None:
        self._failures.pop(id(event), None)
