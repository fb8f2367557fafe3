"""Schedules as the store keeps them, and the claim that makes each slot fire once.

A due slot is claimed in one transaction: a compare-and-set on the schedule's `next_run_at`
moves it to the next slot and records the outcome (`claimed` with the id the run's job will
have, or `skipped`). Whoever's claim fails lost the slot to another. A crash after the claim
leaves `claimed` and the job id behind; the firing loop finishes such a claim once (the job is
inserted under that id, or found already there), so a slot never runs twice, nor not at all.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb

from embedscale.jobs.errors import ConflictError, NotFoundError
from embedscale.jobs.policies.schedules import Action, Outcome, ScheduleRecord, decide, next_slot
from embedscale.jobs.states import UNFINISHED
from embedscale.jobs.store.connection import Connected
from embedscale.jobs.store.rows import only_row

SCHEDULE_COLUMNS = [f.name for f in dataclasses.fields(ScheduleRecord)]
_SELECT = f"SELECT {', '.join(SCHEDULE_COLUMNS)} FROM schedules"
_RETURNING = f"RETURNING {', '.join(SCHEDULE_COLUMNS)}"
# A run is active while its job is unfinished, or while its claim is not yet a job.
_ACTIVE_RUN = (
    f"SELECT id FROM jobs WHERE schedule_id = ? AND status IN "
    f"({', '.join(repr(str(s)) for s in sorted(UNFINISHED))}) LIMIT 1"
)


def schedule_from_row(row: Sequence[Any]) -> ScheduleRecord:
    """A schedule from a row of SCHEDULE_COLUMNS."""
    data = dict(zip(SCHEDULE_COLUMNS, row))
    data["spec"] = json.loads(data["spec"])
    return ScheduleRecord(**data)


class ScheduleRows(Connected):
    """The schedules table."""

    def insert_schedule(self, schedule: ScheduleRecord, limit: int | None = None) -> bool:
        """Store a new schedule, unless its tenant has `limit` schedules already (None: no
        limit): whether it was stored. The count and the insert are one statement."""
        values = [
            json.dumps(getattr(schedule, c)) if c == "spec" else getattr(schedule, c)
            for c in SCHEDULE_COLUMNS
        ]
        room = (
            "" if limit is None else " WHERE (SELECT count(*) FROM schedules WHERE tenant = ?) < ?"
        )
        with self._tx() as con:
            inserted = con.execute(
                f"INSERT INTO schedules ({', '.join(SCHEDULE_COLUMNS)}) SELECT "
                f"{', '.join('?' for _ in SCHEDULE_COLUMNS)}{room} RETURNING id",
                values + ([schedule.tenant, limit] if limit is not None else []),
            ).fetchall()
        return bool(inserted)

    def get_schedule(self, schedule_id: str, tenant: str | None = None) -> ScheduleRecord:
        """A schedule by id; with `tenant`, only that tenant's (others' are not found)."""
        with self._lock:
            return self._get_schedule(self._con, schedule_id, tenant)

    @staticmethod
    def _get_schedule(
        con: duckdb.DuckDBPyConnection, schedule_id: str, tenant: str | None = None
    ) -> ScheduleRecord:
        row = con.execute(
            f"{_SELECT} WHERE id = ?" + (" AND tenant = ?" if tenant else ""),
            [schedule_id] + ([tenant] if tenant else []),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no schedule '{schedule_id}'")
        return schedule_from_row(row)

    def list_schedules(self, tenant: str | None = None) -> list[ScheduleRecord]:
        """Schedules (of `tenant`, or all), oldest first."""
        with self._lock:
            rows = self._con.execute(
                f"{_SELECT}" + (" WHERE tenant = ?" if tenant else "") + " ORDER BY created_at, id",
                [tenant] if tenant else [],
            ).fetchall()
        return [schedule_from_row(r) for r in rows]

    def delete_schedule(self, schedule_id: str, tenant: str | None = None) -> ScheduleRecord:
        """Remove a schedule (its jobs stay, with its id); returns what was removed."""
        with self._tx() as con:
            row = con.execute(
                "DELETE FROM schedules WHERE id = ?"
                + (" AND tenant = ?" if tenant else "")
                + f" {_RETURNING}",
                [schedule_id] + ([tenant] if tenant else []),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no schedule '{schedule_id}'")
        return schedule_from_row(row)

    def set_schedule_enabled(
        self,
        schedule_id: str,
        tenant: str | None,
        enabled: bool,
        next_run_at: datetime | None,
        now: datetime,
    ) -> ScheduleRecord:
        """Pause (`next_run_at` None) or resume a schedule, in one statement."""
        with self._tx() as con:
            row = con.execute(
                "UPDATE schedules SET enabled = ?, next_run_at = ?, updated_at = ? WHERE id = ?"
                + (" AND tenant = ?" if tenant else "")
                + f" {_RETURNING}",
                [enabled, next_run_at, now, schedule_id] + ([tenant] if tenant else []),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no schedule '{schedule_id}'")
        return schedule_from_row(row)

    def schedules_to_fire(self, now: datetime) -> list[ScheduleRecord]:
        """Enabled schedules whose next slot has come, and claims a crash left unfinished;
        the longest overdue first."""
        with self._lock:
            rows = self._con.execute(
                f"{_SELECT} WHERE (enabled AND next_run_at <= ?) OR last_outcome = ? "
                "ORDER BY next_run_at NULLS FIRST, id",
                [now, str(Outcome.CLAIMED)],
            ).fetchall()
        return [schedule_from_row(r) for r in rows]

    def claim_slot(
        self, schedule_id: str, expected_next: datetime, now: datetime, job_id: str
    ) -> tuple[Action, ScheduleRecord] | None:
        """Claim the slot at `expected_next` for a run whose job will be `job_id`, or record
        it skipped (a run still active), and move the schedule to its first slot after `now`:
        one transaction. None when the slot is not (or no longer) this caller's: another
        claim took it, the schedule was paused or removed, or it is not due."""
        with self._tx() as con:
            try:
                current = self._get_schedule(con, schedule_id)
            except NotFoundError:
                return None
            active = (
                current.last_outcome == Outcome.CLAIMED
                or con.execute(_ACTIVE_RUN, [schedule_id]).fetchone() is not None
            )
            if not current.enabled or current.next_run_at != expected_next:
                return None
            action = decide(current.next_run_at, now, active)
            if action == Action.WAIT:
                return None
            following = next_slot(current.cron, current.timezone, now)
            if action == Action.FIRE:
                change = (
                    "last_outcome = ?, last_job_id = ?, last_error = NULL",
                    [str(Outcome.CLAIMED), job_id],
                )
            else:
                change = (
                    "last_outcome = ?, runs_skipped = runs_skipped + 1",
                    [str(Outcome.SKIPPED)],
                )
            # The compare-and-set itself: the statement changes the row only if the slot is
            # still the one read above.
            row = con.execute(
                f"UPDATE schedules SET next_run_at = ?, last_outcome_at = ?, updated_at = ?, "
                f"{change[0]} WHERE id = ? AND enabled AND next_run_at = ? {_RETURNING}",
                [following, now, now, *change[1], schedule_id, expected_next],
            ).fetchone()
        return None if row is None else (action, schedule_from_row(row))

    def claim_run_now(
        self, schedule_id: str, tenant: str | None, now: datetime, job_id: str
    ) -> ScheduleRecord:
        """Claim an extra run now (its slots stay as they are); ConflictError while a run of
        the schedule is active, NotFoundError for no such schedule of the tenant."""
        with self._tx() as con:
            current = self._get_schedule(con, schedule_id, tenant)
            active = con.execute(_ACTIVE_RUN, [schedule_id]).fetchone()
            if active is not None or current.last_outcome == Outcome.CLAIMED:
                which = f"job {active[0]}" if active else f"job {current.last_job_id}"
                raise ConflictError(
                    f"schedule {schedule_id} has a run still active ({which}); "
                    "wait for it to end or cancel it"
                )
            row = only_row(
                con.execute(
                    "UPDATE schedules SET last_outcome = ?, last_job_id = ?, last_error = NULL, "
                    f"last_outcome_at = ?, updated_at = ? WHERE id = ? {_RETURNING}",
                    [str(Outcome.CLAIMED), job_id, now, now, schedule_id],
                )
            )
        return schedule_from_row(row)

    def settle_claim(
        self, schedule_id: str, job_id: str, now: datetime, error: str | None = None
    ) -> ScheduleRecord | None:
        """Record how a claimed run ended: its job submitted (`error` None) or refused. Only
        the claim of `job_id` is settled; None if the schedule is gone or was settled."""
        fired = error is None
        counter = "runs_fired" if fired else "runs_refused"
        with self._tx() as con:
            row = con.execute(
                f"UPDATE schedules SET last_outcome = ?, last_error = ?, last_outcome_at = ?, "
                f"last_run_at = {'?' if fired else 'last_run_at'}, {counter} = {counter} + 1 "
                f"WHERE id = ? AND last_job_id = ? AND last_outcome = ? {_RETURNING}",
                [
                    str(Outcome.FIRED if fired else Outcome.REFUSED),
                    error,
                    now,
                    *([now] if fired else []),
                    schedule_id,
                    job_id,
                    str(Outcome.CLAIMED),
                ],
            ).fetchone()
        return None if row is None else schedule_from_row(row)
