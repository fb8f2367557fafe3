"""Prometheus metrics: jobs by status and as they end, chunks and tokens embedded by tenant and
model, partition, job and request latency, work waiting, quota and rate-limit refusals, failed
partition attempts, workers, whether each part of the service is up, and GPU busy and memory
where there are GPUs. ops/grafana-dashboard.json and ops/alerts.yml are built on these names
(tests/test_ops.py checks that each name they use is served)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from embedscale.api.server.embedding_metrics import EmbeddingCollector
from embedscale.api.server.metrics_page import MetricsPage
from embedscale.engine.cluster.gpu_stats import read_gpus
from embedscale.engine.cluster.start import Cluster
from embedscale.jobs.runner.table_maintenance import MaintenanceFigures
from embedscale.jobs.service import JobService
from embedscale.jobs.states import TERMINAL

log = logging.getLogger(__name__)
_TERMINAL = {status.value for status in TERMINAL}
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Served only where NVML answers (pynvml installed, a driver, a GPU) on the API's host, which is
# where a local-cuda cluster's workers run. The dashboard and the alert rules use them; on a
# machine without a GPU they are absent, and tests/test_ops.py accepts a name missing from
# /metrics only if it is listed here.
GPU_ONLY_METRICS = GPU_UP, GPU_BUSY, GPU_MEMORY_USED, GPU_MEMORY_TOTAL = (
    "embedscale_gpu_up",
    "embedscale_gpu_utilization_percent",
    "embedscale_gpu_memory_used_bytes",
    "embedscale_gpu_memory_total_bytes",
)
# HTTP methods a request may be labelled with; any other (a client can send any token) is
# 'other', so that no client can add label values without bound.
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


class ServiceCollector:
    """Reads the figures from the job service and the cluster at scrape time."""

    def __init__(self, service: JobService, cluster: Cluster) -> None:
        self.service, self.cluster = service, cluster

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "embedscale_up",
            "Whether each part of the service answers (1) or not (0): duckdb, scheduler, runner",
            labels=["component"],
        )
        try:
            yield from self._store_figures()
            up.add_metric(["duckdb"], 1)
        except Exception:  # a damaged or locked store: say so rather than fail the scrape
            log.warning("metrics: the job store did not answer", exc_info=True)
            up.add_metric(["duckdb"], 0)
        try:
            info = self.cluster.client.scheduler_info(n_workers=-1).get("workers", {})
            up.add_metric(["scheduler"], 1)
        except Exception:  # scheduler gone: report no workers rather than fail the scrape
            info = {}
            up.add_metric(["scheduler"], 0)
        runner = self.service.runner
        up.add_metric(["runner"], int(runner is not None and runner.alive and runner.error is None))
        yield up
        yield GaugeMetricFamily("embedscale_workers", "Dask workers", value=len(info))
        yield GaugeMetricFamily(
            "embedscale_worker_threads",
            "Dask worker threads",
            value=sum(w.get("nthreads", 1) for w in info.values()),
        )
        refusals = CounterMetricFamily(
            "embedscale_quota_refusals",
            "Jobs refused at submission (429) for the tenant's daily chunk quota",
            labels=["tenant"],
        )
        for tenant, count in self.service.quota_refusals.counts().items():
            refusals.add_metric([str(tenant)], count)
        yield refusals
        failures = CounterMetricFamily(
            "embedscale_partition_failures",
            "Failed partition attempts (retried or failing "
            "their job), by kind: error or killed_worker",
            labels=["kind"],
        )
        for kind in ("error", "killed_worker"):  # both always present, so rate() has a series
            failures.add_metric(
                [kind], runner.partition_failures.counts().get(kind, 0) if runner is not None else 0
            )
        yield failures
        yield from maintenance_metrics(runner.maintenance.figures if runner is not None else None)
        yield from gpu_metrics()

    def _store_figures(self) -> Iterator[Metric]:
        """Jobs by status, what was embedded, and the work waiting: from the figures the store
        keeps in memory (jobs/store/job_figures.py), never a scan of DuckDB; then whether the store
        answers at all (one trivial query)."""
        figures = self.service.job_figures()
        jobs = GaugeMetricFamily("embedscale_jobs", "Jobs by status", labels=["status"])
        for status, count in figures.by_status.items():
            jobs.add_metric([status.value], count)
        chunks = CounterMetricFamily(
            "embedscale_chunks_embedded", "Chunks embedded", labels=["tenant", "model"]
        )
        tokens = CounterMetricFamily(
            "embedscale_tokens_embedded", "Tokens embedded", labels=["tenant", "model"]
        )
        for tenant, model, n_chunks, n_tokens in figures.embedded:
            chunks.add_metric([tenant, model], n_chunks)
            tokens.add_metric([tenant, model], n_tokens)
        depth = GaugeMetricFamily(
            "embedscale_queue_depth",
            "Partitions of queued and running jobs not yet done",
            value=figures.waiting,
        )
        lookups = CounterMetricFamily(
            "embedscale_api_key_lookups",
            "API keys looked up, by what answered: the store "
            "(a DuckDB read) or the cache (keys found, and keys recently found missing)",
            labels=["answered_by"],
        )
        counted = self.service.tenants.key_lookups.counts()
        for source in ("store", "cache"):
            lookups.add_metric([source], counted.get(source, 0))
        yield from (jobs, chunks, tokens, depth, lookups)
        self.service.ping()


def maintenance_metrics(figures: MaintenanceFigures | None) -> Iterator[Metric]:
    """Table maintenance (jobs/runner/table_maintenance.py): runs by outcome, runs under way,
    seconds by step, and what the runs removed; every series present from the start."""
    runs = CounterMetricFamily(
        "embedscale_maintenance_runs",
        "Table maintenance runs ended (compaction, index refresh, version cleanup), by outcome",
        labels=["outcome"],
    )
    counts = figures.runs.counts() if figures is not None else {}
    for outcome in ("succeeded", "failed"):
        runs.add_metric([outcome], counts.get(outcome, 0))
    yield runs
    yield GaugeMetricFamily(
        "embedscale_maintenance_running",
        "Table maintenance runs under way",
        value=figures.running if figures is not None else 0,
    )
    seconds = CounterMetricFamily(
        "embedscale_maintenance_seconds",
        "Seconds table maintenance spent, by step: compaction, indexes, cleanup",
        labels=["step"],
    )
    spent = figures.seconds.counts() if figures is not None else {}
    for step in ("compaction", "indexes", "cleanup"):
        seconds.add_metric([step], spent.get(step, 0) / 1000)
    yield seconds
    removed = CounterMetricFamily(
        "embedscale_maintenance_removed",
        "What table maintenance removed: fragments merged away, versions, bytes on disk",
        labels=["what"],
    )
    gone = figures.removed.counts() if figures is not None else {}
    for what in ("fragments", "versions", "bytes"):
        removed.add_metric([what], gone.get(what, 0))
    yield removed


def gpu_metrics() -> Iterator[Metric]:
    """GPU busy (NVML's utilisation: the share of the last sample period a kernel ran) and
    memory from NVML, per GPU (engine.cluster.gpu_stats); nothing where pynvml or a GPU is missing.
    A
    GPU NVML cannot read (fallen off the bus, reset) reports embedscale_gpu_up 0 and no
    figures, one without a utilisation counter (a MIG slice) its memory alone; neither ever
    fails the scrape or hides the other GPUs."""
    readings = read_gpus()
    if not readings:
        return
    up = GaugeMetricFamily(GPU_UP, "Whether NVML could read the GPU (1) or not (0)", labels=["gpu"])
    busy = GaugeMetricFamily(
        GPU_BUSY, "GPU busy: percent of the last sample period a kernel ran", labels=["gpu"]
    )
    used = GaugeMetricFamily(GPU_MEMORY_USED, "GPU memory used", labels=["gpu"])
    total = GaugeMetricFamily(GPU_MEMORY_TOTAL, "GPU memory", labels=["gpu"])
    for g in readings:
        label = [str(g.index)]
        up.add_metric(label, int(g.up))
        if not g.up:
            continue
        if g.busy_percent is not None:
            busy.add_metric(label, g.busy_percent)
        if g.memory_used is not None and g.memory_total is not None:
            used.add_metric(label, g.memory_used)
            total.add_metric(label, g.memory_total)
    yield from (up, busy, used, total)


class Metrics:
    """The app's registry: the collector above; partition and job latency and jobs ended,
    fed by the runner's events; request latency (api/server/request_observer.py), rate-limit
    refusals (api/server/deps.py) and refusals at the door (api/server/request_gate.py), fed by the
    API."""

    def __init__(self, service: JobService, cluster: Cluster) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ServiceCollector(service, cluster))
        self.registry.register(EmbeddingCollector(service))  # POST /v1/embeddings
        self.partition_seconds = Histogram(
            "embedscale_partition_seconds",
            "Time to read, chunk, embed and write a partition",
            labelnames=["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.jobs_ended = Counter(
            "embedscale_jobs_ended",
            "Jobs that ended, by status and error_reason (quota_"
            "exhausted, partition_failed, commit_failed, start_failed, store_unavailable; '' "
            "if none)",
            labelnames=["status", "reason"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "embedscale_job_seconds",
            "Run time of ended jobs, from start to end",
            labelnames=["status"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "embedscale_http_request_seconds",
            "HTTP requests by method, route template and "
            "status; route 'unmatched' for paths no route serves",
            labelnames=["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "embedscale_rate_limited",
            "Requests refused (429) by a tenant's rate limit",
            labelnames=["tenant", "bucket"],
            registry=self.registry,
        )
        self.gate_refusals = Counter(
            "embedscale_gate_refusals",
            "Requests refused at the door, before their body was "
            "read (api/server/request_gate.py), by reason: missing_key, invalid_key, "
            "address_rate_limited, tenant_rate_limited, body_too_large",
            labelnames=["reason"],
            registry=self.registry,
        )
        self.page = MetricsPage(self.registry)  # GET /metrics, rendered at most once a second
        for status in TERMINAL:  # every series present from the start, so rate() sees a rise
            self.jobs_ended.labels(status.value, "")
        self._unsubscribe = service.bus.subscribe(None, self._on_event)

    def _on_event(self, event: dict) -> None:
        job = event.get("job", {})
        if event.get("type") == "progress" and "partition_seconds" in event:
            self.partition_seconds.labels(job["spec"].get("model", "")).observe(
                event["partition_seconds"]
            )
        elif event.get("type") == "status" and job.get("status") in _TERMINAL:
            # Each job publishes its terminal status once (the transitions table allows one).
            self.jobs_ended.labels(job["status"], job.get("error_reason") or "").inc()
            if job.get("started_at") and job.get("finished_at"):
                seconds = (
                    datetime.fromisoformat(job["finished_at"])
                    - datetime.fromisoformat(job["started_at"])
                ).total_seconds()
                self.job_seconds.labels(job["status"]).observe(max(0.0, seconds))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        method = method if method in _METHODS else "other"
        self.request_seconds.labels(method, route, str(status)).observe(seconds)

    def close(self) -> None:
        self._unsubscribe()
