"""Where a tenant's table is: the one place the control plane turns (tenant, table name) into the
physical LanceDB table that searches read and jobs write.

A table that was never migrated is its own generation 1: `<data dir>/lancedb/<name>.lance`, as
it always was. A migration (jobs/migrations/) builds generation N in a folder of its own beside
it, `<data dir>/generations/gN/lancedb/<name>.lance`: the same name in another folder, so error
messages still name the table, and `tables list` (which lists `<data dir>/lancedb/`) never shows
a generation. Which generation is active is a row of the store (jobs/store/generations.py),
switched in one transaction; every reader below asks it at the moment it opens the table.

A job writes one generation from start to end: the one active as it starts, whose folder the
store records in its details (`physical`, as a migration job's name the one it builds) in the
transaction that starts it (Store.start_jobs). A resume, a cancel's undo and a sync's end reach
that generation, and the job ledger (jobs/ledger.py) compares its versions with that
generation's own.
"""

from __future__ import annotations

from pathlib import Path

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.storage.locations import Location
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.generations import Generation
from embedscale.jobs.store.records import JobRecord


def generation_home(data_dir: Path | Location, physical: str) -> Path | Location:
    """The data dir a generation's table lives under (`physical`: its folder, '' for 1)."""
    if not physical:
        return data_dir
    if isinstance(data_dir, Location):
        return data_dir.join(*physical.split("/"))
    return Path(data_dir) / physical


def generation_table(data_dir: Path | Location, generation: Generation) -> ChunkTable:
    """The physical table of one generation of a table."""
    return ChunkTable(generation_home(data_dir, generation.physical), generation.table_name)


def table_home(store: Store, data_dir: Path | Location, tenant: str, name: str) -> Path | Location:
    """The data dir that holds the active generation of the tenant's table `name`: what
    engine calls taking (data dir, name) are given."""
    active = store.active_generation(tenant, name)
    return data_dir if active is None else generation_home(data_dir, active.physical)


def active_table(store: Store, data_dir: Path | Location, tenant: str, name: str) -> ChunkTable:
    """The active generation of the tenant's table `name` (it may not exist yet)."""
    return ChunkTable(table_home(store, data_dir, tenant, name), name)


def active_physical(store: Store, tenant: str, name: str) -> str:
    """The folder of the active generation of the tenant's table `name` ('' for 1)."""
    active = store.active_generation(tenant, name)
    return "" if active is None else active.physical


def pinned_physical(record: JobRecord) -> str | None:
    """The generation folder `record`'s job writes, as recorded when it started (None: it has
    not started, or started before jobs recorded one)."""
    if record.details and "physical" in record.details:
        return str(record.details["physical"])
    return None


def job_physical(store: Store, record: JobRecord) -> str:
    """The folder of the generation a job writes: the one recorded as it started, else (a job
    not started yet, or one of before the generations were recorded) the active one."""
    pinned = pinned_physical(record)
    return (
        pinned if pinned is not None else active_physical(store, record.tenant, record.table_name)
    )


def job_table(store: Store, data_dir: Path | Location, record: JobRecord) -> ChunkTable:
    """The table a job writes: the generation recorded as it started (a migration job's own,
    from its submission), the active one for a job without one."""
    return ChunkTable(generation_home(data_dir, job_physical(store, record)), record.table_name)
