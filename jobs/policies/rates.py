"""A job's rates and time to finish, in chunks (not documents): pure arithmetic on its counts.

Documents differ in length by orders of magnitude, chunks far less, so chunks are the unit the
model's time follows. An estimate nobody can stand behind is `None`, never a made-up number:
nothing done yet (no rate), or nothing known to remain.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rates:
    """Throughput over the job's run so far, the chunks it will make in all and the seconds it
    still needs, each where known."""

    chunks_per_s: float
    tokens_per_s: float
    eta_seconds: float | None
    expected_chunks: int | None = None


def expected_chunks(
    estimated: int, done: int, partitions_done: int, partitions_total: int
) -> int | None:
    """The chunks the job will have made in all, as well as can be told now.

    Admission's estimate (from bytes) until the job outgrows it; then the chunks per finished
    partition so far, times the partitions. `None` when neither says more remain.
    """
    if partitions_total and partitions_done >= partitions_total:
        return done  # every partition in: whatever the estimate said, nothing is left
    if done < estimated:
        return estimated
    if 0 < partitions_done < partitions_total:
        return max(done, round(done * partitions_total / partitions_done))
    return None


def job_rates(
    chunks_done: int,
    tokens_done: int,
    seconds: float | None,
    *,
    running: bool,
    estimated_chunks: int,
    partitions_done: int,
    partitions_total: int,
) -> Rates:
    """Rates over `seconds` of run time, the chunks expected in all (what a progress bar is
    as long as), and the ETA of a running job at its rate so far."""
    total = expected_chunks(estimated_chunks, chunks_done, partitions_done, partitions_total)
    if not seconds or seconds <= 0:
        return Rates(0.0, 0.0, None, total)
    chunks_per_s = chunks_done / seconds
    eta = None
    if running and chunks_done > 0 and total is not None and total > chunks_done:
        eta = (total - chunks_done) / chunks_per_s
    return Rates(chunks_per_s, tokens_done / seconds, eta, total)
