"""The Python client of the embedscale service, for notebooks and scripts.

    from embedscale.api.client.service import Client
    client = Client("http://127.0.0.1:8000", api_key="es_...")
    job = client.submit("notes", texts=["first", "second"])
    job.wait(timeout=60)              # raises JobFailedError, JobCancelledError, TimeoutError
    for hit in client.search("notes", "query", k=3):
        print(hit["score"], hit["doc_id"])

Scheduled runs: `client.schedules.add("0 2 * * *", "notes", source="/data/notes",
mode="upsert", timezone="Europe/Berlin")`, then `client.jobs(schedule=schedule["id"])`.

`Job.status()` never raises; `Job.wait()` follows the job's WebSocket and raises on an
unsuccessful end. HTTP errors become `ApiError` with the status code and the server's detail.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import httpx

from embedscale.api.client.migrations import TableMigrations
from embedscale.api.client.progress import ChunkBar

if TYPE_CHECKING:
    import pandas as pd


class ApiError(RuntimeError):
    """The service refused a request; `status_code` and `detail` say why."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code, self.detail = status_code, detail
        super().__init__(f"HTTP {status_code}: {detail}")


class JobFailedError(RuntimeError):
    """The job ended in `failed`; `job` holds its record (error, error_reason)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        super().__init__(f"job {job['id']} failed ({job.get('error_reason')}): {job.get('error')}")


class JobCancelledError(RuntimeError):
    """The job was cancelled."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        super().__init__(f"job {job['id']} was cancelled")


_TERMINAL = {"succeeded", "failed", "cancelled"}
# A search hit's fields, in the order a table of hits shows them (the API's Hit schema).
HIT_COLUMNS = [
    "score",
    "doc_id",
    "chunk_index",
    "text",
    "source",
    "metadata",
    "char_start",
    "char_end",
    "id",
]


class Job:
    """A handle on one job of the service."""

    def __init__(self, client: Client, record: dict[str, Any]) -> None:
        self._client, self.record = client, record
        self.id: str = record["id"]

    def status(self) -> str:
        """The job's status now; never raises (a lost connection answers 'unknown')."""
        try:
            self.record = self._client._request("GET", f"/v1/jobs/{self.id}")
        except (ApiError, httpx.HTTPError):
            return "unknown"
        return self.record["status"]

    def wait(self, timeout: float | None = None, progress: bool = True) -> dict[str, Any]:
        """Follow the job until it ends; returns its record if it succeeded. `progress` draws
        a bar in chunks meanwhile (a widget in Jupyter, a line on stderr in a terminal)."""
        from websockets.sync.client import connect

        url = self._client.base_url.replace("http", "ws", 1) + f"/v1/jobs/{self.id}/events"
        deadline = None if timeout is None else time.monotonic() + timeout
        bar: ChunkBar | None = None
        with connect(url, additional_headers=self._client._auth, open_timeout=timeout) as ws:
            try:
                while True:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        event = json.loads(ws.recv(timeout=left))
                    except TimeoutError:
                        raise TimeoutError(
                            f"job {self.id} still running after {timeout} s"
                        ) from None
                    self.record = event["job"]
                    if progress and bar is None:
                        bar = ChunkBar(self.record)
                    elif bar is not None:
                        bar.update(self.record)
                    if self.record["status"] in _TERMINAL:
                        break
            finally:
                if bar is not None:
                    bar.close()
        if self.record["status"] == "failed":
            raise JobFailedError(self.record)
        if self.record["status"] == "cancelled":
            raise JobCancelledError(self.record)
        return self.record

    def cancel(self) -> dict[str, Any]:
        """Ask the service to cancel the job (its rows are removed)."""
        self.record = self._client._request("DELETE", f"/v1/jobs/{self.id}")
        return self.record

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.record.get('status')!r})"


class Schedules:
    """The tenant's schedules (`Client.schedules`): cron-triggered runs of a job template."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def add(
        self,
        cron: str,
        table: str,
        *,
        source: str | None = None,
        texts: list[str] | None = None,
        timezone: str = "UTC",
        enabled: bool = True,
        **options: Any,
    ) -> dict[str, Any]:
        """A new schedule: `cron` (five fields, read in `timezone`) submits a job into
        `table` from `source` or `texts`, with `options` as in Client.submit."""
        template = {"table": table, **options}
        if source is not None:
            template["source"] = source
        if texts is not None:
            template["texts"] = texts
        body = {"cron": cron, "timezone": timezone, "template": template, "enabled": enabled}
        return self._client._request("POST", "/v1/schedules", json=body)

    def list(self) -> list[dict[str, Any]]:
        """The tenant's schedules, oldest first."""
        return self._client._request("GET", "/v1/schedules")["schedules"]

    def get(self, schedule_id: str) -> dict[str, Any]:
        """One schedule: next_run_at, last_outcome, runs_fired/skipped/refused, ..."""
        return self._client._request("GET", f"/v1/schedules/{schedule_id}")

    def remove(self, schedule_id: str) -> dict[str, Any]:
        """Remove a schedule (a run already submitted goes on)."""
        return self._client._request("DELETE", f"/v1/schedules/{schedule_id}")

    def pause(self, schedule_id: str) -> dict[str, Any]:
        return self._client._request("POST", f"/v1/schedules/{schedule_id}/pause")

    def resume(self, schedule_id: str) -> dict[str, Any]:
        """Fire again from the next slot after now."""
        return self._client._request("POST", f"/v1/schedules/{schedule_id}/resume")

    def run(self, schedule_id: str) -> Job:
        """Submit a run now, besides the slots (ApiError 409 while a run is active)."""
        return Job(self._client, self._client._request("POST", f"/v1/schedules/{schedule_id}/run"))


