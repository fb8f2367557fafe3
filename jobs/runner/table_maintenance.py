"""Maintenance of the tables the runner commits to, beside the runner and never in its way.

Every committed partition adds a fragment or a few to its table and a version to its manifest.
Once a table has taken `after_fragments` since its last maintenance (or, with `sweep_every_s`,
once that long has passed since a table took any commit), one maintenance run of it goes on
this module's own thread, in steps (MaintenanceSteps):

1. compaction (engine.tables.maintenance): the small fragments merged into large ones;
2. indexes (engine.tables.indexes): the vector, doc_id and full-text indexes built once the
   table is large enough, brought up to date with the rows added since;
3. cleanup (engine.tables.versions): versions older than the retention window removed, never
   one a job not yet ended may still need (its undo, resume or sync reads the versions its
   commits read; the ledger says which: `keep_from`), never the newest one.

One run at a time per table. Only compaction stands in the runner's way, and only for that
table: while it runs the runner keeps the table's finished partitions for its next commit
(`busy`), and waits for it before it deletes rows there (`exclusive`: a cancel, the end of a
sync), since a deletion and a rewrite of the same fragments cannot both commit. Indexes and
cleanup run beside the runner's commits (Lance rebases an index build over appends; cleanup
keeps the newest version and every file a recent uncommitted write may still add).

Each run is a job of kind `maintenance` (MaintenanceRuns): in the job list, with what it did as
its details; its figures are in /metrics (MaintenanceFigures).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import timedelta
from typing import Any, Protocol

from embedscale.engine.errors import error_line
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.tables.indexes import refresh_indexes
from embedscale.engine.tables.maintenance import compact
from embedscale.engine.tables.versions import cleanup
from embedscale.jobs.tally import Tally

log = logging.getLogger(__name__)
COMPACT_AFTER_FRAGMENTS = 64  # fragments a table takes before it is maintained
RETENTION = timedelta(days=7)  # versions younger than this are kept (time travel, restore)
SWEEP_EVERY_S = 3600.0  # a table that took commits is maintained at least this often


@dataclass(frozen=True, slots=True)
class Target:
    """A table to maintain, and whose it is."""

    table: ChunkTable
    tenant: str
    name: str
    # Which generation of the table it is (jobs/generations.py): its folder, '' for generation 1
    # (a table never migrated). The job ledger compares the versions of this generation only.
    physical: str = ""


@dataclass(frozen=True, slots=True)
class MaintenanceSteps:
    """What a maintenance run does, step by step (the engine's calls, injected so the runner's
    policy is testable apart from Lance). Each returns a dataclass of what it did."""

    compact: Callable[[ChunkTable], Any]
    refresh_indexes: Callable[[ChunkTable], Any] | None
    cleanup: Callable[[ChunkTable, timedelta, int | None], Any] | None


class MaintenanceRuns(Protocol):
    """Where runs are recorded: a job of kind `maintenance` each (jobs.runner.maintenance_runs)."""

    def started(self, tenant: str, table_name: str) -> str: ...

    def ended(self, run_id: str, details: dict[str, Any], error: str | None) -> None: ...


class MaintenanceFigures:
    """What /metrics reports of maintenance: runs by outcome, and what they removed."""

    def __init__(self) -> None:
        self.runs = Tally()  # by outcome: succeeded, failed
        self.removed = Tally()  # fragments, versions, bytes
        self.seconds = Tally()  # by step, in milliseconds (Tally counts integers)
        self.running = 0


class TableMaintenance:
    """Maintains the runner's tables as their fragments add up; `on_done` is called (from the
    maintenance thread) once a compaction ends, so the runner commits what waited."""

    def __init__(
        self,
        on_done: Callable[[], None],
        after_fragments: int | None = COMPACT_AFTER_FRAGMENTS,
        steps: MaintenanceSteps | None = None,
        runs: MaintenanceRuns | None = None,
        keep_from: Callable[[Target], int | None] = lambda target: None,
        retention: timedelta = RETENTION,
        sweep_every_s: float | None = SWEEP_EVERY_S,
    ) -> None:
        self.on_done, self.after_fragments = on_done, after_fragments
        self.steps = steps if steps is not None else default_steps()
        self.runs, self.keep_from, self.retention = runs, keep_from, retention
        self.sweep_every_s = sweep_every_s
        self.compactions = 0  # done since start, for tests and operators
        self.figures = MaintenanceFigures()
        self._added: dict[str, int] = {}  # fragments since the last run, per table
        self._targets: dict[str, Target] = {}  # uri -> the table, for runs and sweeps
        self._last_run: dict[str, float] = {}  # uri -> when its last run started (monotonic)
        self._busy: dict[str, threading.Event] = {}  # uri -> set once its compaction ends
        self._running: set[str] = set()  # uris with a run under way (any step)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, "embedscale-maintenance")

    def busy(self, uri: str) -> bool:
        """Whether `uri` is being compacted now (its commits wait)."""
        with self._lock:
            return uri in self._busy

    def running(self, uri: str) -> bool:
        """Whether a maintenance run of `uri` is under way (any of its steps)."""
        with self._lock:
            return uri in self._running or uri in self._busy

    @contextmanager
    def exclusive(self, uri: str) -> Iterator[None]:
        """Wait out a compaction of `uri`; no new one starts on it inside the block."""
        while True:
            with self._lock:
                running = self._busy.get(uri)
                if running is None:
                    self._busy[uri] = held = threading.Event()
                    break
            running.wait()
        try:
            yield
        finally:
            with self._lock:
                del self._busy[uri]
            held.set()

    def committed(self, target: Target, fragments: int) -> None:
        """`fragments` were just committed to the target's table: maintain it if they have
        added up."""
        if fragments <= 0:
            return
        uri = target.table.uri
        with self._lock:
            self._targets[uri] = target
            self._added[uri] = self._added.get(uri, 0) + fragments
            self._last_run.setdefault(uri, time.monotonic())
            if self.after_fragments is None or self._added[uri] < self.after_fragments:
                return
        self._start(uri)

    def sweep(self) -> int:
        """Maintain every table that took commits and whose last run is `sweep_every_s` old
        (or that never had one since this process started that long ago); how many started.
        The runner calls it on its timer."""
        if self.sweep_every_s is None:
            return 0
        now = time.monotonic()
        with self._lock:
            due = [
                uri
                for uri, added in self._added.items()
                if added > 0 and now - self._last_run.get(uri, now) >= self.sweep_every_s
            ]
        return sum(self._start(uri) is not None for uri in due)

    def maintain_now(self, target: Target, retention: timedelta | None = None) -> str | None:
        """Start a run of the target's table now (an operator's request), removing versions
        older than `retention` (default: this maintenance's); its job id ("" when runs are
        not recorded), or None if a run of the table is under way."""
        with self._lock:
            self._targets[target.table.uri] = target
        return self._start(target.table.uri, retention)

    def forget(self, uri: str) -> None:
        """A table was dropped: no sweep or count brings a run of it back."""
        with self._lock:
            for known in (self._targets, self._added, self._last_run):
                known.pop(uri, None)

    def _start(self, uri: str, retention: timedelta | None = None) -> str | None:
        with self._lock:
            if uri in self._running or uri in self._busy:
                return None
            self._running.add(uri)
            self._busy[uri] = threading.Event()
            self._added[uri] = 0
            self._last_run[uri] = time.monotonic()
            target = self._targets[uri]
        # Recorded before it is queued, so an operator's request answers with its job.
        run_id = self._record_start(target)
        try:
            self._pool.submit(
                self._run, target, run_id, retention if retention is not None else self.retention
            )
        except RuntimeError as exc:  # closed: the service is stopping; nothing was done
            with self._lock:
                self._running.discard(uri)
                self._busy.pop(uri).set()
            self._record_end(run_id, {}, f"not started: {exc}")
            return None
        return run_id or ""

    def _run(self, target: Target, run_id: str | None, retention: timedelta) -> None:
        uri, failed = target.table.uri, None
        details: dict[str, Any] = {}
        self.figures.running += 1
        try:
            try:
                done = self._step("compaction", self.steps.compact, target.table, details)
                self.compactions += 1
                self.figures.removed.add(
                    "fragments", max(0, done.fragments_before - done.fragments_after)
                )
            finally:
                with self._lock:
                    self._busy.pop(uri).set()
                self.on_done()
            if self.steps.refresh_indexes is not None:
                self._step("indexes", self.steps.refresh_indexes, target.table, details)
            if self.steps.cleanup is not None:
                keep = self.keep_from(target)
                details["keep_from_version"] = keep
                cleaned = self._step(
                    "cleanup", self.steps.cleanup, target.table, details, retention, keep
                )
                self.figures.removed.add("versions", cleaned.versions)
                self.figures.removed.add("bytes", cleaned.bytes)
        except Exception as exc:  # dropped meanwhile, a store error: the next run tries again
            failed = error_line(exc)
            log.warning("table %r: maintenance failed: %s", target.name, failed)
        finally:
            with self._lock:
                self._running.discard(uri)
            self.figures.running -= 1
            self.figures.runs.add("failed" if failed else "succeeded")
            self._record_end(run_id, details, failed)

    def _step(
        self,
        name: str,
        step: Callable[..., Any],
        table: ChunkTable,
        details: dict[str, Any],
        *rest: Any,
    ) -> Any:
        """Run one step on `table`, its figures (or its error) put in `details[name]`."""
        started = time.perf_counter()
        try:
            done = step(table, *rest)
        except Exception as exc:
            details[name] = {"error": error_line(exc)}
            raise
        seconds = time.perf_counter() - started
        self.figures.seconds.add(name, int(seconds * 1000))
        details[name] = {**_as_dict(done), "seconds": round(seconds, 3)}
        log.info("table %r: %s done in %.2f s: %s", table.name, name, seconds, details[name])
        return done

    def _record_start(self, target: Target) -> str | None:
        if self.runs is None:
            return None
        try:
            return self.runs.started(target.tenant, target.name)
        except Exception as exc:  # the store is out: the run goes on unrecorded
            log.warning("table %r: maintenance run not recorded: %s", target.name, exc)
            return None

    def _record_end(self, run_id: str | None, details: dict[str, Any], error: str | None) -> None:
        if self.runs is None or run_id is None:
            return
        try:
            self.runs.ended(run_id, details, error)
        except Exception as exc:
            log.warning("maintenance run %s: its end not recorded: %s", run_id, exc)

    def close(self) -> None:
        """Let a running maintenance run finish; start no more (a table whose commits add up
        afterwards is maintained by the next process)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def default_steps() -> MaintenanceSteps:
    """The engine's own steps: Lance's compaction, index refresh and version cleanup."""
    return MaintenanceSteps(
        compact=lambda table: compact(table.uri, table.storage),
        refresh_indexes=lambda table: refresh_indexes(table.uri, table.storage),
        cleanup=lambda table, retention, keep: cleanup(table.uri, table.storage, retention, keep),
    )


def _as_dict(done: Any) -> dict[str, Any]:
    """What a step returned, as JSON-ready figures."""
    if is_dataclass(done) and not isinstance(done, type):
        return {k: v for k, v in asdict(done).items() if _plain(v)}
    return {}


def _plain(value: Any) -> bool:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False
