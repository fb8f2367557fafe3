"""embedscale's data plane: a job spec in, a Dask graph out, Arrow batches into LanceDB.

Knows nothing of tenants, quotas, HTTP or DuckDB (those live in `jobs/` and `api/`).
"""
