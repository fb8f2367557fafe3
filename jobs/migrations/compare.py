"""The comparison report a user reads before switching a table to its new generation: the same
queries searched in the active generation and in the other one, each with its own model.

- overlap: of the top k, the share of chunks (doc_id, chunk_index) both return, and the share of
  documents; 1.0 is the same results, whatever their order. Chunk overlap means most where the
  chunks were reused (one tokenizer); documents compare across rechunking too.
- scores: min / median / max of the top-1 score and of every top-k score, per generation
  (cosine similarity: two models' scales differ, so compare their spread, not their values).
- latency: p50 / p95 of each generation's searches, in milliseconds, the query's embedding
  included (each generation's first search is a warm-up, not timed: it loads its model).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from embedscale.engine.tables.search import Hit

MAX_QUERIES = 1000  # a report, not a benchmark: the queries run in the service's process
Search = Callable[[str], list[Hit]]


@dataclass(frozen=True, slots=True)
class Spread:
    """min / median / max of some figures (None where there were none)."""

    min: float | None
    median: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(None, None, None)
        return cls(float(min(values)), float(statistics.median(values)), float(max(values)))


@dataclass(frozen=True, slots=True)
class Side:
    """One generation's figures over the queries."""

    generation: int
    model: str
    top1_score: Spread
    topk_score: Spread
    latency_ms_p50: float
    latency_ms_p95: float


@dataclass(frozen=True, slots=True)
class Comparison:
    """The report: both generations on the same queries (`k` results each)."""

    table: str
    queries: int
    k: int
    chunk_overlap: float  # mean over the queries of |A & B| / |A|, chunks (doc_id, chunk_index)
    document_overlap: float  # the same, by doc_id (each document counted once)
    active: Side
    candidate: Side

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return float(ordered[rank])


def _side(generation: int, model: str, results: list[list[Hit]], times: list[float]) -> Side:
    return Side(
        generation,
        model,
        Spread.of([hits[0].score for hits in results if hits]),
        Spread.of([h.score for hits in results for h in hits]),
        round(percentile(times, 0.5) * 1000, 3),
        round(percentile(times, 0.95) * 1000, 3),
    )


def _timed(search: Search, queries: Sequence[str]) -> tuple[list[list[Hit]], list[float]]:
    search(queries[0])  # loads the generation's model: not a latency a user sees
    results, times = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(search(query))
        times.append(time.perf_counter() - started)
    return results, times


def _overlap(a: list[Hit], b: list[Hit], key: Callable[[Hit], object]) -> float:
    """The share of results both found (1.0: the same, in any order)."""
    found_a, found_b = {key(h) for h in a}, {key(h) for h in b}
    return len(found_a & found_b) / max(1, len(found_a), len(found_b))


def compare(
    table: str,
    queries: Sequence[str],
    k: int,
    active: tuple[int, str, Search],
    candidate: tuple[int, str, Search],
) -> Comparison:
    """Search `queries` in both generations (`(number, model, search)` each) and report."""
    a_results, a_times = _timed(active[2], queries)
    b_results, b_times = _timed(candidate[2], queries)
    pairs = list(zip(a_results, b_results))
    return Comparison(
        table,
        len(queries),
        k,
        round(
            statistics.fmean(_overlap(a, b, lambda h: (h.doc_id, h.chunk_index)) for a, b in pairs),
            4,
        ),
        round(statistics.fmean(_overlap(a, b, lambda h: h.doc_id) for a, b in pairs), 4),
        _side(active[0], active[1], a_results, a_times),
        _side(candidate[0], candidate[1], b_results, b_times),
    )
