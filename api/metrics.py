"""Prometheus metrics: jobs by status, chunks and tokens embedded by tenant and model, partition
latency, work waiting, workers, and GPU utilisation and memory where there are GPUs."""
from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.cluster import Cluster
from jobs.service import JobService

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ServiceCollector:
    """Reads the figures from the job service and the cluster at scrape time."""

    def __init__(self, service: JobService, cluster: Cluster) -> None:
        self.service, self.cluster = service, cluster

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("embedscale_jobs", "Jobs by status", labels=["status"])
        for status, count in self.service.job_counts().items():
            jobs.add_metric([status.value], count)
        yield jobs
        chunks = CounterMetricFamily("embedscale_chunks_embedded", "Chunks embedded",
                                     labels=["tenant", "model"])
        tokens = CounterMetricFamily("embedscale_tokens_embedded", "Tokens embedded",
                                     labels=["tenant", "model"])
        for tenant, model, n_chunks, n_tokens in self.service.embedded_totals():
            chunks.add_metric([tenant, model or ""], n_chunks or 0)
            tokens.add_metric([tenant, model or ""], n_tokens or 0)
        yield chunks
        yield tokens
        yield GaugeMetricFamily("embedscale_queue_depth", "Partitions of queued and running "
                                "jobs not yet done", value=self.service.pending_partitions())
        try:
            info = self.cluster.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # scheduler gone: report no workers rather than fail the scrape
            info = {}
        yield GaugeMetricFamily("embedscale_workers", "Dask workers", value=len(info))
        yield GaugeMetricFamily("embedscale_worker_threads", "Dask worker threads",
                                value=sum(w.get("nthreads", 1) for w in info.values()))
        yield from gpu_metrics()


def gpu_metrics() -> Iterator[Metric]:
    """GPU utilisation and memory from NVML; nothing where pynvml or a GPU is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return
    try:
        utilisation = GaugeMetricFamily("embedscale_gpu_utilization_percent",
                                        "GPU utilisation", labels=["gpu"])
        used = GaugeMetricFamily("embedscale_gpu_memory_used_bytes", "GPU memory used",
                                 labels=["gpu"])
        total = GaugeMetricFamily("embedscale_gpu_memory_total_bytes", "GPU memory",
                                  labels=["gpu"])
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            utilisation.add_metric([str(i)], pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            used.add_metric([str(i)], memory.used)
            total.add_metric([str(i)], memory.total)
        yield utilisation
        yield used
        yield total
    finally:
        pynvml.nvmlShutdown()


class Metrics:
    """The app's registry: the collector above and the partition latency histogram, fed by
    the runner's progress events."""

    def __init__(self, service: JobService, cluster: Cluster) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ServiceCollector(service, cluster))
        self.partition_seconds = Histogram(
            "embedscale_partition_seconds", "Time to read, chunk, embed and write a partition",
            labelnames=["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._unsubscribe = service.bus.subscribe(None, self._on_event)

    def _on_event(self, event: dict) -> None:
        if event.get("type") == "progress" and "partition_seconds" in event:
            model = event["job"]["spec"].get("model", "")
            self.partition_seconds.labels(model).observe(event["partition_seconds"])

    def close(self) -> None:
        self._unsubscribe()
