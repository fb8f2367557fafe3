"""Tiers: daily chunk quotas, concurrent-job limits, fair-share weights, request rates."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from embedscale.jobs.errors import InvalidFieldError

DEFAULT_TIERS_FILE = Path(__file__).with_name("tiers.yaml")
# A tier that names no reads_per_minute reads this many times its requests_per_minute: reads
# cost a fraction of a submission or a search (a job's status from memory, a page of jobs).
READS_PER_REQUEST = 10


@dataclass(frozen=True, slots=True)
class Tier:
    """The limits of one tier. None means unlimited."""

    name: str
    daily_chunks: int | None
    max_concurrent_jobs: int | None
    weight: float = 1.0
    # Job creations, searches, embedding requests and schedule creations: each a bucket of
    # its own, of this many a minute.
    requests_per_minute: int | None = None
    # Everything else a tenant asks (job status and lists, tables, usage, cancels, progress
    # sockets): one shared bucket; a page of jobs costs a read per 10 jobs it may hold.
    reads_per_minute: int | None = None


def load_tiers(path: str | Path | None = None) -> dict[str, Tier]:
    """Tiers from a YAML file (default: jobs/tenants/tiers.yaml); malformed entries are an error."""
    path = Path(path) if path else DEFAULT_TIERS_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise InvalidFieldError("tiers", f"cannot read tiers file {path}: {exc.strerror}") from None
    allowed = {f.name for f in fields(Tier)} - {"name"}
    tiers: dict[str, Tier] = {}
    for name, entry in (data.get("tiers") or {}).items():
        unknown = set(entry or {}) - allowed
        if unknown:
            raise InvalidFieldError(
                "tiers", f"tier '{name}' in {path}: unknown keys {sorted(unknown)}"
            )
        entry = dict(entry or {})
        if "reads_per_minute" not in entry and entry.get("requests_per_minute") is not None:
            entry["reads_per_minute"] = READS_PER_REQUEST * entry["requests_per_minute"]
        tier = Tier(name=name, **entry)
        if tier.weight <= 0:
            raise InvalidFieldError("tiers", f"tier '{name}': weight must be positive")
        tiers[name] = tier
    if not tiers:
        raise InvalidFieldError("tiers", f"{path} defines no tiers")
    return tiers


def with_overrides(tier: Tier, daily_chunks: int | None, max_concurrent_jobs: int | None) -> Tier:
    """A tenant's effective tier: its own overrides where set."""
    return dataclasses.replace(
        tier,
        daily_chunks=tier.daily_chunks if daily_chunks is None else daily_chunks,
        max_concurrent_jobs=(
            tier.max_concurrent_jobs if max_concurrent_jobs is None else max_concurrent_jobs
        ),
    )
