"""The HTTP provider's policies as pure functions: batches, retry delays, the circuit breaker,
and what a 200 answer must hold (no network: answers are built in the test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import numpy as np
import pytest

from embedscale.engine.errors import ProviderError
from embedscale.engine.models.http_policy import (
    RETRYABLE_STATUSES,
    CircuitBreaker,
    is_retryable,
    parse_retry_after,
    plan_batches,
    retry_delay,
)
from embedscale.engine.models.openai_http import parse_embeddings


def test_batches_keep_order_and_respect_both_budgets():
    counts = [100, 200, 300, 50, 50, 50, 400, 10]
    batches = plan_batches(counts, token_budget=500, max_inputs=3)
    assert batches == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert [i for b in batches for i in b] == list(range(len(counts)))
    for batch in batches:
        assert len(batch) <= 3
        assert sum(counts[i] for i in batch) <= 500


def test_a_chunk_over_the_budget_goes_alone_never_dropped():
    assert plan_batches([10, 900, 10], token_budget=100, max_inputs=8) == [[0], [1], [2]]
    assert plan_batches([], token_budget=100, max_inputs=8) == []
    assert plan_batches([1] * 5, token_budget=100, max_inputs=2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="max_inputs=0"):
        plan_batches([1], token_budget=10, max_inputs=0)


def test_retry_after_seconds_and_http_dates():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0.5 ", now) == 0.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert (
        parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    )  # a date gone by: no wait
    assert parse_retry_after("-3", now) == 0.0
    for unusable in (None, "", "soon", "Mon, 99 Foo"):
        assert parse_retry_after(unusable, now) is None


def test_retry_delay_honours_retry_after_within_the_cap_else_doubles():
    assert [retry_delay(a, None, base=0.5, cap=30) for a in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert retry_delay(10, None, base=0.5, cap=30) == 30  # capped
    assert retry_delay(0, 12.0, base=0.5, cap=30) == 12.0  # the server's word over backoff
    assert retry_delay(3, 0.0, base=0.5, cap=30) == 0.0
    assert retry_delay(0, 86_400.0, base=0.5, cap=30) == 30  # a hostile header is capped


def test_retryable_statuses():
    assert {429, 500, 502, 503, 504} <= RETRYABLE_STATUSES
    assert not {200, 400, 401, 403, 404, 422} & RETRYABLE_STATUSES
    assert is_retryable(429) and is_retryable(503) and not is_retryable(401)
    # The server's own word wins: a spent daily quota is a 429 not worth retrying.
    assert not is_retryable(429, "false") and not is_retryable(503, " False ")
    assert is_retryable(400, "true") and is_retryable(429, "maybe")


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown():
    breaker = CircuitBreaker(threshold=3, cooldown=10.0)
    for t in range(2):
        assert breaker.allows(t)
        breaker.record(False, t)
    breaker.record(True, 2.0)  # a success in between resets the count
    assert breaker.failures == 0
    for t in (3.0, 4.0, 5.0):
        assert breaker.allows(t)
        breaker.record(False, t)
    assert not breaker.allows(5.0) and not breaker.allows(14.9)  # open
    assert breaker.allows(15.0)  # half-open: one call goes out
    breaker.record(False, 15.0)  # ... and fails: open again from now
    assert not breaker.allows(24.9) and breaker.allows(25.0)
    breaker.record(True, 25.0)
    assert breaker.allows(25.0) and breaker.failures == 0 and breaker.opened_at is None


def answer(data: list[dict], status: int = 200) -> httpx.Response:
    return httpx.Response(status, json={"object": "list", "data": data})


def test_an_answer_must_give_one_vector_per_input_in_index_order():
    url = "http://h/v1/embeddings"
    got = parse_embeddings(
        answer([{"index": 1, "embedding": [3.0, 4.0]}, {"index": 0, "embedding": [1.0, 2.0]}]),
        2,
        url,
    )
    assert got.dtype == np.float32 and got.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    for data, count, message in [
        ([{"index": 0, "embedding": [1.0]}], 2, "returned 1 vectors for 2 inputs"),
        (
            [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}],
            2,
            "returned 2 vectors for 2 inputs",
        ),  # an index twice: one input has no vector
        (
            [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}],
            2,
            "unequal or unknown length",
        ),
        ([{"index": 0, "embedding": "AAAA"}], 1, "unequal or unknown length"),
        ([{"index": 0, "embedding": ["x"]}], 1, "not numbers"),
        ([{"index": 0, "embedding": []}], 1, "unequal or unknown length"),
        ([{"vector": [1.0]}], 1, "without an OpenAI embeddings body"),
    ]:
        with pytest.raises(ProviderError, match=message) as err:
            parse_embeddings(answer(data), count, url)
        assert url in str(err.value)
    with pytest.raises(ProviderError, match="without an OpenAI embeddings body"):
        parse_embeddings(httpx.Response(200, text="<html>"), 1, url)
