"""Tiers: daily chunk quotas, concurrent-job limits, fair-share weights, request rates."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

from pydantic import ConfigDict, Field, StrictInt, StrictStr

from embedscale.engine.config_files import ConfigFileError, read_mapping, unknown_keys, validate
from embedscale.jobs.errors import InvalidFieldError

DEFAULT_TIERS_FILE = Path(__file__).with_name("tiers.yaml")
# A tier that names no reads_per_minute reads this many times its requests_per_minute: reads
# cost a fraction of a submission or a search (a job's status from memory, a page of jobs).
READS_PER_REQUEST = 10
# Counts in a tiers file are whole numbers, strictly: YAML reads 1e4 as text and 10000.0 as a
# float, and either would otherwise reach the quota arithmetic.
Count = Annotated[StrictInt, Field(ge=0)]
PerMinute = Annotated[StrictInt, Field(ge=1)]


@dataclass(frozen=True, slots=True)
class Tier:
    """The limits of one tier. None means unlimited. The types are what a tiers file is checked
    against when it is loaded (load_tiers)."""

    # A tiers file's unknown keys are refused.
    __pydantic_config__ = ConfigDict(extra="forbid")

    name: StrictStr
    daily_chunks: Count | None
    max_concurrent_jobs: Annotated[StrictInt, Field(ge=1)] | None
    weight: Annotated[float, Field(gt=0, strict=True)] = 1.0
    # Job creations, searches, embedding requests and schedule creations: each a bucket of
    # its own, of this many a minute.
    requests_per_minute: PerMinute | None = None
    # Everything else a tenant asks (job status and lists, tables, usage, cancels, progress
    # sockets): one shared bucket; a page of jobs costs a read per 10 jobs it may hold.
    reads_per_minute: PerMinute | None = None


def load_tiers(path: str | Path | None = None) -> dict[str, Tier]:
    """Tiers from a YAML file (default: jobs/tenants/tiers.yaml), each checked against Tier's
    types: a malformed entry is an error naming the file, the tier and the field."""
    path = Path(path) if path else DEFAULT_TIERS_FILE
    try:
        data = read_mapping(path, "tiers file")
    except ConfigFileError as exc:
        raise InvalidFieldError("tiers", str(exc)) from None
    if unknown_keys(data, {"tiers"}):
        raise InvalidFieldError(
            "tiers",
            f"{path}: unknown keys {unknown_keys(data, {'tiers'})}; put tiers under 'tiers:'",
        )
    entries = data.get("tiers") or {}
    if not isinstance(entries, dict):
        raise InvalidFieldError("tiers", f"{path}: 'tiers' must map each tier's name to its limits")
    allowed = {f.name for f in fields(Tier)} - {"name"}
    tiers: dict[str, Tier] = {}
    for name, entry in entries.items():
        entry = {} if entry is None else entry
        where = f"tier {name!r} in {path}"
        if not isinstance(entry, dict):
            raise InvalidFieldError("tiers", f"{where}: expected its limits, not {entry!r}")
        unknown = unknown_keys(entry, allowed)
        if unknown:
            raise InvalidFieldError(
                "tiers", f"{where}: unknown keys {unknown}; known: {sorted(allowed)}"
            )
        try:
            tier = validate(Tier, {**entry, "name": name})
        except ValueError as exc:
            raise InvalidFieldError("tiers", f"{where}: {exc}") from None
        if "reads_per_minute" not in entry and tier.requests_per_minute is not None:
            tier = dataclasses.replace(
                tier, reads_per_minute=READS_PER_REQUEST * tier.requests_per_minute
            )
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
