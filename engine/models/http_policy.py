"""How the HTTP provider talks to an endpoint, as pure functions: which chunks share a request,
how long to wait before a retry, and when to stop calling an endpoint that keeps failing.

No I/O here (time is passed in), so each rule is tested without a network or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Statuses worth another try: rate limited, or the server's own trouble. Anything else (400,
# 401, 404, ...) will answer the same again.
RETRYABLE_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


def is_retryable(status: int, should_retry: str | None = None) -> bool:
    """Whether an answer with `status` is worth another try. A server's `x-should-retry`
    header (OpenAI's convention, which its own client follows) overrides the status: a spent
    daily quota is a 429 that no retry within the hour can help."""
    if should_retry is not None and should_retry.strip().lower() in ("true", "false"):
        return should_retry.strip().lower() == "true"
    return status in RETRYABLE_STATUSES


def plan_batches(token_counts: list[int], token_budget: int, max_inputs: int) -> list[list[int]]:
    """Indices of the chunks, grouped into requests of at most `max_inputs` inputs and at most
    `token_budget` tokens, in order; a chunk larger than the budget goes alone (the chunker
    already keeps each chunk within the model's limit, so it is never split or dropped)."""
    if token_budget < 1 or max_inputs < 1:
        raise ValueError(f"token_budget={token_budget} and max_inputs={max_inputs} must be >= 1")
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i, count in enumerate(token_counts):
        if current and (tokens + count > token_budget or len(current) >= max_inputs):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += count
    if current:
        batches.append(current)
    return batches


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None when
    absent or unreadable. A date in the past means no wait."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_delay(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (0 for the first): the server's
    `Retry-After` when it gave one (it knows its own load; capped so that a hostile or broken
    header cannot park a worker for hours), else exponential backoff base * 2**attempt."""
    if retry_after is not None:
        return min(retry_after, cap)
    return min(base * (2**attempt), cap)


@dataclass
class CircuitBreaker:
    """Consecutive failures of one endpoint, seen from one worker process. After `threshold`
    failures in a row it opens: calls are refused at once for `cooldown` seconds (the
    partition fails and the runner's own retry and backoff take over), then calls go out again
    (half-open): the first success closes the breaker, the first failure opens it again."""

    threshold: int = 5
    cooldown: float = 30.0
    failures: int = 0
    opened_at: float | None = None

    def allows(self, now: float) -> bool:
        """Whether a call may go out at `now`."""
        return self.opened_at is None or now - self.opened_at >= self.cooldown

    def record(self, ok: bool, now: float) -> None:
        """The outcome of a call that went out at `now`."""
        if ok:
            self.failures, self.opened_at = 0, None
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = now
