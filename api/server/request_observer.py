"""What the API notes of each request: the scope of its log lines (the tenant and the job it is
about, jobs/log_context.py) and, for HTTP, its latency by route for /metrics.

A pure ASGI middleware, not Starlette's BaseHTTPMiddleware: the route runs in the same context
as the middleware, so the scope opened here is the one the route's dependencies fill in (the
tenant, in api/server/deps.py) and the one uvicorn's access line is written in.
"""

from __future__ import annotations

import time
from typing import Any

from embedscale.jobs.log_context import add_log_fields, log_fields

MAX_ID_CHARS = 64  # a job id in a path is the client's text: a log line carries no more of it


class RequestObserver:
    """ASGI middleware: a log scope per request and WebSocket, and request latency."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def noting_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Routing has filled in the path's parameters by now.
                job_id = scope.get("path_params", {}).get("job_id")
                add_log_fields(job_id=job_id[:MAX_ID_CHARS] if job_id else None)
            await send(message)

        with log_fields():
            try:
                await self.app(scope, receive, noting_send)
            finally:
                if scope["type"] == "http":
                    _observe(scope, status, time.perf_counter() - start)


def _observe(scope: dict, status: int, seconds: float) -> None:
    metrics = getattr(scope["app"].state, "metrics", None)  # None before start-up finished
    if metrics is None:
        return
    route = scope.get("route")
    # The template (/v1/jobs/{job_id}), never the path: a label per job id would grow forever.
    metrics.observe_request(scope["method"], getattr(route, "path", "unmatched"), status, seconds)
