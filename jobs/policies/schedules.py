"""Schedules as data and policy: a cron expression in a time zone, the slots it names, and what
a due slot becomes. Pure code (no I/O, no clock of its own): the store persists and claims
slots (jobs/store/schedules.py), the firing loop applies this policy (jobs/schedules.py).

A slot is one instant the cron expression names in its zone. The rules:
- A schedule's next slot is always the first one strictly after a time the loop saw, so the
  slots it missed while the service was down collapse into one run at start-up.
- At most one run of a schedule is active: a due slot while an earlier run is still unfinished
  is skipped (and counted), not queued behind it.
- A schedule fires once per wall-clock time of its zone: when clocks go back, the repeated
  hour's second occurrence of a time is not a slot (croniter would name both).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from embedscale.jobs.errors import InvalidFieldError

MAX_CRON_LENGTH = 256
# The default of max_schedules_per_tenant (a setting of `serve`): each schedule is read on
# every tick of the firing loop, so no tenant may fill it.
MAX_SCHEDULES_PER_TENANT = 100
MAX_TIMEZONE_LENGTH = 64
# Slots a search may step over (repeated wall-clock times) before it gives up: a valid
# expression finds its next slot within a few steps.
_MAX_STEPS = 16


class Outcome(enum.StrEnum):
    """What became of a schedule's latest due slot (or run-now request)."""

    CLAIMED = "claimed"  # slot claimed, its job not yet recorded (in doubt after a crash)
    FIRED = "fired"  # its job was submitted (visible in the job list with the schedule's id)
    SKIPPED = "skipped"  # the previous run was still active: no job for this slot
    REFUSED = "refused"  # the job was refused (quota, a source gone or no longer allowed)


class Action(enum.StrEnum):
    """What the firing loop does with a schedule at a given time."""

    WAIT = "wait"  # not due yet (or paused)
    FIRE = "fire"
    SKIP = "skip"


@dataclass
class ScheduleRecord:
    """A schedule as stored: when it fires, the job it submits, and what its runs did."""

    id: str
    tenant: str
    cron: str
    timezone: str
    spec: dict[str, Any]  # the job template: a JobSpec as JSON, validated when created
    enabled: bool
    created_at: datetime
    updated_at: datetime | None = None
    next_run_at: datetime | None = None  # None while paused
    last_run_at: datetime | None = None  # when the latest run's job was submitted
    last_job_id: str | None = None
    last_outcome: str | None = None  # an Outcome, None before the first due slot
    last_outcome_at: datetime | None = None
    last_error: str | None = None  # why the latest run was refused
    runs_fired: int = 0
    runs_skipped: int = 0
    runs_refused: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view for the API and the CLI's --json; inline texts shown as a count."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        template = dict(self.spec)
        if template.get("texts") is not None:
            template["texts"] = len(template["texts"])
            template.pop("metadata", None)
            template.pop("ids", None)
        data["template"] = template
        del data["spec"]
        return data


def check_cron(expression: object) -> str:
    """`expression` if it is a five-field cron expression (or an alias such as @daily) that
    names at least one future time; else InvalidFieldError("cron")."""
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidFieldError(
            "cron",
            "cron expression is empty: give five fields, e.g. '0 2 * * *' (every day at 02:00)",
        )
    expression = " ".join(expression.split())
    if len(expression) > MAX_CRON_LENGTH:
        raise InvalidFieldError(
            "cron", f"cron expression is longer than {MAX_CRON_LENGTH} characters"
        )
    # croniter also reads a sixth (seconds) and seventh (year) field; runs are minutes apart.
    if not expression.startswith("@") and len(expression.split(" ")) != 5:
        raise InvalidFieldError(
            "cron",
            f"invalid cron expression {expression!r}: give five "
            "fields (minute hour day-of-month month day-of-week)",
        )
    try:
        next_slot(expression, "UTC", datetime.now(UTC))
    except (CroniterError, ValueError, KeyError) as exc:
        raise InvalidFieldError(
            "cron", f"invalid cron expression {expression!r}: {_reason(exc)}"
        ) from None
    return expression


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if "failed to find next date" in text:
        return "it names no date that exists (e.g. 30 February)"
    return text or type(exc).__name__


def check_timezone(name: object) -> str:
    """`name` if it is an IANA time zone (Europe/Berlin, UTC); else
    InvalidFieldError("timezone")."""
    if not isinstance(name, str) or not name or len(name) > MAX_TIMEZONE_LENGTH or "\x00" in name:
        raise InvalidFieldError(
            "timezone",
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'",
        )
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # ValueError: a path, not a key
        raise InvalidFieldError(
            "timezone",
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'",
        ) from None
    return name


def next_slot(cron: str, timezone: str, after: datetime) -> datetime:
    """The first slot of `cron` in `timezone` strictly after `after` (an aware time), in UTC.
    The second occurrence of a wall-clock time (clocks going back) is no slot."""
    zone = ZoneInfo(timezone)
    cursor = croniter(cron, after.astimezone(zone))
    for _ in range(_MAX_STEPS):
        slot = cursor.get_next(datetime)
        if not _repeated(slot, zone):
            return slot.astimezone(UTC)
    raise ValueError(f"no slot of {cron!r} within {_MAX_STEPS} steps after {after}")


def _repeated(slot: datetime, zone: ZoneInfo) -> bool:
    # A wall-clock time that also exists earlier with the summer offset (fold=0) is the repeat.
    first = slot.replace(tzinfo=None).replace(tzinfo=zone, fold=0)
    return first.utcoffset() != slot.utcoffset()


def decide(next_run_at: datetime | None, now: datetime, run_active: bool) -> Action:
    """What to do with a schedule whose next slot is `next_run_at` (None: paused) at `now`."""
    if next_run_at is None or now < next_run_at:
        return Action.WAIT
    return Action.SKIP if run_active else Action.FIRE
