"""The control plane's front: submit, watch, cancel and list jobs; manage tenants and keys.

The CLI and the HTTP API both go through this class. It owns the DuckDB store, the event bus
and (given a cluster) the runner. Errors are domain errors (jobs.errors, engine.errors); the
callers turn them into exit codes or HTTP statuses.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.cluster import Cluster
from engine.documents import Skipped
from engine.errors import EmbedscaleError
from engine.file_access import DEFAULT_MAX_DOCUMENT_BYTES, FileAccess, real_roots
from engine.sink import ChunkTable
from engine.sources import SourcePlan, plan_source, plan_texts
from jobs.errors import ConflictError, NotFoundError, ValidationError
from jobs.events import EventBus
from jobs.keys import hash_key, key_prefix, new_api_key
from jobs.quotas import check_admission, estimate_chunks, remaining_today, resets_at
from jobs.records import JobRecord, TenantRecord
from jobs.runner import Runner, RunnerConfig, remove_job_rows
from jobs.spec import JobSpec, check_model, check_source_allowed
from jobs.states import TERMINAL, IllegalTransitionError, JobStatus
from jobs.store import Store, utcnow
from jobs.tiers import Tier, load_tiers, with_overrides

LOCAL_TENANT = "local"  # the CLI's built-in tenant; its tables live right in the data dir
LOCAL_TIER = "unlimited"
DB_FILE = "embedscale.duckdb"
TENANT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_TENANT_NAME = re.compile(TENANT_NAME_PATTERN)


def tenant_data_dir(data_dir: str | Path, tenant: str) -> Path:
    """Where a tenant's tables live: the local tenant's in the data dir itself, others' each in
    a folder of their own, so no table name can reach another tenant's tables. A name outside
    the tenant-name rule ('../x', 'a/b') is refused here, where it would become a path."""
    if not isinstance(tenant, str) or not re.fullmatch(TENANT_NAME_PATTERN, tenant):
        raise ValidationError("tenant", f"invalid tenant name {tenant!r}: use 1-64 lowercase "
                                        "letters, digits, '-' or '_'")
    data_dir = Path(data_dir)
    return data_dir if tenant == LOCAL_TENANT else data_dir / "tenants" / tenant


@dataclass(frozen=True)
class Usage:
    """A tenant's quota and what it used today."""

    tenant: str
    tier: str
    daily_chunks: int | None
    used_chunks: int
    used_tokens: int
    remaining_chunks: int | None
    resets_at: str
    max_concurrent_jobs: int | None
    active_jobs: int


