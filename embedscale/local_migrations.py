"""`embedscale.migrate` and friends: move a local data dir's table to another model without
downtime, as `embedscale migrate` does (the build runs on this process's local cluster,
`embedscale.cluster()`). Each returns the table's generations ({"table", "active",
"generations"}). They need the data dir's DuckDB file: not while a server owns it (use
`Client.migrations` then)."""

from __future__ import annotations

import os
from typing import Any

from embedscale.jobs.tenants.accounts import LOCAL_TENANT
from embedscale.local_tables import _service


def migrate(
    table: str,
    model: str,
    *,
    provider: str | None = None,
    provider_url: str | None = None,
    switch: str = "manual",
    priority: str = "normal",
    precision: str = "auto",
    data_dir: str | os.PathLike | None = None,
    tenant: str = LOCAL_TENANT,
) -> dict[str, Any]:
    """Build a new generation of `table` with `model` and wait until it is built (`switch`
    "auto": until it is the table). Searches answer from the current generation meanwhile."""
    from embedscale.local_jobs import cluster

    with _service(data_dir) as service:
        service.migrate(tenant, table, model, provider, switch, priority, provider_url, precision)
        service.attach(cluster())
        service.start()
        try:
            return service.settle_migration(tenant, table).to_dict()
        finally:
            service.stop()


def migration(
    table: str, *, data_dir: str | os.PathLike | None = None, tenant: str = LOCAL_TENANT
) -> dict[str, Any]:
    """The table's generations: which one answers searches, which is building, built, retired."""
    with _service(data_dir) as service:
        service.migrations.advance(tenant, table)
        return service.migration(tenant, table).to_dict()


def switch_migration(
    table: str, *, data_dir: str | os.PathLike | None = None, tenant: str = LOCAL_TENANT
) -> dict[str, Any]:
    """Switch `table` to its built generation (what changed meanwhile embedded first)."""
    return _switch(table, data_dir, tenant, rollback=False)


def rollback_migration(
    table: str, *, data_dir: str | os.PathLike | None = None, tenant: str = LOCAL_TENANT
) -> dict[str, Any]:
    """Switch `table` back to the generation its latest switch retired."""
    return _switch(table, data_dir, tenant, rollback=True)


def compare_migration(
    table: str,
    queries: list[str],
    k: int = 10,
    *,
    data_dir: str | os.PathLike | None = None,
    tenant: str = LOCAL_TENANT,
) -> dict[str, Any]:
    """Both generations of `table` on the same queries: top-k overlap, scores, latency."""
    with _service(data_dir) as service:
        return service.compare_migration(tenant, table, queries, k).to_dict()


def _switch(
    table: str, data_dir: str | os.PathLike | None, tenant: str, rollback: bool
) -> dict[str, Any]:
    from embedscale.local_jobs import cluster

    with _service(data_dir) as service:
        ask = service.rollback_migration if rollback else service.switch_migration
        view = ask(tenant, table)
        if not any(
            j.table_name == table and j.kind == "migration" for j in service.unfinished_jobs()
        ):
            return view.to_dict()
        service.attach(cluster())  # a catch-up job embeds what changed meanwhile
        service.start()
        try:
            return service.settle_migration(tenant, table).to_dict()
        finally:
            service.stop()
