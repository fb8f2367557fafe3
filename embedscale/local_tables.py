"""`embedscale.tables` and `embedscale.read_table`: a local data dir's tables and their rows,
for looking at what a run wrote (vectors included) with pandas; `embedscale.history`,
`embedscale.restore` and `embedscale.optimize`: a table's versions, bringing one back, and a
maintenance run now (what `embedscale tables history|restore|optimize` do). Restore and optimize
record what they did in the data dir's job ledger, so they need its DuckDB file: not while a
server (`embedscale serve`) owns it (use its /v1/admin/tables routes then)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from embedscale.engine.errors import TableNotFoundError
from embedscale.engine.tables.catalog import TableInfo, describe_table, existing_table, list_tables
from embedscale.engine.tables.catalog import read_table as read_arrow
from embedscale.engine.tables.generation_pointer import pointed_home, pointed_names
from embedscale.engine.tables.versions import HISTORY_LIMIT, VersionInfo
from embedscale.engine.tables.versions import history as table_history
from embedscale.jobs.tenants.accounts import LOCAL_TENANT, tenant_data_dir
from embedscale.local_jobs import resolve_data_dir

if TYPE_CHECKING:
    import pandas as pd

    from embedscale.jobs.service import JobService
    from embedscale.jobs.store.records import JobRecord
    from embedscale.jobs.table_admin import Restored


def tables(
    *, data_dir: str | os.PathLike | None = None, tenant: str = LOCAL_TENANT
) -> list[TableInfo]:
    """The tables of a data dir (name, rows, model, dimension), by name; a migrated table as
    its active generation is."""
    home = tenant_data_dir(resolve_data_dir(data_dir), tenant)
    found = {t.name: t for t in list_tables(home)}
    for name in pointed_names(home):
        try:
            found[name] = describe_table(pointed_home(home, name), name)
        except TableNotFoundError:  # dropped meanwhile
            found.pop(name, None)
    return [found[name] for name in sorted(found)]


def read_table(
    table: str,
    columns: list[str] | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    tenant: str = LOCAL_TENANT,
) -> pd.DataFrame:
    """A table's rows as a pandas DataFrame, one row per chunk (`columns`: only those). The
    `vector` column holds one numpy array per chunk: `numpy.stack(df["vector"])` is the
    chunks-by-dimension matrix."""
    home = tenant_data_dir(resolve_data_dir(data_dir), tenant)
    data = read_arrow(pointed_home(home, table), table, columns)
    return data.to_pandas()


def history(
    table: str,
    *,
    limit: int = HISTORY_LIMIT,
    before: int | None = None,
    data_dir: str | os.PathLike | None = None,
    tenant: str = LOCAL_TENANT,
) -> list[VersionInfo]:
    """The table's versions, newest first (`limit` of them, older than `before` if given),
    each with when it was made, its rows, the Lance operation and the jobs that made it (or the
    job a cancel removed, or the version a restore brought back). Straight from the table."""
    home = tenant_data_dir(resolve_data_dir(data_dir), tenant)
    found = existing_table(pointed_home(home, table), table)
    return table_history(found.uri, found.storage, limit, before)


def restore(
    table: str,
    version: int,
    *,
    data_dir: str | os.PathLike | None = None,
    tenant: str = LOCAL_TENANT,
) -> Restored:
    """Bring `table` back to `version` as a new commit, recorded in the job ledger (a job of
    kind maintenance); refused, nothing changed, for a version the table does not keep or while
    a job of the table is unfinished."""
    with _service(data_dir) as service:
        return service.restore_table(tenant, table, version)


def optimize(
    table: str,
    *,
    retention_days: float | None = None,
    data_dir: str | os.PathLike | None = None,
    tenant: str = LOCAL_TENANT,
) -> JobRecord | None:
    """One maintenance run of `table` now: compaction, index refresh, and the cleanup of the
    versions older than `retention_days` (default: the service's, 7 days) that no unfinished
    job needs. Returns its record (a job of kind maintenance; `.details` says what each step
    did)."""
    retention = timedelta(days=retention_days) if retention_days is not None else None
    with _service(data_dir) as service:
        return service.optimize_table(tenant, table, retention)


@contextmanager
def _service(data_dir: str | os.PathLike | None) -> Iterator[JobService]:
    """The data dir's job service, as the CLI opens it."""
    from embedscale.api.settings import Settings
    from embedscale.api.startup import open_service

    with open_service(Settings(data_dir=resolve_data_dir(data_dir)), local_user=True) as service:
        yield service