class Client:
    """A tenant's connection to an embedscale service."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._http = httpx.Client(base_url=self.base_url, headers=self._auth, timeout=timeout)
        self.schedules = Schedules(self)
        # A table moved to another model without downtime (api/client/migrations.py).
        self.migrations = TableMigrations(self._request)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json() if response.content else None

    def submit(
        self,
        table: str,
        *,
        source: str | None = None,
        texts: list[str] | None = None,
        provider: str | None = None,
        provider_url: str | None = None,
        tokenizer: str | None = None,
        **options: Any,
    ) -> Job:
        """Create a job from a server-side `source` path or inline `texts`. `provider`:
        "sentence-transformers" (the default), "onnx" (the same model on onnxruntime, vectors
        that may share a table with sentence-transformers') or "openai", an endpoint at
        `provider_url` (one the service offers) with chunks cut by `tokenizer`'s (default: the
        model's own); `options` are the other job fields (ids, metadata, model, chunk_tokens,
        overlap_tokens, mode, priority)."""
        given = {"provider": provider, "provider_url": provider_url, "tokenizer": tokenizer}
        body = {"table": table, **{k: v for k, v in given.items() if v is not None}, **options}
        if source is not None:
            body["source"] = source
        if texts is not None:
            body["texts"] = texts
        return Job(self, self._request("POST", "/v1/jobs", json=body))

    def job(self, job_id: str) -> Job:
        return Job(self, self._request("GET", f"/v1/jobs/{job_id}"))

    def jobs(
        self,
        status: str | None = None,
        table: str | None = None,
        limit: int = 50,
        schedule: str | None = None,
    ) -> list[Job]:
        """The tenant's jobs, newest first (all pages); `schedule`: that schedule's runs."""
        params = {
            k: v
            for k, v in {
                "status": status,
                "table": table,
                "limit": limit,
                "schedule": schedule,
            }.items()
            if v is not None
        }
        found: list[Job] = []
        while True:
            page = self._request("GET", "/v1/jobs", params=params)
            found += [Job(self, j) for j in page["jobs"]]
            if not page["next_cursor"]:
                return found
            params["cursor"] = page["next_cursor"]

    def search(
        self,
        table: str,
        query: str,
        k: int = 10,
        filter: str | None = None,
        as_dataframe: bool = False,
        *,
        mode: str | None = None,
        where: str | None = None,
        nprobes: int | None = None,
        refine: int | None = None,
    ) -> list[dict[str, Any]] | pd.DataFrame:
        """The `k` chunks of `table` that best match `query`, best first; `mode`: vector
        (nearest by meaning, the server's default), text (BM25) or hybrid (both, fused by
        reciprocal rank); `filter` (or `where`, the same) a SQL condition; `nprobes` and
        `refine` tune a vector index's search. `as_dataframe`: as a pandas DataFrame, one row
        per hit (score, doc_id, chunk_index, text, ...)."""
        if filter is not None and where is not None:
            raise ValueError("give the filter as `filter` or as `where`, not both")
        condition = filter if filter is not None else where
        # Only what was given: a server older than mode, nprobes and refine still answers.
        body: dict[str, Any] = {"query": query, "k": k}
        given = {"filter": condition, "mode": mode, "nprobes": nprobes, "refine": refine}
        body |= {name: value for name, value in given.items() if value is not None}
        hits = self._request("POST", f"/v1/tables/{table}/search", json=body)["hits"]
        if not as_dataframe:
            return hits
        import pandas as pd  # only here: the client alone needs no pandas

        return pd.DataFrame(hits, columns=HIT_COLUMNS)

    def tables(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/tables")["tables"]

    def migrate(self, table: str, model: str, **options: Any) -> dict[str, Any]:
        """Start moving `table` to `model` (see `client.migrations` for the rest: state,
        compare, switch, rollback); `options`: provider, switch ("auto" or "manual"),
        priority, precision."""
        return self.migrations.start(table, model, **options)

    def usage(self) -> dict[str, Any]:
        return self._request("GET", "/v1/usage")
