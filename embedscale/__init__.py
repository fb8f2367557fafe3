"""embedscale: document collections to chunk embeddings in LanceDB, on Dask.

The public face of the project; the `api`, `jobs` and `engine` packages are its internals.

    import embedscale

    summary = embedscale.run("docs/", table="docs")          # in this process, a progress bar
    embedscale.search("docs", "how are chunks cut?", k=5, as_dataframe=True)
    embedscale.read_table("docs")                              # the rows, vectors included

    client = embedscale.Client("http://127.0.0.1:8000", api_key="es_...")   # a service
    client.submit("docs", source="/data/docs").wait()

Importing this package loads none of the engine (Dask, torch, LanceDB): each name below is
imported on first use, so `import embedscale` is quick and a machine with only the HTTP
client's dependencies can use `embedscale.Client`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Client": "embedscale.api.client.service",
    "Job": "embedscale.api.client.service",
    "ApiError": "embedscale.api.client.service",
    "JobFailedError": "embedscale.api.client.service",
    "JobCancelledError": "embedscale.api.client.service",
    "run": "embedscale.local_jobs",
    "cluster": "embedscale.local_jobs",
    "shutdown": "embedscale.local_jobs",
    "RunSummary": "embedscale.jobs.local_run",
    "RunFailedError": "embedscale.local_jobs",
    "search": "embedscale.local_search",
    "tables": "embedscale.local_tables",
    "read_table": "embedscale.local_tables",
    "history": "embedscale.local_tables",
    "restore": "embedscale.local_tables",
    "optimize": "embedscale.local_tables",
    "migrate": "embedscale.local_migrations",
    "migration": "embedscale.local_migrations",
    "switch_migration": "embedscale.local_migrations",
    "rollback_migration": "embedscale.local_migrations",
    "compare_migration": "embedscale.local_migrations",
    "Hit": "embedscale.engine.tables.search",
}
__all__ = [
    "ApiError",
    "Client",
    "Hit",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "RunFailedError",
    "RunSummary",
    "cluster",
    "compare_migration",
    "history",
    "migrate",
    "migration",
    "optimize",
    "read_table",
    "restore",
    "rollback_migration",
    "run",
    "search",
    "shutdown",
    "switch_migration",
    "tables",
]

if TYPE_CHECKING:  # what type checkers and editors see; nothing is imported at run time
    from embedscale.api.client.service import (
        ApiError,
        Client,
        Job,
        JobCancelledError,
        JobFailedError,
    )
    from embedscale.engine.tables.search import Hit
    from embedscale.jobs.local_run import RunSummary
    from embedscale.local_jobs import RunFailedError, cluster, run, shutdown
    from embedscale.local_migrations import (
        compare_migration,
        migrate,
        migration,
        rollback_migration,
        switch_migration,
    )
    from embedscale.local_search import search
    from embedscale.local_tables import history, optimize, read_table, restore, tables


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embedscale' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
