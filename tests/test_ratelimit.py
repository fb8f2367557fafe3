"""Token buckets: a minute's worth each, costs, looking without taking, a bounded number; and the
tiers that size them (reads_per_minute, derived where a tiers file names none)."""

from __future__ import annotations

from embedscale.api.server.errors import RateLimitedError
from embedscale.api.server.ratelimit import RateLimiter
from embedscale.jobs.tenants.tiers import READS_PER_REQUEST, load_tiers, with_overrides


def test_a_bucket_holds_a_minute_and_costs_are_taken_whole():
    limiter = RateLimiter()
    assert limiter.acquire("acme", "reads", 20, cost=10) is None
    assert limiter.check("acme", "reads", 20, cost=10) is None  # looking takes nothing
    assert limiter.acquire("acme", "reads", 20, cost=10) is None
    wait = limiter.acquire("acme", "reads", 20, cost=10)
    assert wait is not None and 25 < wait <= 30  # 10 tokens at one every 3 s
    assert limiter.acquire("acme", "reads", 20, cost=1) is not None  # nothing taken above
    assert limiter.acquire("beta", "reads", 20) is None  # another tenant's bucket is whole
    assert limiter.acquire("acme", "search", 20) is None  # and another bucket
    assert limiter.acquire("acme", "reads", None, cost=1000) is None  # no limit
    assert limiter.acquire("acme", "huge", 5, cost=50) is None  # at most a minute's worth


def test_buckets_are_bounded_in_number():
    limiter = RateLimiter(max_buckets=3)
    for owner in ("a", "b", "c", "d"):
        limiter.acquire(owner, "x", 1)
    assert len(limiter._buckets) == 3
    assert limiter.acquire("a", "x", 1) is None  # dropped: whole again, never stricter


def test_the_refusal_names_the_limit():
    error = RateLimitedError("acme", "reads", 2.2, 1200)
    assert (
        str(error) == "tenant 'acme' is over its rate limit for reads (1200 a minute); retry in 3 s"
    )


def test_reads_are_sized_by_the_tier(tmp_path):
    tiers = load_tiers()
    assert [tiers[t].reads_per_minute for t in ("free", "premium", "enterprise")] == [
        1200,
        6000,
        30000,
    ]
    assert tiers["unlimited"].reads_per_minute is None
    assert with_overrides(tiers["free"], 5, None).reads_per_minute == 1200
    older = tmp_path / "tiers.yaml"  # a tiers file written before reads_per_minute
    older.write_text(
        "tiers:\n  basic: {daily_chunks: 10, max_concurrent_jobs: 1, "
        "requests_per_minute: 7}\n  open: {daily_chunks: null, "
        "max_concurrent_jobs: null}\n"
    )
    loaded = load_tiers(older)
    assert loaded["basic"].reads_per_minute == 7 * READS_PER_REQUEST
    assert loaded["open"].reads_per_minute is None
