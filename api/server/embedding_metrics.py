"""Prometheus figures of POST /v1/embeddings: requests, their inputs, and the shared model calls
(cluster tasks) that carried them; inputs per call is how well requests are batched."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from embedscale.jobs.service import JobService


class EmbeddingCollector:
    """Reads the service's embedding batcher at scrape time (zeros before a cluster is attached)."""

    def __init__(self, service: JobService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        embeddings = self.service.embeddings
        counts = embeddings.batcher.counts if embeddings is not None else None
        for name, text, value in (
            (
                "embedscale_embedding_requests",
                "POST /v1/embeddings requests sent to the cluster",
                counts.requests if counts else 0,
            ),
            (
                "embedscale_embedding_inputs",
                "Texts of those requests",
                counts.inputs if counts else 0,
            ),
            (
                "embedscale_embedding_model_calls",
                "Cluster tasks (shared model calls) that embedded them",
                counts.tasks if counts else 0,
            ),
        ):
            yield CounterMetricFamily(name, text, value=value)
