"""`embedscale.run`: one embedding job in this process, on a Dask cluster, without a service.

The same control plane as the CLI and the service (`jobs.local_run.run_embedding`), so the
same guarantees; this module only gives it a friendly signature, a progress bar and a
cluster that outlives one call: workers keep the model loaded between runs, so the second run
of a session pays no model load.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from embedscale.api.client.progress import ChunkBar
from embedscale.api.settings import DEFAULT_DATA_DIR
from embedscale.engine.cluster.start import Cluster, ClusterSpec, start_cluster
from embedscale.engine.models.registry import DEFAULT_MODEL
from embedscale.jobs.local_run import EmbedRequest, Progress, RunSummary, run_embedding
from embedscale.jobs.local_run import JobFailedError as RunFailedError
from embedscale.jobs.spec import Mode, Precision, Priority, Provider

__all__ = ["RunFailedError", "cluster", "resolve_data_dir", "run", "shutdown"]

# run()'s keywords that are fields of the request as they are (source, texts and data_dir are
# worked out from what is given).
_KEYWORDS = tuple(set(EmbedRequest.model_fields) - {"source", "texts", "data_dir"})
_lock = threading.Lock()
_default: Cluster | None = None


def resolve_data_dir(value: str | os.PathLike | None = None) -> str:
    """Where tables live: `value`, else $EMBEDSCALE_DATA_DIR, else the CLI's default."""
    if value is not None:
        return os.fspath(value)
    return os.environ.get("EMBEDSCALE_DATA_DIR") or str(DEFAULT_DATA_DIR)


def cluster(**spec: Any) -> Cluster:
    """This process's local Dask cluster, started on first use (one worker per core unless
    `spec` says otherwise: any ClusterSpec field) and closed when the process exits.
    `cluster().dashboard_link` is the Dask dashboard."""
    global _default
    with _lock:
        if _default is None:
            # A free port: a notebook beside a running `embedscale serve` must still start.
            _default = start_cluster(ClusterSpec(**{"dashboard_address": ":0", **spec}))
            atexit.register(shutdown)
        elif spec:
            raise ValueError(
                f"the local cluster is already running; call "
                f"embedscale.shutdown() before starting one with {spec}"
            )
        return _default


def shutdown() -> None:
    """Close the cluster `cluster()` started (a later run starts a fresh one)."""
    global _default
    with _lock:
        if _default is not None:
            _default.close()
            _default = None


def run(
    source: str | os.PathLike | Sequence[str],
    *,
    table: str,
    mode: Mode = "append",
    model: str = DEFAULT_MODEL,
    provider: Provider = "sentence-transformers",
    provider_url: str | None = None,
    tokenizer: str | None = None,
    precision: Precision = "auto",
    chunk_tokens: int | None = None,
    overlap_tokens: int | None = None,
    allow_empty: bool = False,
    priority: Priority = "normal",
    text_field: str = "text",
    id_field: str = "id",
    ids: Sequence[str] | None = None,
    metadata: Sequence[dict[str, Any] | None] | None = None,
    labels: dict[str, str] | None = None,
    data_dir: str | os.PathLike | None = None,
    tables_uri: str | None = None,
    storage_options: dict[str, Any] | None = None,
    partition_bytes: int | None = None,
    token_budget: int | None = None,
    max_attempts: int = 3,
    cluster: Cluster | ClusterSpec | str | None = None,
    progress: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Embed `source` into `table` and return the job's summary.

    `source`: a directory, file or glob (a str or path), or a list of texts (with their `ids`
    and `metadata`, if given). `cluster`: this process's local cluster by default, or a
    Cluster, a ClusterSpec, or a scheduler address. `progress` draws a bar in chunks;
    `on_progress` is called after each commit. The other keywords are the job's fields, as the
    API's job body and `embedscale run`'s flags name them (jobs.spec.JobSpec describes each),
    and how this process runs it (jobs.local_run.EmbedRequest: `data_dir` defaults to
    $EMBEDSCALE_DATA_DIR, else the CLI's). Raises RunFailedError when the job fails (its
    summary on `.summary`), pydantic's ValidationError for a field the job refuses.
    """
    # The keywords above are the request's fields by name (tests/test_job_request.py keeps the
    # signature and EmbedRequest in step): taken from locals, so none is forgotten on the way.
    given = locals()
    fields = {name: given[name] for name in _KEYWORDS}
    if labels is None:
        del fields["labels"]  # the request's default: none
    if isinstance(source, str | os.PathLike):
        where: dict[str, Any] = {"source": os.fspath(source)}
    elif isinstance(source, bytes):
        raise TypeError("source: a path (str) or a list of texts, not bytes")
    else:
        where = {"texts": list(source)}
    request = EmbedRequest(data_dir=resolve_data_dir(data_dir), **where, **fields)
    target, owned = _cluster_for(cluster)
    bar = _Bar(table) if progress else None
    try:
        summary = run_embedding(request, target, on_progress=_both(bar, on_progress))
    except RunFailedError as exc:
        if bar is not None:
            bar.finish(exc.summary)
        raise
    finally:
        if owned:
            target.close()
    if bar is not None:
        bar.finish(summary)
    return summary


def _cluster_for(given: Cluster | ClusterSpec | str | None) -> tuple[Cluster, bool]:
    """The cluster to run on, and whether this call started it (and so must close it)."""
    if given is None:
        return cluster(), False
    if isinstance(given, Cluster):
        return given, False
    if isinstance(given, str):
        given = ClusterSpec(kind="address", address=given)
    return start_cluster(given), True


class _Bar:
    """The client's chunk bar, fed from the in-process run's progress reports."""

    def __init__(self, table: str) -> None:
        # Drawn from the start: the first commit can be seconds away (planning, model load).
        self._table = table
        self._bar = ChunkBar(self._record("starting", 0, 0, 0.0, 0.0, None))

    def _record(
        self,
        status: str,
        done: int,
        expected: int | None,
        chunks_per_s: float,
        tokens_per_s: float,
        eta: float | None,
    ) -> dict[str, Any]:
        return {
            "table": self._table,
            "status": status,
            "chunks_done": done,
            "estimated_chunks": 0,
            "expected_chunks": expected,
            "chunks_per_s": chunks_per_s,
            "tokens_per_s": tokens_per_s,
            "eta_seconds": eta,
        }

    def show(self, p: Progress) -> None:
        self._bar.update(
            self._record(
                "running",
                p.chunks,
                p.expected_chunks,
                p.chunks_per_s,
                p.tokens_per_s,
                p.eta_seconds,
            )
        )

    def finish(self, s: RunSummary) -> None:
        tokens_per_s = s.tokens / s.seconds if s.seconds > 0 else 0.0
        self._bar.update(
            self._record(s.status, s.chunks, s.chunks, s.chunks_per_s, tokens_per_s, None)
        )
        self._bar.close()


def _both(bar: _Bar | None, callback: Callable[[Progress], None] | None):
    if bar is None:
        return callback

    def report(p: Progress) -> None:
        bar.show(p)
        if callback is not None:
            callback(p)

    return report
