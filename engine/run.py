"""Run one embedding job on a Dask cluster: plan, warm the model, stream partitions through the
workers with a bounded number in flight, and commit each completed partition exactly once.

This is the engine's own driver loop, used by the CLI and the Python API. The control plane
(`jobs/`) schedules many jobs over the same building blocks.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed import Client, as_completed

from engine.chunking import ChunkSettings
from engine.cluster import Cluster
from engine.documents import Skipped
from engine.errors import SourceError
from engine.models.backend import ModelInfo
from engine.models.cache import ModelPreloadPlugin, describe_model
from engine.models.registry import DEFAULT_MODEL, ModelSpec, resolve_model
from engine.readers import RecordFields
from engine.sink import ChunkTable, validate_table_name
from engine.sources import SourcePlan, plan_source, plan_texts
from engine.tasks import PartitionResult, TaskConfig, embed_partition

WARM_UP_PRIORITY = 1_000_000
IN_FLIGHT_PER_THREAD = 2  # one running, one queued per worker thread: no idle gaps, bounded memory


@dataclass
class EmbedRequest:
    """One job: what to embed, with which model and chunking, into which table."""

    table: str
    source: str | None = None  # a directory, file or glob; or give `texts`
    texts: Sequence[str] | None = None
    ids: Sequence[str] | None = None
    metadata: Sequence[dict[str, Any] | None] | None = None
    model: str = DEFAULT_MODEL
    chunk_tokens: int | None = None  # default: the model's maximum input
    overlap_tokens: int | None = None
    mode: str = "append"  # append | overwrite | upsert
    data_dir: str = "./embedscale-data"
    text_field: str = "text"
    id_field: str = "id"
    partition_bytes: int | None = None
    token_budget: int | None = None
    retries: int = 2  # task retries per partition, on top of Dask's re-runs after a lost worker
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def plan(self, parallelism: int = 1) -> SourcePlan:
        """The partitions of this job's source; raises SourceError for a bad source."""
        validate_table_name(self.table)
        if self.source is not None and self.texts is not None:
            raise SourceError("give either a source path or texts, not both")
        if self.texts is not None:
            return plan_texts(self.texts, self.ids, self.metadata)
        if self.source is None:
            raise SourceError("no source: give a directory, file or glob, or texts")
        return plan_source(self.source, parallelism=parallelism,
                           partition_bytes=self.partition_bytes)


@dataclass
class Progress:
    """Counts so far, reported after each commit."""

    partitions_done: int
    partitions_total: int
    documents: int
    unchanged: int
    chunks: int
    tokens: int
    skipped: int
    elapsed: float

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class RunSummary:
    """The result of a job: counts, skipped documents with reasons, failures, where it went."""

    job_id: str
    table: str
    table_uri: str
    model: str
    mode: str
    documents: int
    unchanged: int
    chunks: int
    tokens: int
    seconds: float
    partitions: int
    skipped: list[Skipped]
    failed: dict[int, str]
    dashboard_link: str | None

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        data["failed"] = {str(k): v for k, v in self.failed.items()}
        data["chunks_per_s"] = round(self.chunks_per_s, 2)
        data["seconds"] = round(self.seconds, 3)
        return data


def warm_up(client: Client, spec: ModelSpec) -> ModelInfo:
    """Load the model on every worker at once (a task each) and return what it is; later
    workers (restarts, scale-ups) load it at start through a worker plugin."""
    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    # Top priority: on a busy cluster these must not wait behind other jobs' partitions.
    futures = [client.submit(describe_model, spec, workers=[w], allow_other_workers=False,
                             pure=False, key=f"warm-model-{uuid.uuid4().hex[:8]}-{w}",
                             priority=WARM_UP_PRIORITY)
               for w in workers] or [client.submit(describe_model, spec, pure=False)]
    infos = client.gather(futures)
    client.register_plugin(ModelPreloadPlugin([spec]), name=f"embedscale-model-{spec.name}")
    return infos[0]


def run_embedding(
    request: EmbedRequest,
    cluster: Cluster,
    on_progress: Callable[[Progress], None] | None = None,
    plan: SourcePlan | None = None,
) -> RunSummary:
    """Run `request` on `cluster` and return its summary. Partitions that still fail after
    their retries are listed in `summary.failed`; everything else is committed once."""
    started = time.perf_counter()
    client = cluster.client
    plan = plan or request.plan(max(1, cluster.worker_threads()))
    spec = resolve_model(request.model)
    info = warm_up(client, spec)
    chunking = ChunkSettings.for_model(info, request.chunk_tokens, request.overlap_tokens)
    table = ChunkTable(request.data_dir, request.table)
    table.prepare(info, request.mode)
    config = TaskConfig(request.job_id, spec, chunking, table.uri, request.mode,
                        RecordFields(request.text_field, request.id_field), request.token_budget)
    totals = _Totals(len(plan.partitions), started, list(plan.skipped))
    failed: dict[int, str] = {}
    # Largest first (LPT): a big partition started last would run alone while workers idle.
    pending = iter(sorted(plan.partitions, key=lambda p: -p.size_bytes))

    def submit_next() -> Any | None:
        part = next(pending, None)
        if part is None:
            return None
        return client.submit(embed_partition, part, config, pure=False,
                             retries=request.retries,
                             key=f"embed-partition-{request.job_id}-{part.index}")

    in_flight = max(1, IN_FLIGHT_PER_THREAD * cluster.worker_threads())
    first = [f for f in (submit_next() for _ in range(in_flight)) if f is not None]
    completions = as_completed(first)
    try:
        for batch in completions.batches():
            done: list[PartitionResult] = []
            for future in batch:
                if future.status == "error":
                    failed[_partition_of(future.key)] = _error_line(future.exception())
                else:
                    done.append(future.result())
                future.release()
                nxt = submit_next()
                if nxt is not None:
                    completions.add(nxt)
            if done:
                table.commit({request.job_id: done})
                totals.add(done)
            totals.partitions_done += len(batch)
            if on_progress:
                on_progress(totals.progress())
    except BaseException:
        for future in completions.futures:
            future.cancel()
        raise
    return RunSummary(
        request.job_id, table.name, table.uri, spec.name, request.mode, totals.documents,
        totals.unchanged, totals.chunks, totals.tokens, time.perf_counter() - started,
        len(plan.partitions), totals.skipped, failed, client.dashboard_link,
    )


def _partition_of(key: str) -> int:
    return int(str(key).rsplit("-", 1)[1])


def _error_line(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc else "unknown error"


@dataclass
class _Totals:
    partitions_total: int
    started: float
    skipped: list[Skipped]
    partitions_done: int = 0
    documents: int = 0
    unchanged: int = 0
    chunks: int = 0
    tokens: int = 0

    def add(self, results: list[PartitionResult]) -> None:
        for r in results:
            self.documents += r.documents
            self.unchanged += r.unchanged
            self.chunks += r.chunks
            self.tokens += r.tokens
            self.skipped.extend(r.skipped)

    def progress(self) -> Progress:
        return Progress(self.partitions_done, self.partitions_total, self.documents,
                        self.unchanged, self.chunks, self.tokens, len(self.skipped),
                        time.perf_counter() - self.started)
