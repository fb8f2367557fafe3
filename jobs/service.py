"""The control plane's front: submit, watch, cancel and list jobs; manage tenants and keys.

The CLI and the HTTP API both go through this class. It owns the DuckDB store, the event bus
and (given a cluster) the runner. Errors are domain errors (jobs.errors, engine.errors); the
callers turn them into exit codes or HTTP statuses.
"""

from __future__ import annotations

import builtins  # `list` is a method of the class below: annotations name the type
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from embedscale.engine.cluster.placement import GpuCount, plan_target
from embedscale.engine.cluster.start import Cluster
from embedscale.engine.errors import EmbedscaleError, EmptySourceError
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sources.documents import Skipped
from embedscale.engine.sources.enumeration import SourcePlan, plan_source, plan_texts
from embedscale.engine.sources.file_access import DEFAULT_MAX_DOCUMENT_BYTES, FileAccess, real_roots
from embedscale.engine.storage.locations import Location, StorageOptions, resolve_storage_options
from embedscale.engine.tables.catalog import TableInfo, describe_table, existing_table, list_tables
from embedscale.engine.tables.catalog import drop_table as remove_table
from embedscale.engine.tables.generation_pointer import remove_pointer
from embedscale.engine.tables.search import Hit, checked_where, search
from embedscale.engine.tables.search_options import (
    DEFAULT_MODE,
    SearchParameterError,
    search_options,
)
from embedscale.engine.tables.versions import HISTORY_LIMIT, VersionInfo
from embedscale.engine.tables.versions import history as table_history
from embedscale.jobs.embeddings.batcher import EmbeddingBatcher
from embedscale.jobs.embeddings.requests import EmbeddingRequests, PendingEmbedding
from embedscale.jobs.errors import ConflictError, InvalidFieldError, QuotaExceededError
from embedscale.jobs.events import EventBus
from embedscale.jobs.generations import (
    active_physical,
    active_table,
    generation_home,
    generation_table,
    table_home,
)
from embedscale.jobs.migrations.compare import MAX_QUERIES, Comparison, compare
from embedscale.jobs.migrations.driver import DEFAULT_SWITCH_MODE, Migrations, MigrationView
from embedscale.jobs.policies.schedules import MAX_SCHEDULES_PER_TENANT
from embedscale.jobs.runner.endings import remove_job_rows
from embedscale.jobs.runner.loop import Runner, RunnerConfig
from embedscale.jobs.runner.table_maintenance import Target
from embedscale.jobs.schedules import DEFAULT_POLL_SECONDS, Clock, Schedules
from embedscale.jobs.spec import (
    JobSpec,
    as_recorded,
    check_model,
    check_provider,
    check_source_allowed,
    model_spec,
    recorded_spec,
)
from embedscale.jobs.states import TERMINAL, IllegalTransitionError, JobStatus
from embedscale.jobs.store.duckdb_store import Store, utcnow
from embedscale.jobs.store.generations import Generation
from embedscale.jobs.store.job_figures import FiguresSnapshot
from embedscale.jobs.store.records import (
    EMBED,
    JOB_KINDS,
    MAINTENANCE,
    MIGRATION,
    JobRecord,
    TenantRecord,
)
from embedscale.jobs.store.retention import Retention
from embedscale.jobs.table_admin import (
    Restored,
    TableActions,
    TableView,
    optimize_now,
    refuse_while_written,
    restore_version,
)
from embedscale.jobs.table_admin import show as show_table
from embedscale.jobs.table_verify import VerifyReport, verify_table
from embedscale.jobs.tally import Tally
from embedscale.jobs.tenants.accounts import Tenants, Usage, tenant_data_dir
from embedscale.jobs.tenants.quotas import CHARS_PER_TOKEN, check_admission, estimate_chunks
from embedscale.jobs.tenants.tiers import Tier, load_tiers
from embedscale.jobs.token_density import chars_per_token

DB_FILE = "embedscale.duckdb"


