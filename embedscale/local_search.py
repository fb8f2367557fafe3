"""`embedscale.search`: the chunks of a local table nearest to a query, as hits or a
DataFrame. Straight to the table, as `embedscale search` does: no service, no job store."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import TYPE_CHECKING

from embedscale.api.client.service import HIT_COLUMNS
from embedscale.engine.tables.generation_pointer import pointed_home
from embedscale.engine.tables.search import Hit
from embedscale.engine.tables.search import search as search_table
from embedscale.engine.tables.search_options import DEFAULT_MODE
from embedscale.jobs.tenants.accounts import LOCAL_TENANT, tenant_data_dir
from embedscale.local_jobs import resolve_data_dir

if TYPE_CHECKING:
    import pandas as pd


def search(
    table: str,
    query: str,
    k: int = 5,
    *,
    mode: str = DEFAULT_MODE,
    where: str | None = None,
    nprobes: int | None = None,
    refine: int | None = None,
    data_dir: str | os.PathLike | None = None,
    tenant: str = LOCAL_TENANT,
    as_dataframe: bool = False,
) -> list[Hit] | pd.DataFrame:
    """The `k` chunks of `table` that best match `query`, best first, optionally filtered by a
    SQL `where` on the table's columns. `mode`: vector (nearest by meaning; `score` the cosine
    similarity), text (BM25 over the words; `score` the BM25 score) or hybrid (both, fused by
    reciprocal rank; `score` the fused score). `nprobes` and `refine` tune the search of a
    vector index (None: the defaults). `as_dataframe`: a pandas DataFrame, one row per hit,
    instead of a list of Hit. `data_dir` as for `embedscale.run`; `tenant` reads a service
    tenant's tables in that data dir."""
    home = tenant_data_dir(resolve_data_dir(data_dir), tenant)
    hits = search_table(
        pointed_home(home, table),  # a migrated table: its active generation
        table,
        query,
        k=k,
        where=where,
        mode=mode,
        nprobes=nprobes,
        refine=refine,
    )
    if not as_dataframe:
        return hits
    import pandas as pd

    return pd.DataFrame([asdict(h) for h in hits], columns=HIT_COLUMNS)