class JobService:
    """Jobs and tenants of one data directory. With a cluster, `start()` runs jobs on it."""

    def __init__(self, data_dir: str | Path, cluster: Cluster | None = None,
                 tiers_file: str | Path | None = None,
                 allowed_roots: list[str] | None = None,
                 runner_config: RunnerConfig | None = None,
                 parallelism: int | None = None,
                 max_document_bytes: int | None = None,
                 allowed_models: list[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.allowed_models = allowed_models  # None: any model (the CLI); see check_model
        self.parallelism = parallelism or os.cpu_count() or 1  # until a cluster is attached
        self.runner_config = runner_config
        self.tiers = load_tiers(tiers_file)
        self.allowed_roots = allowed_roots
        # What workers may open: regular files inside the allowed roots (all links resolved),
        # read up to a limit per document; checked again at every open, on the workers too.
        self.file_access = FileAccess(
            real_roots(allowed_roots) if allowed_roots is not None else None,
            max_document_bytes or DEFAULT_MAX_DOCUMENT_BYTES)
        self.store = Store(self.data_dir / DB_FILE)
        self.bus = EventBus()
        self._tier_cache: dict[str, Tier] = {}
        self._key_cache: dict[str, str] = {}  # key hash -> tenant
        self.cluster: Cluster | None = None
        self.runner: Runner | None = None
        self._ensure_local_tenant()
        if cluster is not None:
            self.attach(cluster)

    def attach(self, cluster: Cluster) -> None:
        """Run jobs on `cluster` (once `start()` is called)."""
        self.cluster = cluster
        self.runner = Runner(self.store, cluster, self.bus, self.tier_of, self.tenant_data_dir,
                             self.runner_config, self.file_access,
                             lambda spec: check_model(spec, self.allowed_models))

    def start(self) -> None:
        """Resume unfinished jobs and start running new ones (needs a cluster)."""
        if self.runner is None:
            raise RuntimeError("attach a cluster before starting the job service")
        self.runner.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop running jobs gracefully (see Runner.stop); call before the cluster closes."""
        if self.runner is not None:
            self.runner.stop(timeout)
            self.runner = None

    def close(self, timeout: float = 30.0) -> None:
        """Stop the runner, then close the store."""
        self.stop(timeout)
        self.store.close()

    def __enter__(self) -> JobService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- tenants --------------------------------------------------------------------------

    def _ensure_local_tenant(self) -> None:
        try:
            self.store.get_tenant(LOCAL_TENANT)
        except NotFoundError:
            self.store.create_tenant(LOCAL_TENANT, LOCAL_TIER)

    def tier_of(self, tenant: str) -> Tier:
        """The tenant's effective limits: its tier with its own overrides. Cached: this is
        asked for every request and every partition, and only this class changes tenants."""
        tier = self._tier_cache.get(tenant)
        if tier is None:
            tier = self._tier_cache[tenant] = self._load_tier(tenant)
        return tier

    def _load_tier(self, tenant: str) -> Tier:
        record = self.store.get_tenant(tenant)
        tier = self.tiers.get(record.tier)
        if tier is None:
            raise ValidationError("tier", f"tenant '{tenant}' has tier '{record.tier}', which "
                                          f"the tiers file does not define")
        return with_overrides(tier, record.daily_chunks, record.max_concurrent_jobs)

    def tenant_data_dir(self, tenant: str) -> Path:
        return tenant_data_dir(self.data_dir, tenant)

    def create_tenant(self, name: str, tier: str) -> tuple[TenantRecord, str]:
        """A new tenant and its first API key (returned once, stored hashed)."""
        if not isinstance(name, str) or not _TENANT_NAME.fullmatch(name):
            raise ValidationError("name", f"invalid tenant name {name!r}: use 1-64 lowercase "
                                          "letters, digits, '-' or '_'")
        self._check_tier(tier)
        record = self.store.create_tenant(name, tier)
        return record, self._issue_key(name)

    def set_tier(self, name: str, tier: str) -> TenantRecord:
        self._check_tier(tier)
        self._tier_cache.pop(name, None)
        return self.store.update_tenant(name, tier=tier)

    def set_limits(self, name: str, daily_chunks: int | None = None,
                   max_concurrent_jobs: int | None = None) -> TenantRecord:
        """Per-tenant overrides of the tier's limits (None: the tier's)."""
        for field, value in (("daily_chunks", daily_chunks),
                             ("max_concurrent_jobs", max_concurrent_jobs)):
            if value is not None and value < 0:
                raise ValidationError(field, f"{field}={value} must not be negative")
        self._tier_cache.pop(name, None)
        return self.store.update_tenant(name, daily_chunks=daily_chunks,
                                        max_concurrent_jobs=max_concurrent_jobs)

    def rotate_key(self, name: str) -> str:
        """Revoke the tenant's keys and issue a new one (returned once)."""
        self.store.get_tenant(name)
        self.store.revoke_api_keys(name)
        for digest, tenant in list(self._key_cache.items()):
            if tenant == name:
                del self._key_cache[digest]
        return self._issue_key(name)

    def tenant_for_key(self, key: str) -> str | None:
        """The tenant of an API key (None if unknown or revoked). Cached per key hash:
        every request asks, and only rotate_key revokes."""
        digest = hash_key(key)
        tenant = self._key_cache.get(digest)
        if tenant is None:
            tenant = self.store.tenant_for_key_hash(digest)
            if tenant is not None:
                self._key_cache[digest] = tenant
        return tenant

    def _issue_key(self, tenant: str) -> str:
        key = new_api_key()
        self.store.add_api_key(tenant, hash_key(key), key_prefix(key))
        return key

    def _check_tier(self, tier: str) -> None:
        if tier not in self.tiers:
            raise ValidationError("tier", f"unknown tier {tier!r}: use one of "
                                          f"{', '.join(sorted(self.tiers))}")

    def usage(self, tenant: str) -> Usage:
        tier = self.tier_of(tenant)
        chunks, tokens = self.store.usage(tenant)
        return Usage(tenant, tier.name, tier.daily_chunks, chunks, tokens,
                     remaining_today(tier, chunks), resets_at().isoformat(),
                     tier.max_concurrent_jobs, self.store.active_job_counts().get(tenant, 0))

    # --- jobs -----------------------------------------------------------------------------

    def submit(self, tenant: str, spec: JobSpec | dict[str, Any]) -> JobRecord:
        """Validate, plan and admit a job (queued), or refuse it: a bad field, a source outside
        the allowed roots, or more chunks than the tenant has left today."""
        if not isinstance(spec, JobSpec):
            spec = JobSpec.model_validate(spec)
        check_model(spec, self.allowed_models)
        tier = self.tier_of(tenant)
        plan = self._plan(spec)
        estimate = estimate_chunks(plan.partitions, spec.chunk_tokens, spec.overlap_tokens)
        check_admission(tenant, tier, self.store.usage(tenant)[0], estimate)
        now = utcnow()
        record = JobRecord(
            id=uuid.uuid4().hex, tenant=tenant, spec=spec.model_dump(mode="json"),
            status=JobStatus.QUEUED, priority=spec.priority, table_name=spec.table,
            history=[(str(JobStatus.QUEUED), now.isoformat())], created_at=now, updated_at=now,
            estimated_chunks=estimate, partitions_total=len(plan.partitions),
        )
        self.store.insert_job(record, plan.partitions)
        if plan.skipped:
            self.store.add_skipped(record.id, plan.skipped)
            record = self.store.get_job(record.id)
        self.bus.publish(record.id, {"type": "status", "job": record.to_dict()})
        if self.runner is not None:
            self.runner.wake()
        return record

    def _plan(self, spec: JobSpec) -> SourcePlan:
        parallelism = (self.cluster.worker_threads() if self.cluster is not None
                       else self.parallelism)
        try:
            if spec.texts is not None:
                return plan_texts(spec.texts, spec.ids, spec.metadata)
            source = check_source_allowed(spec.source, self.allowed_roots)
            return plan_source(source, parallelism=parallelism, access=self.file_access)
        except EmbedscaleError as exc:
            if isinstance(exc, ValidationError):
                raise
            raise ValidationError("source" if spec.source is not None else "texts",
                                  str(exc)) from None

    def get(self, job_id: str, tenant: str | None = None) -> JobRecord:
        return self.store.get_job(job_id, tenant)

    def list(self, tenant: str | None = None, status: str | None = None,
             table: str | None = None, limit: int = 50, cursor: str | None = None
             ) -> tuple[list[JobRecord], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (None at the end)."""
        if status is not None and status not in {s.value for s in JobStatus}:
            raise ValidationError("status", f"unknown status {status!r}: use one of "
                                            f"{', '.join(s.value for s in JobStatus)}")
        before = None
        if cursor:
            last = self.store.get_job(cursor, tenant)
            before = (last.created_at, last.id)
        jobs = self.store.list_jobs(tenant, status, table, limit + 1, before)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, (jobs[-1].id if more and jobs else None)

    def skipped(self, job: JobRecord) -> list[Skipped]:
        """The documents a job skipped, with reasons (the job's record was already looked up,
        for its tenant, by the caller). Most jobs skip nothing: no DuckDB round trip then."""
        return self.store.skipped(job.id) if job.skipped_count else []

    def cancel(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """Cancel a queued or running job; its rows are removed from its table. A finished job
        cannot be cancelled (ConflictError)."""
        record = self.store.get_job(job_id, tenant)
        if record.status in TERMINAL:
            raise ConflictError(f"job {job_id} already {record.status}")
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
        remove_job_rows(self.tenant_data_dir(record.tenant), record)
        return self.store.set_status(job_id, JobStatus.CANCELLED)

    def drop_table(self, tenant: str, name: str) -> None:
        """Delete a tenant's table with all its rows; ConflictError while a job of the tenant
        still writes to it."""
        table = ChunkTable(self.tenant_data_dir(tenant), name)
        if not table.exists():
            raise NotFoundError(f"no table '{name}'")
        busy = [j.id for j in self.store.unfinished_jobs()
                if j.tenant == tenant and j.table_name == name]
        if busy:
            raise ConflictError(f"table '{name}' is being written by job(s) {', '.join(busy)}; "
                                "cancel them first")
        shutil.rmtree(table.uri)
        if self.runner is not None:
            self.runner.forget_table(table.uri)

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Block until the job ends; returns its final record (TimeoutError after `timeout`)."""
        done = threading.Event()
        unsubscribe = self.bus.subscribe(job_id, lambda e: e["job"]["status"] in
                                         {s.value for s in TERMINAL} and done.set())
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
