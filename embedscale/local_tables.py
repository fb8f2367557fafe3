"""`embedscale.tables` and `embedscale.read_table`: a local data dir's tables and their rows,
for looking at what a run wrote (vectors included) with pandas."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from embedscale.engine.tables.catalog import TableInfo, list_tables
from embedscale.engine.tables.catalog import read_table as read_arrow
from embedscale.jobs.tenants.accounts import LOCAL_TENANT, tenant_data_dir
from embedscale.local_jobs import resolve_data_dir

if TYPE_CHECKING:
    import pandas as pd


def tables(
    *, data_dir: str | os.PathLike | None = None, tenant: str = LOCAL_TENANT
) -> list[TableInfo]:
    """The tables of a data dir (name, rows, model, dimension), by name."""
    return list_tables(tenant_data_dir(resolve_data_dir(data_dir), tenant))


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
    data = read_arrow(tenant_data_dir(resolve_data_dir(data_dir), tenant), table, columns)
    return data.to_pandas()
