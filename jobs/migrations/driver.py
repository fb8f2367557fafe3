"""Migrations of tables from one model to another, without downtime: start one, switch to it,
roll back, and the thread that moves them along.

A migration builds a new generation of the table (jobs/generations.py) with an ordinary job of
kind `migration`: the runner runs it as any job of the tenant (quota, concurrency slot,
priority, progress, resume after a crash, cancel), reading the documents back from the active
generation at the version the migration started from (jobs/migrations/planning.py). Searches and
other jobs keep using the active generation meanwhile.

A switch makes the new generation the table in one DuckDB transaction (Store.switch_generation).
Jobs that wrote to the table while it was built changed the active generation only, so the
switch first reconciles: it compares the two by (doc_id, content_hash) (jobs/migrations/
reconcile.py), embeds the documents missing or changed with the new model in a catch-up job
(kind migration again), deletes those gone, and compares again once that job ended. The switch
itself happens only while no job writes to the table, and is refused by the transaction if one
wrote since the comparison (the next round catches it up). With switch mode `auto` it follows
the build; `manual` (the default: a production user compares first, `compare`) waits for
`request_switch`. A rollback is a switch back to the retired generation, reconciled the same
way, while the retention window keeps it; after that its folder is removed.

Everything here is idempotent and driven by the store's rows: `advance` looks at a table's
generations and their jobs and does the next step. It runs when a migration job ends (the event
bus), when a user asks, and every few seconds on the service's thread (a switch that waited for
writers, the retention window).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from embedscale.engine.models.info import ModelInfo
from embedscale.engine.sink.schema import table_model, table_provider
from embedscale.engine.sources.enumeration import SourcePlan
from embedscale.engine.sources.partitions import TableDocs
from embedscale.engine.storage.locations import Location, remove_tree
from embedscale.engine.tables.catalog import existing_table
from embedscale.engine.tables.documents import delete_documents, documents
from embedscale.engine.tables.generation_pointer import write_pointer
from embedscale.jobs.errors import ConflictError, InvalidFieldError
from embedscale.jobs.events import EventBus
from embedscale.jobs.generation_states import SWITCHABLE, GenerationState
from embedscale.jobs.generations import active_table, generation_table, table_home
from embedscale.jobs.migrations.planning import plan_documents, tokenizers_agree
from embedscale.jobs.migrations.reconcile import difference
from embedscale.jobs.spec import JobSpec, model_spec
from embedscale.jobs.states import TERMINAL, JobStatus
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.generations import Generation
from embedscale.jobs.store.records import MIGRATION, JobRecord
from embedscale.jobs.store.rows import utcnow
from embedscale.jobs.table_admin import TableActions

log = logging.getLogger(__name__)
SWITCH_MODES = ("auto", "manual")
DEFAULT_SWITCH_MODE = "manual"
SWEEP_EVERY_S = 5.0  # a switch waiting for writers, and retention, looked at this often
# Submits a planned job: (tenant, spec, plan, estimated chunks, kind, details) -> its record.
Submit = Callable[[str, JobSpec, SourcePlan, int, str, dict[str, Any]], JobRecord]


@dataclass(frozen=True)
class MigrationView:
    """A table's generations as a user sees them: which one is active, and each one's state."""

    table: str
    active: int
    generations: list[Generation]

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "active": self.active,
            "generations": [g.to_dict() for g in self.generations],
        }


def migration_spec(**fields: Any) -> JobSpec:
    """The spec of a migration job: a job of inline texts as far as the spec goes (the texts
    stand for the documents read back from the table: planning.py), checked as any job's; a
    field it refuses is an InvalidFieldError naming it."""
    try:
        return JobSpec(texts=[""], **fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "model"
        raise InvalidFieldError(field, error["msg"].removeprefix("Value error, ")) from None


class Migrations:
    """The migrations of one service's tables (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        data_dir_of: Callable[[str], Path | Location],
        submit: Submit,
        check_spec: Callable[[JobSpec], ModelInfo | None],
        actions: TableActions,
        bus: EventBus,
        retention: timedelta,
        parallelism: Callable[[], int] = lambda: 1,
    ) -> None:
        self.store, self.data_dir_of, self.submit = store, data_dir_of, submit
        self.check_spec, self.actions, self.retention = check_spec, actions, retention
        self.parallelism = parallelism
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe = bus.subscribe(None, self._on_event)

    # --- what users ask -------------------------------------------------------------------

    def start(
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
        """Start building a new generation of the tenant's table `name` with `model`
        (`provider` and, for openai, `provider_url`: default the table's; `precision`: the
        build job's, engine.models.cpu_precision; later jobs of the generation run in auto,
        whose vectors share its vector space): InvalidFieldError
        for a model not offered or not known here, or the table's own; ConflictError while
        another migration of the table is under way; nothing changed then. Returns the
        table's generations, the new one building."""
        if switch not in SWITCH_MODES:
            raise InvalidFieldError("switch", f"unknown switch mode {switch!r}: use auto or manual")
        current = existing_table(
            table_home(self.store, self.data_dir_of(tenant), tenant, name), name
        )
        schema = current.dataset().schema
        old_model, _ = table_model(schema)
        old_provider, old_url = table_provider(schema)
        provider = provider or old_provider
        if provider == "openai" and provider_url is None and old_provider == "openai":
            provider_url = old_url
        spec = migration_spec(
            table=name,
            model=model,
            provider=provider,
            provider_url=provider_url,
            priority=priority,
            precision=precision,
            labels={"migration": f"{old_model} -> {model}"},
        )
        info = self.check_spec(spec)
        if info is None and spec.provider != "openai":
            raise InvalidFieldError(
                "model",
                f"model {model!r} is not known here: name a registered model or a local "
                "model folder (a migration checks the model before it reserves anything)",
            )
        new = model_spec(spec)
        if new.name == old_model and spec.provider == old_provider:
            raise InvalidFieldError(
                "model", f"table '{name}' holds vectors of model {model!r} already"
            )
        try:
            from embedscale.engine.models.registry import provider_spec

            old = provider_spec(old_provider, old_model or "", old_url)
            reuse = tokenizers_agree(old, new)
        except Exception:  # the old model is not known here: chunk afresh
            reuse = False
        generation = self.store.reserve_generation(
            tenant, name, (old_model or "", old_provider), (new.name, spec.provider), switch, reuse
        )
        try:
            record = self._submit_job(tenant, current, spec, generation, "build", None)
        except BaseException:
            self.store.discard_generation(tenant, name, generation.generation)
            raise
        self.store.update_generation(
            tenant, name, generation.generation, [GenerationState.BUILDING], job_id=record.id
        )
        self._wake.set()
        return self.view(tenant, name)

    def view(self, tenant: str, name: str) -> MigrationView:
        """The tenant's table's generations (one, active, for a table never migrated)."""
        existing_table(table_home(self.store, self.data_dir_of(tenant), tenant, name), name)
        generations = self.store.generations(tenant, name)
        active = next((g.generation for g in generations if g.state == GenerationState.ACTIVE), 1)
        return MigrationView(name, active, generations)

    def request_switch(self, tenant: str, name: str) -> MigrationView:
        """Switch to the built generation (reconciled first); ConflictError when there is none
        built, or it is still building."""
        self.advance(tenant, name)  # a build that just ended is built
        generations = self.store.generations(tenant, name)
        building = [g for g in generations if g.state == GenerationState.BUILDING]
        built = [g for g in generations if g.state == GenerationState.BUILT]
        if not built:
            detail = (
                f"generation {building[-1].generation} is still building (job "
                f"{building[-1].job_id}): switch once it is built"
                if building
                else "no migration of it is built: start one (embedscale migrate TABLE --model M)"
            )
            self.view(tenant, name)  # a table that does not exist is a 404, not a conflict
            raise ConflictError(f"table '{name}' has nothing to switch to: {detail}")
        return self._request(tenant, name, built[-1])

    def rollback(self, tenant: str, name: str) -> MigrationView:
        """Switch back to the generation retired by the latest switch (reconciled first);
        ConflictError when there is none still kept."""
        self.advance(tenant, name)
        retired = [
            g for g in self.store.generations(tenant, name) if g.state == GenerationState.RETIRED
        ]
        if not retired:
            self.view(tenant, name)
            raise ConflictError(
                f"table '{name}' has no earlier generation to roll back to (none was switched "
                "from, or the retention window removed it)"
            )
        latest = max(retired, key=lambda g: g.retired_at or g.updated_at)
        return self._request(tenant, name, latest)

    def _request(self, tenant: str, name: str, target: Generation) -> MigrationView:
        changes: dict[str, Any] = {"switch_requested": True, "error": None}
        if target.catch_up_job is not None:
            if self.store.get_job(target.catch_up_job).status in TERMINAL:
                changes["catch_up_job"] = None  # one that ended before: this request's is new
        self.store.update_generation(tenant, name, target.generation, SWITCHABLE, **changes)
        self.advance(tenant, name)
        return self.view(tenant, name)

    # --- moving them along ----------------------------------------------------------------

    def advance(self, tenant: str, name: str) -> None:
        """Do what the table's generations call for now (idempotent; one caller at a time a
        table)."""
        with self._lock_for(tenant, name):
            for generation in self.store.generations(tenant, name):
                self._step(generation)
            active = self.store.active_generation(tenant, name)
            if active is not None:  # again: a crash may have come between switch and pointer
                write_pointer(self.data_dir_of(tenant), name, active.physical)

    def sweep(self) -> None:
        """Advance every table with a generation under way, or retired (its retention)."""
        for tenant, name in {(g.tenant, g.table_name) for g in self.store.pending_generations()}:
            try:
                self.advance(tenant, name)
            except Exception:
                log.exception("migration of table %r (tenant %s) could not advance", name, tenant)

    def _step(self, g: Generation) -> None:
        if g.state == GenerationState.BUILDING and g.job_id is not None:
            job = self.store.get_job(g.job_id)
            if job.status == JobStatus.SUCCEEDED:
                built = self.store.update_generation(
                    g.tenant,
                    g.table_name,
                    g.generation,
                    [GenerationState.BUILDING],
                    state=GenerationState.BUILT,
                    switch_requested=g.switch_mode == "auto",
                )
                if built is not None and built.switch_requested:
                    self._switch(built)
            elif job.status in TERMINAL:
                self.store.update_generation(
                    g.tenant,
                    g.table_name,
                    g.generation,
                    [GenerationState.BUILDING],
                    state=GenerationState.FAILED,
                    error=f"its migration job {job.id} {job.status}: {job.error or 'no error'}",
                )
                self._remove(g)
        elif g.state in SWITCHABLE and g.switch_requested:
            self._switch(g)
        elif g.state == GenerationState.RETIRED and g.retired_at is not None:
            if utcnow() - g.retired_at >= self.retention:
                removed = self.store.update_generation(
                    g.tenant,
                    g.table_name,
                    g.generation,
                    [GenerationState.RETIRED],
                    state=GenerationState.REMOVED,
                    switch_requested=False,
                )
                if removed is not None:
                    self._remove(g)

    def _switch(self, g: Generation) -> None:
        """Reconcile `g` with the active generation and switch to it, or start the catch-up
        that brings it level first; a switch that must wait records why in `error`."""
        if g.catch_up_job is not None:
            job = self.store.get_job(g.catch_up_job)
            if job.status not in TERMINAL:
                return  # it ends, and the bus brings us back
            if job.status != JobStatus.SUCCEEDED:
                self._wait(g, f"its catch-up job {job.id} {job.status}; switch again to retry")
                self.store.update_generation(
                    g.tenant, g.table_name, g.generation, SWITCHABLE, switch_requested=False
                )
                return
        data_dir = self.data_dir_of(g.tenant)
        try:
            with self.actions.hold(g.tenant, g.table_name, "switched to another generation"):
                active = active_table(self.store, data_dir, g.tenant, g.table_name)
                target = generation_table(data_dir, g)
                reconciled_at = utcnow()
                writers = [
                    j.id
                    for j in self.store.unfinished_jobs()
                    if j.tenant == g.tenant
                    and j.table_name == g.table_name
                    and j.status != JobStatus.QUEUED
                ]
                if writers:
                    self._wait(g, f"waiting for job(s) {', '.join(writers)} writing the table")
                    return
                version = active.dataset().version
                current = documents(active, version)
                diff = difference(current, documents(target))
                if diff.changed:
                    self._catch_up(g, active, version, current, diff.changed)
                    return
                delete_documents(target, diff.gone)
                self.store.switch_generation(g.tenant, g.table_name, g.generation, reconciled_at)
                # Readers without the store (`embedscale search`) follow, after the commit.
                write_pointer(data_dir, g.table_name, g.physical)
                log.info("table %r now answers from generation %d", g.table_name, g.generation)
        except ConflictError as exc:  # a writer came, or another action holds the table
            self._wait(g, str(exc))

    def _catch_up(self, g, active, version, current, changed: list[str]) -> None:
        _, url = table_provider(generation_table(self.data_dir_of(g.tenant), g).dataset().schema)
        spec = migration_spec(
            table=g.table_name,
            model=g.model,
            provider=g.provider,
            provider_url=url if g.provider == "openai" else None,
            mode="upsert",
            labels={"migration": f"catch-up of generation {g.generation}"},
        )
        record = self._submit_job(g.tenant, active, spec, g, "catch-up", changed, version, current)
        self.store.update_generation(
            g.tenant, g.table_name, g.generation, SWITCHABLE, catch_up_job=record.id, error=None
        )

    def _submit_job(
        self, tenant, source, spec, g: Generation, phase, doc_ids, version=None, docs=None
    ) -> JobRecord:
        version = source.dataset().version if version is None else version
        docs = documents(source, version) if docs is None else docs
        plan = plan_documents(source, version, docs, doc_ids, self.parallelism())
        # The chunks the documents have now: exact where they are reused.
        estimate = sum(
            docs[d].chunks
            for p in plan.partitions
            for item in p.items
            if isinstance(item, TableDocs)
            for d in item.doc_ids
        )
        details = {
            "generation": g.generation,
            "physical": g.physical,
            "phase": phase,
            "from_version": version,
            "reuse_chunks": g.reuse_chunks,
            "documents": plan.files,
        }
        return self.submit(tenant, spec, plan, estimate, MIGRATION, details)

    def _wait(self, g: Generation, why: str) -> None:
        self.store.update_generation(g.tenant, g.table_name, g.generation, SWITCHABLE, error=why)

    def _remove(self, g: Generation) -> None:
        """Remove a generation's folder (failed, or past its retention)."""
        table = generation_table(self.data_dir_of(g.tenant), g)
        try:
            remove_tree(table.uri, table.storage)
        except Exception:
            log.warning("could not remove generation %d of %r", g.generation, g.table_name)

    def _lock_for(self, tenant: str, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault((tenant, name), threading.Lock())

    # --- the thread -----------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        job = event.get("job") or {}
        if job.get("kind") == MIGRATION and job.get("status") in {s.value for s in TERMINAL}:
            self._wake.set()  # on the publisher's thread: the work is the loop's

    def run_in_background(self) -> None:
        """Advance migrations on a thread of their own until `close`."""
        if self._thread is not None:
            return
        # A stop event of this thread's own: a stop that gave up waiting for it (a close with
        # a short timeout) leaves it stopping, never running on against a closed store.
        self._stop = stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(stop,), name="embedscale-migrations", daemon=True
        )
        self._thread.start()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.wait(SWEEP_EVERY_S)
            self._wake.clear()
            if stop.is_set():
                return
            try:
                self.sweep()
            except Exception:
                if stop.is_set():  # stopped mid-sweep: the store may be closing under it
                    return
                log.exception("migrations: sweep failed")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread, after the step under way."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread and the bus subscription."""
        self.stop(timeout)
        self._unsubscribe()
