"""Getting a job ready to run: warm its model on the workers, create or check its table (an
overwrite recorded in the job ledger), and, for a job resumed after a crash, take the partitions
its table already holds as done.

Keeps what is already known (warm models, tables checked for a model) so that small jobs on a
warm model and an existing table start without any round trip.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from distributed import Future

from embedscale.engine.chunking.chunker import ChunkSettings
from embedscale.engine.cluster.start import Cluster
from embedscale.engine.models.info import ModelInfo, describe_form, precision_forms
from embedscale.engine.models.registry import ModelSpec
from embedscale.engine.models.warmup import warm_up
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sources.file_access import FileAccess
from embedscale.engine.sources.partitions import Partition
from embedscale.engine.sources.readers import RecordFields
from embedscale.engine.storage.locations import NO_OPTIONS, Location, is_uri
from embedscale.engine.tables.commit_log import latest_version
from embedscale.engine.tasks.partition_task import PartitionResult, TaskConfig
from embedscale.jobs.generations import job_physical, job_table, pinned_physical
from embedscale.jobs.ledger import record_unrecorded
from embedscale.jobs.spec import JobSpec, model_spec, spec_to_run
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.records import JobRecord
from embedscale.jobs.tenants.tiers import Tier

log = logging.getLogger(__name__)


@dataclass
class RunningJob:
    """A job the runner is feeding, as held in memory."""

    record: JobRecord
    tier: Tier
    table: ChunkTable
    config: TaskConfig
    partitions: dict[int, Partition]
    pending: deque[int]  # partition numbers not yet submitted, largest first
    submitted_at: float
    in_flight: dict[int, Future] = field(default_factory=dict)
    retry_at: dict[int, float] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    solo: set[int] = field(default_factory=set)  # partitions that must not share a task
    # Partitions whose task died with its workers, waiting to run alone on the cluster to
    # learn whether they killed them or only stood beside what did.
    suspects: set[int] = field(default_factory=set)
    # Partitions embedded in part (engine.tasks.slices): their slices so far, fragments held here
    # until the last slice, when the partition is committed as a whole.
    progress: dict[int, PartitionResult] = field(default_factory=dict)
    served_at: float | None = None  # when its last task was sent (jobs.policies.scheduling's age)


class JobPreparer:
    """Prepares jobs for the runner; safe to call from several threads."""

    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        tier_of: Callable[[str], Tier],
        data_dir_of: Callable[[str], Path | Location],
        token_budget: int | None = None,
        access: FileAccess | None = None,
        check_spec: Callable[[JobSpec], None] | None = None,
        slice_seconds: float | None = None,
        alone_slice_seconds: float | None = None,
    ) -> None:
        self.store, self.cluster = store, cluster
        self.slice_seconds, self.alone_slice_seconds = slice_seconds, alone_slice_seconds
        self.tier_of, self.data_dir_of = tier_of, data_dir_of
        self.token_budget = token_budget
        self.access = access or FileAccess()
        # The service's checks of what a tenant may name (the model allow-list), made again
        # when the job starts: an operator may have narrowed them since it was submitted.
        self.check_spec = check_spec
        # Models already loaded on the workers (new workers load them through the preload
        # plugin): a job on a warm model starts without a round of warm-up tasks.
        self._warm: dict[ModelSpec, list[ModelInfo]] = {}  # what each worker loaded
        self._checked_tables: set[tuple[str, str, int, str]] = set()
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, object], threading.Lock] = {}

    def _lock_for(self, what: tuple[str, object]) -> threading.Lock:
        """The lock of one model or table: jobs preparing in parallel on the pool's threads
        warm a model once and create or check a table once."""
        with self._lock:
            return self._locks.setdefault(what, threading.Lock())

    def forget_table(self, uri: str) -> None:
        """A table was dropped: the next job on that name prepares it afresh."""
        with self._lock_for(("table", uri)):
            self._checked_tables.difference_update(
                [c for c in list(self._checked_tables) if c[0] == uri]
            )

    def prepare(
        self, record: JobRecord, resumed: bool, planned: list[Partition] | None = None
    ) -> RunningJob:
        """A running job for `record`, with its pending partitions, largest first. A job
        just submitted in this process comes with its `planned` partitions: none is done yet,
        and the store need not be read for them."""
        spec = spec_to_run(record.spec)
        if self.check_spec is not None:
            self.check_spec(spec)
        model = model_spec(spec)
        with self._lock_for(("model", model)):  # one warm-up per model, however many jobs
            loaded = self._warm.get(model)
            if loaded is None:
                loaded = self._warm[model] = warm_up(self.cluster.client, model)
        info = loaded[0]
        record = self._record_precision(record, spec, loaded)
        chunking = ChunkSettings.for_model(info, spec.chunk_tokens, spec.overlap_tokens)
        if pinned_physical(record) is None:  # started by an embedscale of before generations
            record = self.store.pin_generation(record.id)
        # The generation the job started on (a migration job's own): jobs/generations.py.
        table = job_table(self.store, self.data_dir_of(record.tenant), record)
        # On resume the table already holds this job's work: overwrite must not empty it again.
        mode = "append" if resumed and table.exists() else spec.mode
        # A table already checked for this model needs no second look while it exists;
        # overwrite and a re-created table are prepared afresh.
        checked = (table.uri, info.name, info.dimension, info.provider)
        with self._lock_for(("table", table.uri)):  # one job at a time creates or checks it
            if mode == "overwrite" or checked not in self._checked_tables or not table.exists():
                self._prepare_table(table, info, mode, record.id)
                self._checked_tables.add(checked)
        if resumed:
            self._reconcile(record, table)
        # Object-store credentials travel in a task only where it reaches an object store.
        access = (
            self.access
            if spec.source and is_uri(spec.source)
            else dataclasses.replace(self.access, storage=NO_OPTIONS)
        )
        config = TaskConfig(
            record.id,
            model,
            chunking,
            table.uri,
            spec.mode,
            RecordFields(spec.text_field, spec.id_field),
            self.token_budget,
            access,
            table.storage,
            self.slice_seconds,
            self.alone_slice_seconds,
            # A migration job whose models share a tokenizer keeps the chunks as they were.
            reuse_chunks=bool((record.details or {}).get("reuse_chunks")),
        )
        if planned is not None and not resumed:
            partitions = {p.index: p for p in planned}
            todo = list(partitions)
        else:
            stored = {p.partition.index: p for p in self.store.partitions(record.id)}
            partitions = {i: p.partition for i, p in stored.items()}
            todo = [i for i, p in stored.items() if p.status != "done"]
            record = self.store.get_job(record.id)
        # Largest first (LPT): a big partition started last would run alone at the end.
        pending = deque(sorted(todo, key=lambda i: -partitions[i].size_bytes))
        return RunningJob(
            record,
            self.tier_of(record.tenant),
            table,
            config,
            partitions,
            pending,
            record.created_at.timestamp(),
        )

    def _record_precision(
        self, record: JobRecord, spec: JobSpec, loaded: list[ModelInfo]
    ) -> JobRecord:
        """Record in the job the precision it asked for and the forms its model runs in on the
        workers (engine.models.cpu_precision's choice, its minimum cosine to fp32 and its
        speed over fp32 where measured), as `details.model_precision`; logged once per job."""
        if spec.provider == "openai":
            return record  # an endpoint's precision is its own
        forms = precision_forms(loaded)
        entry: dict[str, object] = {"requested": spec.precision, "forms": forms}
        if (record.details or {}).get("model_precision") == entry:
            return record
        log.info(
            "job %s: model %s precision %s runs as %s",
            record.id,
            spec.model,
            spec.precision,
            ", ".join(describe_form(f) for f in forms),
        )
        return self.store.merge_details(record.id, {"model_precision": entry})

    def _prepare_table(self, table: ChunkTable, info: ModelInfo, mode: str, job_id: str) -> None:
        """Create, empty or check the job's table. The ledger records an overwrite before its
        commit, with the version it starts from, and again with the version it made: a
        crash in between is settled from the table's commits after that version, however
        many other jobs commit to the table meanwhile (a cancel restores the rows before)."""
        if mode != "overwrite":
            table.prepare(info, mode, job_id)
            return
        self.store.record_overwrite(job_id, latest_version(table), None)
        made = table.prepare(info, mode, job_id)
        if made is None:  # it made the table: nothing was emptied
            self.store.forget_overwrite(job_id)
        else:
            self.store.record_overwrite(job_id, made.read_version, made.version)

    def _reconcile(self, record: JobRecord, table: ChunkTable) -> None:
        """Partitions committed to the table whose record died with the old process."""
        record_committed(self.store, record, table)


def record_committed(store: Store, record: JobRecord, table: ChunkTable) -> None:
    """Record the partitions of `record`'s job that its table holds and the store does not (a
    commit whose record was lost: a crash, an outage of the store), charged as usual; with
    them, those of the other jobs of its table in the same commits (jobs/ledger.py). `table`
    is the generation the job writes (jobs.generations.job_table)."""
    record_unrecorded(store, record.tenant, table, job_physical(store, record))
