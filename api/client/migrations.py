"""`client.migrations`: move a table to another model without downtime, over HTTP
(/v1/tables/{name}/migrations)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# The client's request: (method, path, **httpx keywords) -> the decoded answer (ApiError else).
Request = Callable[..., Any]

SETTLED = ("active", "failed")  # a generation's states after which nothing more happens alone


class TableMigrations:
    """A tenant's table migrations: start one, watch it, compare, switch, roll back. Each call
    returns the table's generations as the service sees them ({"table", "active",
    "generations": [...]})."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def start(
        self,
        table: str,
        model: str,
        *,
        provider: str | None = None,
        provider_url: str | None = None,
        switch: str = "manual",
        priority: str = "normal",
    ) -> dict[str, Any]:
        """Start building a new generation of `table` with `model` (a job of kind migration:
        `client.job(state["generations"][-1]["job_id"]).wait()` follows it). `switch`: auto
        switches once built; manual (default) waits for `switch()`."""
        body: dict[str, Any] = {"model": model, "switch": switch, "priority": priority}
        if provider is not None:
            body["provider"] = provider
        if provider_url is not None:
            body["provider_url"] = provider_url
        return self._request("POST", f"/v1/tables/{table}/migrations", json=body)

    def state(self, table: str) -> dict[str, Any]:
        """The table's generations: the active one, and any building, built or retired."""
        return self._request("GET", f"/v1/tables/{table}/migrations")

    def switch(self, table: str) -> dict[str, Any]:
        """Switch to the built generation (reconciled with the active one first)."""
        return self._request("POST", f"/v1/tables/{table}/migrations/switch")

    def rollback(self, table: str) -> dict[str, Any]:
        """Switch back to the generation the latest switch retired."""
        return self._request("POST", f"/v1/tables/{table}/migrations/rollback")

    def compare(self, table: str, queries: list[str], k: int = 10) -> dict[str, Any]:
        """Both generations on the same queries: top-k overlap, scores, latency."""
        body = {"queries": queries, "k": k}
        return self._request("POST", f"/v1/tables/{table}/migrations/compare", json=body)

    def wait_for(
        self, table: str, generation: int, states: tuple[str, ...] = SETTLED, timeout: float = 600
    ) -> dict[str, Any]:
        """Poll until generation `generation` of `table` is in one of `states` (default: active
        or failed); TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(table)
            found = [g for g in state["generations"] if g["generation"] == generation]
            if found and found[0]["state"] in states:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"generation {generation} of table {table!r} not {states}")
            time.sleep(0.5)
