"""Progress sockets (WS /v1/jobs/{id}/events) open per tenant, against a limit
(Settings.max_websockets_per_tenant).

Each open socket holds a subscription to its job's events and a task on the server's one event
loop until the job ends, which for a job waiting in `queued` may be days: without a limit one
tenant could open sockets until the process ran out of file descriptors and memory, and every
other tenant's requests with them. A tenant over its limit is refused before the handshake
completes (a 429 naming the limit); other tenants' sockets are counted apart and never refused
for it. A socket gives its place back when it closes, whoever closes it.

Used from the event loop only (the route is async and takes and gives back without awaiting in
between), so a plain dict needs no lock.
"""

from __future__ import annotations

from collections import Counter

from fastapi.responses import JSONResponse
from starlette.websockets import WebSocket


class OpenSockets:
    """Sockets open by tenant; `take` fails once a tenant holds `limit` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def take(self, tenant: str) -> bool:
        """A place for one more socket of `tenant`, or False when it holds `limit` already."""
        if self._open[tenant] >= self.limit:
            return False
        self._open[tenant] += 1
        return True

    def give_back(self, tenant: str) -> None:
        self._open[tenant] -= 1
        if self._open[tenant] <= 0:
            del self._open[tenant]

    def count(self, tenant: str) -> int:
        return self._open.get(tenant, 0)

    def refusal(self, tenant: str) -> str:
        """What a socket over the limit is told."""
        return (
            f"tenant '{tenant}' has {self.limit} progress sockets open, the most allowed "
            "(max_websockets_per_tenant): close one, or poll GET /v1/jobs/{job_id}"
        )


async def refuse_over_limit(websocket: WebSocket, message: str) -> None:
    """Refuse a socket's handshake with a 429 carrying `message`, where the server can answer
    a handshake with an HTTP response (uvicorn can); else close it with 1008 (policy
    violation) and as much of the message as a close frame holds."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse(status_code=429, content={"detail": message})
        )
    else:
        await websocket.close(code=1008, reason=message.encode()[:123].decode(errors="ignore"))
