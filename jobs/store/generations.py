"""The table_generations rows: which physical LanceDB table each generation of a tenant's table
is, its model and state (jobs/migrations/states.py), and the one transaction that switches the
active generation.

A table without rows here is its own generation 1, active: nothing is written for a table until
its first migration. The active generation of a table is read on every search and every job's
preparation, so it is kept in memory, cleared after each write of the rows it reflects.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from embedscale.jobs.errors import ConflictError
from embedscale.jobs.generation_states import (
    IN_PROGRESS,
    SWITCHABLE,
    GenerationState,
    check_step,
)
from embedscale.jobs.states import ACTIVE
from embedscale.jobs.store.connection import Connected
from embedscale.jobs.store.records import JobRecord
from embedscale.jobs.store.rows import scalar, utcnow


@dataclass(frozen=True, slots=True)
class Generation:
    """One generation of a tenant's table (see the migration that made the table: 8)."""

    tenant: str
    table_name: str
    generation: int
    physical: str  # the folder under the tenant's data dir that holds it ('' for generation 1)
    model: str
    provider: str
    state: GenerationState
    job_id: str | None
    catch_up_job: str | None
    switch_requested: bool
    switch_mode: str
    reuse_chunks: bool
    error: str | None
    created_at: datetime
    updated_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the API and the CLI's --json."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["state"] = str(self.state)
        for key in ("created_at", "updated_at", "activated_at", "retired_at"):
            data[key] = data[key].isoformat() if data[key] else None
        data.pop("physical")  # where it lives is the server's business
        data["table"] = data.pop("table_name")
        return data


_COLUMNS = [f.name for f in fields(Generation)]
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM table_generations"


def _generation(row: tuple[Any, ...]) -> Generation:
    values = dict(zip(_COLUMNS, row))
    values["state"] = GenerationState(values["state"])
    return Generation(**values)


