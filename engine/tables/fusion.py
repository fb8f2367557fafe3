"""Reciprocal rank fusion: one ranking made of several (hybrid search's vector and BM25 legs).

Each ranking gives the item at rank r (1 for the best) 1 / (RRF_K + r); an item's score is the
sum over the rankings it appears in (Cormack, Clarke and Buettcher, SIGIR 2009). Ranks, not
scores, are fused: a cosine similarity and a BM25 score have no common scale. Ours rather than
lancedb's RRFReranker: a pure function of ids, testable alone, fused on the chunk's own `id`
(stable across compactions, unlike Lance's row ids), with a stated order for ties.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

RRF_K = 60  # the paper's constant: a rank-1 item scores 1/61; it damps the top ranks' weight

Key = TypeVar("Key", bound=Hashable)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Key]], k: int = RRF_K
) -> list[tuple[Key, float]]:
    """(item, fused score) of every item of `rankings` (each best first), best first. Ties go
    to the item with the better best rank, then to the earlier ranking's item."""
    scores: dict[Key, float] = {}
    best: dict[Key, tuple[int, int]] = {}  # (best rank, ranking it came from)
    for which, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best[item] = min(best.get(item, (rank, which)), (rank, which))
    return sorted(scores.items(), key=lambda pair: (-pair[1], best[pair[0]]))
