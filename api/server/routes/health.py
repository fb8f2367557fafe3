"""/healthz, /readyz, /metrics and /v1/cluster."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from embedscale.api.server.deps import CurrentTenant
from embedscale.api.server.schemas import ClusterOut, error_responses

router = APIRouter(tags=["health"])
READY_TIMEOUT_S = 3.0


@router.get("/healthz")
def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready; `checks` says why"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when DuckDB answers, the scheduler is reachable and at least one worker is up."""
    service, cluster = request.app.state.service, request.app.state.cluster
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(service.ping)
        checks["duckdb"] = "ok"
    except Exception as exc:
        checks["duckdb"] = f"error: {exc}"
    try:
        info = await asyncio.wait_for(
            run_in_threadpool(cluster.client.scheduler_info, n_workers=-1), READY_TIMEOUT_S
        )
        workers = len(info.get("workers", {}))
        checks["scheduler"] = "ok"
        checks["workers"] = "ok" if workers else "error: no workers"
    except Exception as exc:
        checks["scheduler"] = f"error: unreachable ({type(exc).__name__})"
        checks["workers"] = "unknown"
    runner = service.runner
    if runner is not None and (runner.error is not None or not runner.alive):
        checks["runner"] = f"error: {runner.error or 'stopped'}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        status_code=200 if ready else 503, content={"ready": ready, "checks": checks}
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format, rendered at most once a second (api/server/metrics_page.py)."""
    return Response(await request.app.state.metrics.page.body(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/cluster", response_model=ClusterOut, responses=error_responses(401))
async def cluster_info(request: Request, tenant: CurrentTenant) -> ClusterOut:
    """Workers and threads the jobs run on. The scheduler's address and the Dask dashboard's
    link (no authentication of its own) only where the operator exposes them."""
    cluster = request.app.state.cluster
    try:
        info = await asyncio.wait_for(
            run_in_threadpool(cluster.client.scheduler_info, n_workers=-1), READY_TIMEOUT_S
        )
    except Exception:
        info = {}
    workers = info.get("workers", {})
    out = ClusterOut(
        scheduler=None,
        dashboard_link=None,
        workers=len(workers),
        threads=sum(w.get("nthreads", 1) for w in workers.values()),
    )
    if request.app.state.settings.expose_dashboard:
        scheduler = cluster.client.scheduler
        out.scheduler = scheduler.address if scheduler else None
        out.dashboard_link = cluster.dashboard_link
    return out
