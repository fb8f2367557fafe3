"""Quota guards: on admission (estimated chunks vs what is left today) and on each partition
(actual chunks vs what is left, before it is committed and charged)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, time, timedelta

from embedscale.engine.chunking.chunker import chunk_geometry
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.sources.partitions import InlineText, Partition
from embedscale.jobs.errors import QuotaExceededError
from embedscale.jobs.tenants.tiers import Tier

# Estimating chunks before reading anything: English wordpiece text runs about 4 characters a
# token; a chunk advances by chunking's own step (engine.chunking.chunker.chunk_geometry).
CHARS_PER_TOKEN = 4.0
# A model whose limits are known only once a worker loads it (a hub id): assume a BERT-like
# input of 256 tokens wrapped in [CLS] ... [SEP], as the default model's.
UNKNOWN_MODEL_MAX_TOKENS = 256
UNKNOWN_MODEL_SPECIAL_TOKENS = 2


def estimate_chunks(
    partitions: list[Partition],
    chunk_tokens: int | None,
    overlap_tokens: int | None,
    model: ModelInfo | None = None,
    chars_per_token: float = CHARS_PER_TOKEN,
) -> int:
    """About how many chunks a job's partitions make: at least one per file or text. `model`:
    the model's limits where known without loading it (engine.models.limits);
    `chars_per_token`: the job's text as its tokenizer reads it (jobs.token_density)."""
    max_tokens, special = (
        (model.max_tokens, model.special_tokens)
        if model is not None
        else (UNKNOWN_MODEL_MAX_TOKENS, UNKNOWN_MODEL_SPECIAL_TOKENS)
    )
    _, _, step = chunk_geometry(max_tokens, special, chunk_tokens, overlap_tokens)
    per_chunk = chars_per_token * max(1, step)  # a job's values are checked when it starts
    total = 0
    for part in partitions:
        for item in part.items:
            length = len(item.text) if isinstance(item, InlineText) else item.size_bytes
            total += max(1, math.ceil(length / per_chunk))
    return total


def resets_at(now: datetime | None = None) -> datetime:
    """When today's (UTC) quota starts afresh."""
    now = now or datetime.now(UTC)
    return datetime.combine(now.date() + timedelta(days=1), time(0), tzinfo=UTC)


def remaining_today(tier: Tier, used_today: int) -> int | None:
    """Chunks the tenant may still embed today; None when unlimited."""
    if tier.daily_chunks is None:
        return None
    return max(0, tier.daily_chunks - used_today)


def check_admission(
    tenant: str, tier: Tier, used_today: int, needed: int, promised: int = 0
) -> None:
    """Refuse a job whose estimate does not fit what is left today once the chunks already
    promised to the tenant's queued and running jobs are counted (jobs/store/promises.py), with the
    figures."""
    if tier.daily_chunks is None:  # unlimited
        return
    remaining = max(0, tier.daily_chunks - used_today - promised)
    if needed > remaining:
        raise QuotaExceededError(
            tenant, needed, remaining, tier.daily_chunks, resets_at(), promised
        )


def partition_fits(tier: Tier, used_today: int, chunks: int) -> bool:
    """Whether a finished partition's chunks may be committed and charged."""
    remaining = remaining_today(tier, used_today)
    return remaining is None or chunks <= remaining