class JobService:
    """Jobs and tenants of one data directory. With a cluster, `start()` runs jobs on it."""

    def __init__(
        self,
        data_dir: str | Path,
        cluster: Cluster | None = None,
        tiers_file: str | Path | None = None,
        allowed_roots: list[str] | None = None,
        runner_config: RunnerConfig | None = None,
        parallelism: int | None = None,
        max_document_bytes: int | None = None,
        allowed_models: list[str] | None = None,
        allowed_provider_urls: list[str] | None = None,
        clock: Clock | None = None,
        schedule_poll_seconds: float = DEFAULT_POLL_SECONDS,
        tables_uri: str | None = None,
        storage: StorageOptions | None = None,
        max_schedules_per_tenant: int = MAX_SCHEDULES_PER_TENANT,
        job_retention_days: float | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # Tables live under the data dir, or on an object store (`tables_uri`, reached with
        # `storage`, default the AWS variables); job state always stays in the local data dir.
        # The same options reach sources on an object store (s3://... sources).
        self.storage = storage if storage is not None else resolve_storage_options()
        self.tables_home: Path | Location = self.data_dir
        if tables_uri:
            self.tables_home = Location(tables_uri.rstrip("/"), self.storage)
        self.allowed_models = allowed_models  # None: any model (the CLI); see check_model
        self.allowed_provider_urls = allowed_provider_urls  # None: any (the CLI); check_provider
        self.parallelism = parallelism or os.cpu_count() or 1  # until a cluster is attached
        self.runner_config = runner_config
        self.tiers = load_tiers(tiers_file)
        self.allowed_roots = allowed_roots
        # What workers may open: regular files inside the allowed roots (all links resolved),
        # read up to a limit per document; checked again at every open, on the workers too.
        self.file_access = FileAccess(
            real_roots(allowed_roots) if allowed_roots is not None else None,
            max_document_bytes or DEFAULT_MAX_DOCUMENT_BYTES,
            storage=self.storage,
        )
        self.store = Store(self.data_dir / DB_FILE)
        self.bus = EventBus()
        self.quota_refusals = Tally()  # submissions refused for the daily quota, by tenant
        self.tenants = Tenants(self.store, self.tiers)
        # Cron-triggered runs: `clock` (an aware "now") is the tests' way to move time.
        self.schedules = Schedules(
            self.store,
            self.check,
            self.submit,
            clock,
            schedule_poll_seconds,
            max_schedules_per_tenant,
        )
        # Ended jobs' inline texts are removed after `job_retention_days` (None: kept; the
        # server's default is DEFAULT_RETENTION_DAYS, api/settings.py).
        self.retention = (
            Retention(self.store, job_retention_days, clock or utcnow)
            if job_retention_days is not None
            else None
        )
        self.cluster: Cluster | None = None
        self._gpus = GpuCount()  # GPU workers of the cluster, for planning partitions
        self.runner: Runner | None = None
        self.embeddings: EmbeddingRequests | None = None  # POST /v1/embeddings, on a cluster
        self.table_actions = TableActions()  # an operator's drop, restore, optimize: one a table
        # Tables moved to another model (jobs/migrations/): their builds, switches, rollbacks;
        # a retired generation is kept for a rollback as long as old versions are.
        self.migrations = Migrations(
            self.store,
            self.tenant_data_dir,
            lambda tenant, spec, plan, estimate, kind, details: self.submit_planned(
                tenant, spec, plan, estimate, kind=kind, details=details
            ),
            self._check_model,
            self.table_actions,
            self.bus,
            (runner_config or RunnerConfig()).version_retention,
            lambda: self.parallelism,
        )
        self.tenants.ensure_local()
        if cluster is not None:
            self.attach(cluster)

    def attach(self, cluster: Cluster) -> None:
        """Run jobs on `cluster` (once `start()` is called)."""
        self.cluster = cluster
        self.runner = Runner(
            self.store,
            cluster,
            self.bus,
            self.tier_of,
            self.tenant_data_dir,
            self.runner_config,
            self.file_access,
            self._check_model,
        )
        # A spec with an adaptive section grows the cluster with what the runner has waiting.
        cluster.autoscale(self.runner.backlog)
        batcher = EmbeddingBatcher(
            lambda: cluster.client, lambda: cluster.worker_threads(max_age=2.0)
        )
        self.embeddings = EmbeddingRequests(self.store, self.tier_of, self.allowed_models, batcher)

    def start(self, fire_schedules: bool = False) -> None:
        """Resume unfinished jobs and start running new ones (needs a cluster), and, given a
        job_retention_days, remove the inline texts of jobs past it, now and hourly; with
        `fire_schedules` (the server's service), fire the schedules' due runs too, the slots
        missed while it was down once at once. A one-off `embedscale run` fires none."""
        if self.runner is None:
            raise RuntimeError("attach a cluster before starting the job service")
        self.runner.start()
        self.migrations.run_in_background()
        if self.retention is not None:
            self.retention.start()
        if fire_schedules:
            self.schedules.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop running jobs gracefully (see Runner.stop); call before the cluster closes."""
        self.schedules.stop(timeout)  # first: no run is submitted to a stopping runner
        self.migrations.stop(timeout)  # nor a migration's catch-up job
        if self.retention is not None:
            self.retention.stop(timeout)
        if self.embeddings is not None:
            self.embeddings.close()
            self.embeddings = None
        if self.runner is not None:
            self.runner.stop(timeout)
            self.runner = None

    def close(self, timeout: float = 30.0) -> None:
        """Stop the runner, then close the store."""
        self.stop(timeout)
        self.migrations.close(timeout)
        self.store.close()

    def __enter__(self) -> JobService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- tenants (jobs.tenants.accounts.Tenants; these names are what callers use) -------------

    def tier_of(self, tenant: str) -> Tier:
        """The tenant's effective limits (cached; see Tenants.tier_of)."""
        return self.tenants.tier_of(tenant)

    def tenant_data_dir(self, tenant: str) -> Path | Location:
        """Where the tenant's tables live (see jobs.tenants.accounts.tenant_data_dir)."""
        return tenant_data_dir(self.tables_home, tenant)

    def get_tenant(self, name: str) -> TenantRecord:
        """A tenant's record (NotFoundError if there is none)."""
        return self.tenants.get(name)

    def list_tenants(self) -> list[TenantRecord]:
        """Every tenant, by name."""
        return self.tenants.list()

    def create_tenant(self, name: str, tier: str) -> tuple[TenantRecord, str]:
        """A new tenant and its first API key (returned once, stored hashed)."""
        return self.tenants.create(name, tier)

    def set_tier(self, name: str, tier: str) -> TenantRecord:
        """Move a tenant to another tier."""
        return self.tenants.set_tier(name, tier)

    def set_limits(
        self, name: str, daily_chunks: int | None = None, max_concurrent_jobs: int | None = None
    ) -> TenantRecord:
        """Per-tenant overrides of the tier's limits (None: the tier's)."""
        return self.tenants.set_limits(name, daily_chunks, max_concurrent_jobs)

    def rotate_key(self, name: str) -> str:
        """Revoke the tenant's keys and issue a new one (returned once)."""
        return self.tenants.rotate_key(name)

    def tenant_for_key(self, key: str) -> str | None:
        """The tenant of an API key (None if unknown or revoked)."""
        return self.tenants.tenant_for_key(key)

    def usage(self, tenant: str) -> Usage:
        """The tenant's quota and what it used today."""
        return self.tenants.usage(tenant)

    # --- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        tenant: str,
        spec: JobSpec | dict[str, Any],
        partition_bytes: int | None = None,
        *,
        job_id: str | None = None,
        schedule_id: str | None = None,
    ) -> JobRecord:
        """Validate, plan and admit a job (queued), or refuse it: a bad field, a source outside
        the allowed roots, or more chunks than the tenant has left today once those promised
        to its queued and running jobs are counted (checked in the transaction that inserts
        the job, so submissions arriving together never share the same room). A schedule's run
        comes with the id its claim chose (`job_id`) and the schedule's (`schedule_id`)."""
        if not isinstance(spec, JobSpec):
            spec = JobSpec.model_validate(spec)
        limits = self._check_model(spec)
        spec = as_recorded(spec)
        plan = self._plan(spec, partition_bytes)
        estimate = estimate_chunks(
            plan.partitions,
            spec.chunk_tokens,
            spec.overlap_tokens,
            limits,
            self._chars_per_token(spec, plan, limits),
        )
        return self.submit_planned(
            tenant, spec, plan, estimate, job_id=job_id, schedule_id=schedule_id
        )

    def submit_planned(
        self,
        tenant: str,
        spec: JobSpec,
        plan: SourcePlan,
        estimate: int,
        *,
        job_id: str | None = None,
        schedule_id: str | None = None,
        kind: str = EMBED,
        details: dict[str, Any] | None = None,
    ) -> JobRecord:
        """Admit a job already checked and planned (submit's second half; a migration's
        jobs are planned from a table, jobs/migrations/): refused for the tenant's daily quota
        in the transaction that inserts it, queued otherwise and handed to the runner."""
        tier = self.tier_of(tenant)
        now = utcnow()
        recorded = recorded_spec(spec)
        if details and "documents" in details:  # a migration's texts are a table's documents
            recorded["texts"] = details["documents"]
        record = JobRecord(
            id=job_id or uuid.uuid4().hex,
            tenant=tenant,
            spec=recorded,
            status=JobStatus.QUEUED,
            priority=spec.priority,
            table_name=spec.table,
            history=[(str(JobStatus.QUEUED), now.isoformat())],
            created_at=now,
            updated_at=now,
            estimated_chunks=estimate,
            partitions_total=len(plan.partitions),
            schedule_id=schedule_id,
            kind=kind,
            details=details,
        )

        def admit(used: int, promised: int) -> None:
            # In the transaction that inserts the job: what is charged today and promised to
            # the tenant's queued and running jobs (jobs/store/promises.py), with no other
            # submission or charge in between.
            check_admission(tenant, tier, used, estimate, promised)

        try:
            self.store.insert_job(record, plan.partitions, admit)
        except QuotaExceededError:
            self.quota_refusals.add(tenant)
            raise
        if plan.skipped:
            self.store.add_skipped(record.id, plan.skipped)
            record = self.store.get_job(record.id)
        self.bus.publish(record.id, {"type": "status", "job": record.to_dict()})
        if self.runner is not None:
            self.runner.wake(record, plan.partitions)
        return record

    def check(self, spec: JobSpec | dict[str, Any]) -> JobSpec:
        """`spec` checked as `submit` checks it (its fields, the model, the source planned
        under the allowed roots), without admitting it: a schedule's job template."""
        if not isinstance(spec, JobSpec):
            spec = JobSpec.model_validate(spec)
        self._check_model(spec)
        self._plan(spec)
        return spec

    def _check_model(self, spec: JobSpec):
        """The spec's provider endpoint and model allowed, its chunk sizes within the model's
        bounds (check_model's limits returned)."""
        check_provider(spec, self.allowed_provider_urls)
        return check_model(spec, self.allowed_models)

    def _chars_per_token(self, spec: JobSpec, plan: SourcePlan, limits) -> float:
        """The job's text as its model's tokenizer reads it, where the model is local."""
        if limits is None:
            return CHARS_PER_TOKEN
        resolved = model_spec(spec)
        return chars_per_token(plan.partitions, resolved.tokenizer or resolved, self.file_access)

    def _plan(self, spec: JobSpec, partition_bytes: int | None = None) -> SourcePlan:
        # Planned for the cluster that runs it: its task slots, and larger partitions where
        # its workers own GPUs (engine.cluster.placement).
        # An adaptive cluster is planned for the size it may grow to.
        target = (
            plan_target(
                max(self.cluster.worker_threads(max_age=2.0), self.cluster.max_threads),
                self._gpus(self.cluster.client),
            )
            if self.cluster is not None
            else plan_target(self.parallelism, 0)
        )
        try:
            if spec.texts is not None:
                return plan_texts(spec.texts, spec.ids, spec.metadata)
            if spec.source is None:  # JobSpec checks that a job names texts or a source
                raise ValueError("a job names texts or a source")
            source = check_source_allowed(spec.source, self.allowed_roots)
            try:
                return plan_source(
                    source,
                    parallelism=target.parallelism,
                    access=self.file_access,
                    partition_bytes=partition_bytes,
                    min_partition_bytes=target.min_partition_bytes,
                )
            except EmptySourceError as exc:
                if spec.mode != "sync":
                    raise
                if not spec.allow_empty:  # an unmounted folder must not wipe the table
                    raise InvalidFieldError(
                        "source",
                        (
                            f"{exc}; a sync of a source that lists nothing would delete every "
                            f"row of table '{spec.table}': pass allow_empty (--allow-empty) if "
                            "that is what you want"
                        ),
                    ) from None
                return SourcePlan([], [], source, 0, 0)
        except EmbedscaleError as exc:
            if isinstance(exc, InvalidFieldError):
                raise
            raise InvalidFieldError(
                "source" if spec.source is not None else "texts", str(exc)
            ) from None

    def get(self, job_id: str, tenant: str | None = None) -> JobRecord:
        return self.store.get_job(job_id, tenant)

    def list(
        self,
        tenant: str | None = None,
        status: str | None = None,
        table: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        schedule: str | None = None,
        kind: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (None at the end);
        `schedule`: only the runs of that schedule; `kind`: only embed jobs or only
        maintenance runs."""
        if status is not None and status not in {s.value for s in JobStatus}:
            raise InvalidFieldError(
                "status",
                f"unknown status {status!r}: use one of {', '.join(s.value for s in JobStatus)}",
            )
        if kind is not None and kind not in JOB_KINDS:
            raise InvalidFieldError("kind", f"unknown kind {kind!r}: use {' or '.join(JOB_KINDS)}")
        before = None
        if cursor:
            last = self.store.get_job(cursor, tenant)
            before = (last.created_at, last.id)
        jobs = self.store.list_jobs(tenant, status, table, limit + 1, before, schedule, kind)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, (jobs[-1].id if more and jobs else None)

    def skipped(self, job: JobRecord) -> builtins.list[Skipped]:
        """The documents a job skipped, with reasons (the job's record was already looked up,
        for its tenant, by the caller). Most jobs skip nothing: no DuckDB round trip then."""
        return self.store.skipped(job.id) if job.skipped_count else []

    def cancel(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """Cancel a queued or running job; its rows are removed from its table. A finished job
        cannot be cancelled (ConflictError)."""
        record = self.store.get_job(job_id, tenant)
        if record.status in TERMINAL:
            raise ConflictError(f"job {job_id} already {record.status}")
        if record.kind == MAINTENANCE:
            raise ConflictError(
                f"job {job_id} is a table's maintenance run: it cannot be cancelled; it ends "
                "on its own and leaves the table's rows as they were"
            )
        if record.status == JobStatus.QUEUED:
            try:
                record = self.store.set_status(job_id, JobStatus.CANCELLED)
                self.bus.publish(job_id, {"type": "status", "job": record.to_dict()})
                return record
            except IllegalTransitionError:
                record = self.store.get_job(job_id)  # admitted meanwhile: cancel it running
        if record.status == JobStatus.RUNNING:
            record = self.store.set_status(job_id, JobStatus.CANCELLING)
            self.bus.publish(job_id, {"type": "status", "job": record.to_dict()})
        if self.runner is not None:
            self.runner.request_cancel(job_id)
            return record
        # No runner in this process (CLI, after a crash): finish the cancellation here.
        remove_job_rows(self.store, self.tenant_data_dir(record.tenant), record)
        return self.store.set_status(job_id, JobStatus.CANCELLED)

    def drop_table(self, tenant: str, name: str) -> None:
        """Delete a tenant's table with all its rows; ConflictError while a job of the tenant
        still writes to it."""
        table = existing_table(self._home(tenant, name), name)
        busy = [
            j.id
            for j in self.store.unfinished_jobs()
            if j.tenant == tenant and j.table_name == name
        ]
        if busy:
            raise ConflictError(
                f"table '{name}' is being written by job(s) {', '.join(busy)}; cancel them first"
            )
        if self.runner is not None and self.runner.maintenance.running(table.uri):
            raise ConflictError(
                f"table '{name}' is being maintained (compacted, indexed, cleaned up); drop it "
                "once the run ends (embedscale jobs list --kind maintenance)"
            )
        with self.table_actions.hold(tenant, name, "dropped"):
            # Every generation goes with it (the active one last: a crash halfway leaves the
            # table, and the drop can be done again).
            data_dir = self.tenant_data_dir(tenant)
            others = [
                generation_table(data_dir, g)
                for g in self.store.generations(tenant, name)
                if generation_table(data_dir, g).uri != table.uri
            ]
            for gone in [*others, table]:
                if self.runner is None:
                    remove_table(gone)
                    continue
                # No maintenance run of the runner's starts on the table while it goes.
                with self.runner.maintenance.exclusive(gone.uri):
                    remove_table(gone)
                self.runner.forget_table(gone.uri)
            self.store.forget_generations(tenant, name)
            remove_pointer(data_dir, name)

    def tables(self, tenant: str) -> builtins.list[TableInfo]:
        """The tenant's tables with their rows, model and dimension, by name (a migrated
        table as its active generation is)."""
        migrated = self.store.active_generations(tenant)
        listed = {t.name: t for t in list_tables(self.tenant_data_dir(tenant))}
        for name, generation in migrated.items():
            if generation.generation != 1:
                listed[name] = describe_table(self._home(tenant, name), name)
        return [listed[name] for name in sorted(listed)]

    def table(self, tenant: str, name: str) -> TableInfo:
        """One of the tenant's tables (TableNotFoundError if it has none of that name)."""
        return describe_table(self._home(tenant, name), name)

    def _home(self, tenant: str, name: str) -> Path | Location:
        """The data dir holding the active generation of the tenant's table `name`
        (jobs/generations.py): what every engine call on the table is given."""
        return table_home(self.store, self.tenant_data_dir(tenant), tenant, name)

    def _active(self, tenant: str, name: str) -> tuple[ChunkTable, str]:
        """The active generation of the tenant's table `name` (TableNotFoundError if there is
        none) and its folder ('' for generation 1), read at once: the job ledger's queries
        about the table take the generation (jobs/ledger.py)."""
        physical = active_physical(self.store, tenant, name)
        home = generation_home(self.tenant_data_dir(tenant), physical)
        return existing_table(home, name), physical

    def table_details(self, tenant: str, name: str) -> TableView:
        """One of the tenant's tables in full: rows, model, fragments, versions, bytes and
        indexes (`embedscale tables show`)."""
        return show_table(self._home(tenant, name), name)

    def table_history(
        self, tenant: str, name: str, limit: int = HISTORY_LIMIT, before: int | None = None
    ) -> builtins.list[VersionInfo]:
        """The versions of one of the tenant's tables, newest first, with the jobs that made
        each (`limit` of them, older than `before` if given)."""
        if limit < 1:
            raise InvalidFieldError("limit", "list 1 version or more")
        table, physical = self._active(tenant, name)
        listed = table_history(table.uri, table.storage, limit, before)
        # A restore names no job in its commit; the ledger has the job that recorded it.
        restores = {r.version: r.job_id for r in self.store.table_restores(tenant, name, physical)}
        return [
            replace(v, jobs=(restores[v.version],))
            if v.restored is not None and v.version in restores
            else v
            for v in listed
        ]

    def restore_table(self, tenant: str, name: str, version: int) -> Restored:
        """Bring one of the tenant's tables back to `version` as a new commit, recorded in the
        ledger; InvalidFieldError (of `version`) for a version it lacks, ConflictError while a
        job of the table is unfinished or another action (a drop, a maintenance run) holds it.
        Nothing changes when refused."""
        table, physical = self._active(tenant, name)
        with self.table_actions.hold(tenant, name, "restored"):
            refuse_while_written(self.store, tenant, name, "restore")
            self._refuse_while_maintained(table)
            if self.runner is None:
                return restore_version(self.store, tenant, table, version, physical)
            # No compaction of the runner's starts on the table until the restore committed.
            with self.runner.maintenance.exclusive(table.uri):
                return restore_version(self.store, tenant, table, version, physical)

    def optimize_table(
        self, tenant: str, name: str, retention: timedelta | None = None
    ) -> JobRecord | None:
        """One maintenance run of one of the tenant's tables now: compaction, index refresh,
        cleanup of the versions older than `retention` (default: the runner config's) that no
        unfinished job needs. With a runner it goes on the runner's maintenance thread and its
        record is returned as it starts (running); without one (the CLI) it runs here and its
        record is returned once it ended. ConflictError while a job of the table is unfinished
        or another action holds it."""
        if retention is not None and retention < timedelta(0):
            raise InvalidFieldError("retention", "a retention window is 0 or more")
        table, physical = self._active(tenant, name)
        with self.table_actions.hold(tenant, name, "optimized"):
            refuse_while_written(self.store, tenant, name, "optimize")
            if self.runner is not None:
                run_id = self.runner.maintenance.maintain_now(
                    Target(table, tenant, name, physical), retention
                )
                if run_id is None:
                    raise ConflictError(f"table '{name}' is being maintained already")
                return self.store.get_job(run_id) if run_id else None
            return optimize_now(
                self.store,
                tenant,
                table,
                retention
                if retention is not None
                else (self.runner_config or RunnerConfig()).version_retention,
                lambda record: self.bus.publish(
                    record.id, {"type": "status", "job": record.to_dict()}
                ),
                physical,
            )

    def _refuse_while_maintained(self, table: ChunkTable) -> None:
        if self.runner is not None and self.runner.maintenance.running(table.uri):
            raise ConflictError(
                f"table '{table.name}' is being maintained (compacted, indexed, cleaned up); "
                "try again once the run ends (embedscale jobs list --kind maintenance)"
            )

    def verify_table(self, tenant: str, name: str) -> VerifyReport:
        """One of the tenant's tables checked against itself and the job ledger
        (`embedscale verify`); TableNotFoundError if it has none of that name."""
        table, physical = self._active(tenant, name)
        return verify_table(self.store, table, tenant, physical)

    # --- migrations: a table moved to another model (jobs/migrations/) ---------------------

    def migrate(
        self,
        tenant: str,
        name: str,
        model: str,
        provider: str | None = None,
        switch: str = DEFAULT_SWITCH_MODE,
        priority: str = "normal",
        provider_url: str | None = None,
        precision: str = "auto",
    ) -> MigrationView:
        """Start building a new generation of the tenant's table with `model` (`provider`,
        `provider_url`: default the table's; `precision`: the job's), as a job of kind
        migration; `switch` auto
        switches once it is built, manual (default) waits for `switch_migration`.
        InvalidFieldError for a model not offered or not known, ConflictError while a
        migration of the table is under way: nothing changed then."""
        return self.migrations.start(
            tenant, name, model, provider, switch, priority, provider_url, precision
        )

    def migration(self, tenant: str, name: str) -> MigrationView:
        """The tenant's table's generations: which is active, which building, built, retired."""
        return self.migrations.view(tenant, name)

    def switch_migration(self, tenant: str, name: str) -> MigrationView:
        """Switch the table to its built generation, once reconciled with the active one (a
        catch-up job embeds what changed meanwhile; the switch follows it); ConflictError
        while it is still building or there is none."""
        return self.migrations.request_switch(tenant, name)

    def rollback_migration(self, tenant: str, name: str) -> MigrationView:
        """Switch the table back to the generation its latest switch retired (kept for the
        retention window), reconciled the same way; ConflictError when there is none."""
        return self.migrations.rollback(tenant, name)

    def settle_migration(
        self,
        tenant: str,
        name: str,
        watch: Callable[[builtins.list[JobRecord]], object] | None = None,
    ) -> MigrationView:
        """Wait (with a runner) until no migration job of the table is unfinished, moving the
        migration along after each (a build that switches at once may need a catch-up job);
        `watch(jobs)` waits for the jobs instead of a plain wait (the CLI's progress bar)."""
        while jobs := [
            j
            for j in self.store.unfinished_jobs(MIGRATION)
            if j.tenant == tenant and j.table_name == name
        ]:
            if self.runner is None:
                raise RuntimeError("attach a cluster and start the service to run migrations")
            if watch is not None:
                watch(jobs)
            else:
                for job in jobs:
                    self.wait(job.id)
            self.migrations.advance(tenant, name)
        self.migrations.advance(tenant, name)  # a job that ended before the first look
        return self.migrations.view(tenant, name)

    def compare_migration(
        self, tenant: str, name: str, queries: builtins.list[str], k: int = 10
    ) -> Comparison:
        """The same `queries` searched in the active generation and in the other one (the one
        built and not switched to, else the one the latest switch retired): top-k overlap,
        score spreads, latency. InvalidFieldError for no queries or a bad k, ConflictError
        when there is no other generation to compare with."""
        queries = [q for q in queries if q.strip()]
        if not queries or len(queries) > MAX_QUERIES:
            raise InvalidFieldError("queries", f"give 1 to {MAX_QUERIES} queries (non-empty)")
        try:
            search_options(k, "vector", None, None)  # k's bounds, as a search checks them
        except SearchParameterError as exc:
            raise InvalidFieldError("k", str(exc)) from None
        view = self.migrations.view(tenant, name)
        active = next((g for g in view.generations if g.state == "active"), None)
        others = [g for g in view.generations if g.state in ("built", "retired")]
        if active is None or not others:
            raise ConflictError(
                f"table '{name}' has no other generation to compare with: start a migration "
                "(embedscale migrate TABLE --model M) and wait until it is built"
            )
        built = [g for g in others if g.state == "built"]
        other = built[-1] if built else max(others, key=lambda g: g.retired_at or g.updated_at)
        data_dir = self.tenant_data_dir(tenant)

        def side(generation: Generation) -> tuple[int, str, Callable[[str], builtins.list[Hit]]]:
            home = generation_home(data_dir, generation.physical)
            return generation.generation, generation.model, lambda q: search(home, name, q, k)

        return compare(name, queries, k, side(active), side(other))

    def table_uri(self, tenant: str, name: str) -> str:
        """Where a tenant's table is (or would be) stored: its active generation."""
        return active_table(self.store, self.tenant_data_dir(tenant), tenant, name).uri

    def search(
        self,
        tenant: str,
        name: str,
        query: str,
        k: int = 5,
        where: str | None = None,
        *,
        mode: str = DEFAULT_MODE,
        nprobes: int | None = None,
        refine: int | None = None,
        filter_field: str = "filter",
        location: str = "body",
    ) -> builtins.list[Hit]:
        """The `k` chunks of the tenant's table that best match `query` by `mode` (vector,
        text, hybrid), with the table's own model. A parameter the engine refuses is an
        InvalidFieldError of its field (the filter's is `filter_field`: the request's own
        name for it) at `location` (body, query)."""
        data_dir = self._home(tenant, name)  # the active generation, until the switch
        try:
            # Checked before the table is looked for: a bad request is the request's fault.
            search_options(k, mode, nprobes, refine)
            checked_where(where)
            existing_table(data_dir, name)
            return search(
                data_dir, name, query, k, where, mode=mode, nprobes=nprobes, refine=refine
            )
        except SearchParameterError as exc:
            field = filter_field if exc.field == "where" else exc.field
            raise InvalidFieldError(field, str(exc), location) from None

    # --- figures for health checks and metrics ---------------------------------------------

    def ping(self) -> None:
        """Raise if the control plane's database cannot answer."""
        self.store.ping()

    def job_figures(self) -> FiguresSnapshot:
        """Jobs by status, what they embedded and the partitions waiting, from memory (kept
        by the store with every job it writes: jobs/store/job_figures.py); never a store read."""
        return self.store.figures.snapshot()

    def job_counts(self) -> dict[JobStatus, int]:
        """Jobs by status, every status present (0 where none); from memory."""
        return self.job_figures().by_status

    def embedded_totals(self) -> builtins.list[tuple[str, str, int, int]]:
        """(tenant, model, chunks, tokens) embedded by every job ever; from memory."""
        return self.job_figures().embedded

    def pending_partitions(self) -> int:
        """Partitions of queued and running jobs not yet done: the work waiting; from
        memory."""
        return self.job_figures().waiting

    def unfinished_jobs(self) -> builtins.list[JobRecord]:
        """Jobs not yet ended (queued, running, cancelling), oldest first."""
        return self.store.unfinished_jobs()

    def embed(
        self, tenant: str, model: str, texts: builtins.list[str], dimensions: int | None = None
    ) -> PendingEmbedding:
        """Embed `texts` with `model` on the cluster's warm workers, charged to the tenant (see
        jobs.embeddings.requests): checked and charged now, the vectors from `.result()`."""
        if self.embeddings is None:
            raise RuntimeError("attach a cluster before embedding texts")
        return self.embeddings.start(tenant, model, texts, dimensions)

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Block until the job ends; returns its final record (TimeoutError after `timeout`)."""
        done = threading.Event()
        ended = {s.value for s in TERMINAL}

        def on_event(event: dict[str, Any]) -> None:
            if event["job"]["status"] in ended:
                done.set()

        unsubscribe = self.bus.subscribe(job_id, on_event)
        try:
            while self.store.get_job(job_id).status not in TERMINAL:
                if self.runner is not None and not self.runner.alive:
                    raise RuntimeError(f"the runner stopped: {self.runner.error}")
                if not done.wait(timeout=0.5 if timeout is None else min(0.5, timeout)):
                    if timeout is not None:
                        timeout -= 0.5
                        if timeout <= 0:
                            raise TimeoutError(f"job {job_id} still running")
            return self.store.get_job(job_id)
        finally:
            unsubscribe()
