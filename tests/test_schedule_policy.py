"""The schedules' pure policy (jobs/policies/schedules.py): cron and time-zone checks, the next
slot in
a zone (across DST), and what a due slot becomes. No cluster, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.policies.schedules import (
    Action,
    ScheduleRecord,
    check_cron,
    check_timezone,
    decide,
    next_slot,
)


@pytest.mark.parametrize(
    "expression,expected",
    [
        ("*/5 * * * *", "*/5 * * * *"),
        ("  0   2 * *  mon-fri ", "0 2 * * mon-fri"),
        ("@daily", "@daily"),
    ],
)
def test_cron_accepted(expression, expected):
    assert check_cron(expression) == expected


@pytest.mark.parametrize(
    "expression,says",
    [
        ("61 * * * *", "out of range"),
        ("* * *", "give five fields"),
        ("* * * * * *", "give five fields"),  # croniter would read seconds: runs are minutes apart
        ("", "empty"),
        ("a b c d e", "invalid cron expression"),
        ("0 0 30 2 *", "names no date that exists"),
        ("@reboot", "invalid cron expression"),
        (5, "empty"),
    ],
)
def test_cron_refused_names_the_field(expression, says):
    with pytest.raises(InvalidFieldError) as refused:
        check_cron(expression)
    assert refused.value.field == "cron" and says in str(refused.value)


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/New_York"])
def test_timezone_accepted(name):
    assert check_timezone(name) == name


@pytest.mark.parametrize(
    "name",
    ["Mars/Base", "", "../../etc/passwd", "/etc/localtime", "Europe/Berlin\x00", "x" * 65, None],
)
def test_timezone_refused_names_the_field(name):
    with pytest.raises(InvalidFieldError) as refused:
        check_timezone(name)
    assert refused.value.field == "timezone" and "unknown time zone" in str(refused.value)


def test_next_slot_is_strictly_after_and_in_utc():
    at = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert next_slot("0 * * * *", "UTC", at) == datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    assert next_slot("0 * * * *", "UTC", at - timedelta(seconds=1)) == at
    assert next_slot("0 * * * *", "UTC", at).tzinfo == UTC


def test_next_slot_reads_the_cron_in_its_zone():
    # 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer.
    winter = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)
    summer = datetime(2026, 7, 6, 0, 0, tzinfo=UTC)
    assert next_slot("0 9 * * *", "Europe/Berlin", winter) == winter.replace(hour=8)
    assert next_slot("0 9 * * *", "Europe/Berlin", summer) == summer.replace(hour=7)


def test_a_daily_slot_in_the_repeated_hour_fires_once():
    # Clocks go back at 03:00 CEST on 2026-10-25: 02:30 happens twice (00:30 and 01:30 UTC).
    before = datetime(2026, 10, 24, 12, 0, tzinfo=UTC)
    first = next_slot("30 2 * * *", "Europe/Berlin", before)
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert next_slot("30 2 * * *", "Europe/Berlin", first) == datetime(
        2026, 10, 26, 1, 30, tzinfo=UTC
    )


def test_an_hourly_schedule_across_the_change_has_one_slot_per_wall_clock_hour():
    at, slots = datetime(2026, 10, 24, 22, 30, tzinfo=UTC), []
    for _ in range(4):
        at = next_slot("0 * * * *", "Europe/Berlin", at)
        slots.append(at.hour)
    # Local 01:00, 02:00 (CEST), [02:00 CET repeated: no slot], 03:00, 04:00 (CET).
    assert slots == [23, 0, 2, 3]


def test_a_slot_skipped_by_spring_forward_runs_when_clocks_resume():
    # 2026-03-29: 02:00 -> 03:00 in Berlin; the 02:30 slot runs at 03:00 CEST (01:00 UTC).
    slot = next_slot("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert slot == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_decide():
    slot = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert decide(slot, slot - timedelta(seconds=1), run_active=False) == Action.WAIT
    assert decide(slot, slot, run_active=False) == Action.FIRE
    assert decide(slot, slot + timedelta(days=3), run_active=False) == Action.FIRE
    assert decide(slot, slot, run_active=True) == Action.SKIP
    assert decide(None, slot, run_active=False) == Action.WAIT  # paused


def test_missed_slots_collapse_into_one_run():
    # Down for a day on a five-minute schedule: the overdue slot fires, and the next slot is
    # the first after now, not the 287 slots in between.
    cron, last_slot = "*/5 * * * *", datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    now = last_slot + timedelta(days=1, seconds=42)
    assert decide(last_slot, now, run_active=False) == Action.FIRE
    assert next_slot(cron, "UTC", now) == datetime(2026, 1, 2, 10, 5, tzinfo=UTC)


def test_record_shows_inline_texts_as_a_count():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    record = ScheduleRecord(
        id="s",
        tenant="t",
        cron="@daily",
        timezone="UTC",
        enabled=True,
        spec={"table": "x", "texts": ["a", "b"], "ids": ["1", "2"]},
        created_at=at,
        next_run_at=at,
    )
    data = record.to_dict()
    assert data["template"] == {"table": "x", "texts": 2} and "spec" not in data
    assert data["created_at"] == data["next_run_at"] == "2026-01-01T00:00:00+00:00"
