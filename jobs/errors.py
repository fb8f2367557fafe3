"""Domain errors of the control plane; the API maps them to status codes, the CLI to one line."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from embedscale.engine.errors import EmbedscaleError


class InvalidFieldError(EmbedscaleError, ValueError):
    """A field of a request is wrong; `field` names it, `location` says where the request
    carries it (the body, or the query string of a GET)."""

    def __init__(self, field: str, message: str, location: str = "body") -> None:
        self.field, self.location = field, location
        super().__init__(message)


class NotFoundError(EmbedscaleError, LookupError):
    """No such job, tenant or table for this tenant (another tenant's things are not found)."""


class ConflictError(EmbedscaleError, RuntimeError):
    """The request does not fit the thing's state (cancel a finished job, create a duplicate)."""


class QuotaExceededError(EmbedscaleError, RuntimeError):
    """A job needs more chunks than the tenant has left today, counting those already promised
    to its queued and running jobs (`promised`)."""

    def __init__(
        self,
        tenant: str,
        needed: int,
        remaining: int,
        limit: int,
        resets_at: datetime,
        promised: int = 0,
    ) -> None:
        self.tenant, self.needed, self.remaining, self.limit = tenant, needed, remaining, limit
        self.resets_at, self.promised = resets_at, promised
        owed = (
            f", counting the {promised} promised to its queued and running jobs" if promised else ""
        )
        super().__init__(
            f"tenant '{tenant}' has {remaining} of {limit} chunks left today{owed}; this job "
            f"needs about {needed}; the quota resets at {resets_at.isoformat()}"
        )

    def figures(self) -> dict[str, Any]:
        return {
            "needed": self.needed,
            "remaining": self.remaining,
            "limit": self.limit,
            "promised": self.promised,
            "resets_at": self.resets_at.isoformat(),
        }


class StoreLockedError(EmbedscaleError, RuntimeError):
    """Another process owns the data directory's DuckDB file."""


class StoreVersionError(EmbedscaleError, RuntimeError):
    """The DuckDB file was written by a newer embedscale."""


class StoreDamagedError(EmbedscaleError, RuntimeError):
    """The DuckDB file cannot be read: truncated, emptied or overwritten."""


class StoreUnavailableError(EmbedscaleError, RuntimeError):
    """The DuckDB file cannot be written or read just now (a full disk, an I/O error); the
    store reopens it by itself once it can (jobs/store/guard.py). `reason` is short and names
    the cause plainly ("no space left on device"), fit for a tenant's job error."""

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class PartitionsNotDoneError(EmbedscaleError, RuntimeError):
    """A job was to succeed, but the store does not show every planned partition of it
    committed: the runner's own bookkeeping ran out of work too early. Nothing is ended."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} has partitions not recorded done; it is not ended")
