"""The FastAPI app: starts (or connects to) the Dask cluster, owns the DuckDB file through the
job service, and serves the routes. Shutdown is graceful: the runner stops feeding, lets
in-flight partitions finish and commit, and records everything before the cluster closes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from embedscale.api.server.errors import install_error_handlers
from embedscale.api.server.metrics import Metrics
from embedscale.api.server.ratelimit import RateLimiter
from embedscale.api.server.request_gate import RequestGate
from embedscale.api.server.request_observer import RequestObserver
from embedscale.api.server.routes import (
    embeddings,
    health,
    jobs,
    migrations,
    schedules,
    table_admin,
    tables,
    tenants,
)
from embedscale.api.server.socket_limits import OpenSockets
from embedscale.api.settings import Settings
from embedscale.api.startup import cluster_spec, open_service
from embedscale.engine.cluster.start import Cluster, start_cluster
from embedscale.jobs.service import JobService

log = logging.getLogger("embedscale.api")


def create_app(
    settings: Settings | None = None,
    cluster: Cluster | None = None,
    service: JobService | None = None,
) -> FastAPI:
    """The app for `settings`; with `cluster`, that cluster is used (and not closed); with
    `service` (from open_service), that job service is run and closed on shutdown."""
    settings = settings or Settings()
    admin_key = settings.resolved_admin_key()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The store first: a locked or damaged one fails before a cluster starts.
        jobs_service = service if service is not None else open_service(settings)
        own_cluster = cluster is None
        try:
            running: Cluster = (
                cluster
                if cluster is not None
                else await run_in_threadpool(start_cluster, cluster_spec(settings))
            )
        except BaseException:
            jobs_service.close()
            raise
        jobs_service.attach(running)
        jobs_service.start(fire_schedules=True)
        app.state.service, app.state.cluster = jobs_service, running
        app.state.metrics = Metrics(jobs_service, running)
        log.info("embedscale ready; Dask dashboard at %s", running.dashboard_link)
        try:
            yield
        finally:
            app.state.metrics.close()
            await run_in_threadpool(jobs_service.close, settings.shutdown_timeout)
            if own_cluster:
                await run_in_threadpool(running.close)

    app = FastAPI(
        title="embedscale",
        version="0.1.0",
        lifespan=lifespan,
        description="Batch embedding jobs into LanceDB, on Dask.",
    )
    app.state.settings, app.state.admin_key = settings, admin_key
    app.state.limiter = RateLimiter()
    app.state.sockets = OpenSockets(settings.max_websockets_per_tenant)
    install_error_handlers(app)
    # Keys, allowances and body sizes, before FastAPI reads a body; inside the observer, so
    # that its refusals are logged and counted as every answer is.
    app.add_middleware(RequestGate, settings=settings)
    app.add_middleware(RequestObserver)  # log scope and latency of each request
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(schedules.router)
    app.include_router(tables.router)
    app.include_router(migrations.router)
    app.include_router(embeddings.router)  # OpenAI-compatible, OpenAI-shaped errors
    app.include_router(tenants.usage_router)
    if admin_key:  # no admin routes at all without an admin key
        app.include_router(tenants.admin_router)
        app.include_router(table_admin.router)
    return app