def _found(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """A row written a moment ago under the store's lock (None there would be a broken store)."""
    if row is None:
        raise RuntimeError("a generation just written was not found")
    return row


def generation_folder(generation: int) -> str:
    """Where generation `generation` of a table lives, under its tenant's data dir."""
    return "" if generation == 1 else f"generations/g{generation}"


def active_folder(con: Any, job: JobRecord) -> str:
    """The folder of the active generation of `job`'s table ('' for generation 1, and for a
    table never migrated), read inside the caller's transaction."""
    row = con.execute(
        "SELECT physical FROM table_generations WHERE tenant = ? AND table_name = ? AND state = ?",
        [job.tenant, job.table_name, str(GenerationState.ACTIVE)],
    ).fetchone()
    return str(row[0]) if row else ""


class GenerationRows(Connected):
    """The table_generations table."""

    _generations_lock = threading.Lock()

    @property
    def _active_cache(self) -> dict[tuple[str, str], Generation | None]:
        cache = self.__dict__.get("_active_generations")
        if cache is None:
            with self._generations_lock:
                cache = self.__dict__.setdefault("_active_generations", {})
        return cache

    def _forget_active(self) -> None:
        """After a write of the rows (under the store's lock): the next read sees the file."""
        self._active_cache.clear()

    def generations(self, tenant: str, table: str) -> list[Generation]:
        """Every generation the tenant's table has had, oldest first (none: never migrated)."""
        with self._lock:
            rows = self._con.execute(
                f"{_SELECT} WHERE tenant = ? AND table_name = ? ORDER BY generation",
                [tenant, table],
            ).fetchall()
        return [_generation(r) for r in rows]

    def active_generation(self, tenant: str, table: str) -> Generation | None:
        """The generation searches and jobs of the tenant's table reach; None: the table was
        never migrated (it is its own generation 1). From memory after the first read."""
        key = (tenant, table)
        cache = self._active_cache
        if key in cache:
            return cache[key]
        with self._lock:
            row = self._con.execute(
                f"{_SELECT} WHERE tenant = ? AND table_name = ? AND state = ?",
                [tenant, table, str(GenerationState.ACTIVE)],
            ).fetchone()
            found = _generation(row) if row else None
            cache[key] = found  # under the lock: no write comes in between
        return found

    def pending_generations(self) -> list[Generation]:
        """Generations a migration driver has something to do for: building, built, or
        retired (a switch wanted, or a retention window to watch)."""
        states = [str(GenerationState.BUILDING), str(GenerationState.BUILT)]
        states.append(str(GenerationState.RETIRED))
        with self._lock:
            rows = self._con.execute(
                f"{_SELECT} WHERE state IN (?, ?, ?) ORDER BY created_at", states
            ).fetchall()
        return [_generation(r) for r in rows]

    def reserve_generation(
        self,
        tenant: str,
        table: str,
        first: tuple[str, str],
        target: tuple[str, str],
        switch_mode: str,
        reuse_chunks: bool,
    ) -> Generation:
        """A new generation of the tenant's table, building, in one transaction that refuses it
        (ConflictError naming the one under way) while another is building or built and not
        yet switched to. `first` is the (model, provider) of the table as it is: recorded as
        its active generation 1 when the table was never migrated. `target` is the new
        generation's (model, provider)."""
        now = utcnow()
        with self._lock:
            with self._tx() as con:
                busy = con.execute(
                    f"{_SELECT} WHERE tenant = ? AND table_name = ? AND state IN (?, ?)",
                    [tenant, table, *(str(s) for s in IN_PROGRESS)],
                ).fetchone()
                if busy is not None:
                    raise ConflictError(
                        f"table '{table}' has a migration under way already (generation "
                        f"{busy[2]}, {busy[6]}, job {busy[7]}): switch to it, or cancel that job "
                        "first (embedscale jobs cancel ID)"
                    )
                count = scalar(
                    con.execute(
                        "SELECT count(*) FROM table_generations WHERE tenant = ? AND "
                        "table_name = ?",
                        [tenant, table],
                    )
                )
                if count == 0:
                    self._insert(con, tenant, table, 1, first, GenerationState.ACTIVE, now)
                number = scalar(
                    con.execute(
                        "SELECT max(generation) + 1 FROM table_generations WHERE tenant = ? AND "
                        "table_name = ?",
                        [tenant, table],
                    )
                )
                self._insert(
                    con,
                    tenant,
                    table,
                    number,
                    target,
                    GenerationState.BUILDING,
                    now,
                    switch_mode=switch_mode,
                    reuse_chunks=reuse_chunks,
                )
                row = con.execute(
                    f"{_SELECT} WHERE tenant = ? AND table_name = ? AND generation = ?",
                    [tenant, table, number],
                ).fetchone()
            self._forget_active()
        return _generation(_found(row))

    @staticmethod
    def _insert(
        con: Any,
        tenant: str,
        table: str,
        number: int,
        model: tuple[str, str],
        state: GenerationState,
        now: datetime,
        switch_mode: str = "manual",
        reuse_chunks: bool = False,
    ) -> None:
        con.execute(
            "INSERT INTO table_generations (tenant, table_name, generation, physical, model, "
            "provider, state, switch_mode, reuse_chunks, created_at, updated_at, activated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                tenant,
                table,
                number,
                generation_folder(number),
                model[0],
                model[1],
                str(state),
                switch_mode,
                reuse_chunks,
                now,
                now,
                now if state == GenerationState.ACTIVE else None,
            ],
        )

    def update_generation(
        self,
        tenant: str,
        table: str,
        generation: int,
        states: Collection[GenerationState],
        **changes: Any,
    ) -> Generation | None:
        """Set `changes` on a generation while it is in one of `states` (one statement: a
        generation moved on meanwhile is left as it is, and None returned)."""
        if "state" in changes:  # the steps a generation may take (jobs/generation_states.py)
            for old in states:
                check_step(old, GenerationState(changes["state"]), f"generation {generation}")
        changes = {k: (str(v) if isinstance(v, GenerationState) else v) for k, v in changes.items()}
        changes["updated_at"] = utcnow()
        assignments = ", ".join(f"{name} = ?" for name in changes)
        with self._lock:
            with self._tx() as con:
                row = con.execute(
                    f"UPDATE table_generations SET {assignments} WHERE tenant = ? AND "
                    f"table_name = ? AND generation = ? AND state IN "
                    f"({', '.join('?' for _ in states)}) RETURNING {', '.join(_COLUMNS)}",
                    [*changes.values(), tenant, table, generation, *(str(s) for s in states)],
                ).fetchone()
            self._forget_active()
        return _generation(row) if row else None

    def switch_generation(
        self, tenant: str, table: str, generation: int, reconciled_at: datetime
    ) -> Generation:
        """Make `generation` the active one of the tenant's table and retire the one that was,
        in one transaction, the checks included: ConflictError (nothing changed) while a job
        writes to the table (running or cancelling), when one ended after `reconciled_at` (its
        rows may be missing from the generation: reconcile again), or when the generation is
        not one a switch can make active."""
        now = utcnow()
        with self._lock:
            with self._tx() as con:
                writers = [
                    r[0]
                    for r in con.execute(
                        "SELECT id FROM jobs WHERE tenant = ? AND table_name = ? AND kind IN "
                        "('embed', 'migration') AND (status IN (?, ?) OR (kind = 'embed' AND "
                        "finished_at IS NOT NULL AND finished_at > ?))",
                        [tenant, table, *(str(s) for s in sorted(ACTIVE)), reconciled_at],
                    ).fetchall()
                ]
                if writers:
                    raise ConflictError(
                        f"table '{table}' is being written by job(s) {', '.join(writers)} (or "
                        "was since the generations were reconciled); the switch waits for them"
                    )
                target = con.execute(
                    f"{_SELECT} WHERE tenant = ? AND table_name = ? AND generation = ?",
                    [tenant, table, generation],
                ).fetchone()
                if target is None or GenerationState(target[6]) not in SWITCHABLE:
                    state = "missing" if target is None else target[6]
                    raise ConflictError(
                        f"generation {generation} of table '{table}' is {state}: only a built "
                        "or retired generation can be switched to"
                    )
                con.execute(
                    "UPDATE table_generations SET state = ?, retired_at = ?, updated_at = ? "
                    "WHERE tenant = ? AND table_name = ? AND state = ?",
                    [str(GenerationState.RETIRED), now, now, tenant, table, "active"],
                )
                row = con.execute(
                    "UPDATE table_generations SET state = ?, activated_at = ?, retired_at = NULL, "
                    "switch_requested = FALSE, error = NULL, updated_at = ? WHERE tenant = ? AND "
                    f"table_name = ? AND generation = ? RETURNING {', '.join(_COLUMNS)}",
                    [str(GenerationState.ACTIVE), now, now, tenant, table, generation],
                ).fetchone()
            self._forget_active()
        return _generation(_found(row))

    def active_generations(self, tenant: str) -> dict[str, Generation]:
        """The tenant's migrated tables (those with generation rows): name -> active one."""
        with self._lock:
            rows = self._con.execute(
                f"{_SELECT} WHERE tenant = ? AND state = ?", [tenant, str(GenerationState.ACTIVE)]
            ).fetchall()
        return {g.table_name: g for g in map(_generation, rows)}

    def discard_generation(self, tenant: str, table: str, generation: int) -> None:
        """Forget a generation reserved for a migration whose job was refused (its quota):
        as if it had never been asked for."""
        with self._lock:
            with self._tx() as con:
                con.execute(
                    "DELETE FROM table_generations WHERE tenant = ? AND table_name = ? AND "
                    "generation = ? AND state = ?",
                    [tenant, table, generation, str(GenerationState.BUILDING)],
                )
                # A table's first migration also recorded its generation 1: alone, it goes too
                # (the table is its own generation 1 without it, as before).
                con.execute(
                    "DELETE FROM table_generations WHERE tenant = ? AND table_name = ? AND "
                    "generation = 1 AND NOT EXISTS (SELECT 1 FROM table_generations WHERE "
                    "tenant = ? AND table_name = ? AND generation > 1)",
                    [tenant, table, tenant, table],
                )
            self._forget_active()

    def forget_generations(self, tenant: str, table: str) -> None:
        """The tenant's table was dropped: its generations go with it."""
        with self._lock:
            with self._tx() as con:
                con.execute(
                    "DELETE FROM table_generations WHERE tenant = ? AND table_name = ?",
                    [tenant, table],
                )
            self._forget_active()
