"""Schedules of the job service: created, paused, resumed and removed for a tenant, and fired.

The firing loop is a small thread (started by JobService.start(fire_schedules=True), stopped
with the service) that calls `tick()` every few seconds. A tick reads the due schedules, claims
each slot in one transaction (jobs/store/schedules.py), and submits the run as an ordinary job
through the service, with the schedule's id: the job meets the same checks (allowed roots and
models, the tenant's quota) and waits for the tenant's concurrency like any other. The clock is
injectable and a tick can be called by hand, so tests move time instead of waiting for it.
"""

from __future__ import annotations

import builtins  # `list` is a method of the class below: annotations name the type
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from embedscale.engine.errors import EmbedscaleError
from embedscale.jobs.errors import (
    ConflictError,
    InvalidFieldError,
    NotFoundError,
    StoreUnavailableError,
)
from embedscale.jobs.periodic import PeriodicThread
from embedscale.jobs.policies.schedules import (
    MAX_SCHEDULES_PER_TENANT,
    Action,
    Outcome,
    ScheduleRecord,
    check_cron,
    check_timezone,
    next_slot,
)
from embedscale.jobs.spec import JobSpec
from embedscale.jobs.store.duckdb_store import Store, utcnow
from embedscale.jobs.store.records import JobRecord

log = logging.getLogger("embedscale.schedules")

Clock = Callable[[], datetime]
DEFAULT_POLL_SECONDS = 5.0  # cron names minutes: a run starts at most this late
MAX_ERROR_CHARS = 1000


class Submit(Protocol):
    """JobService.submit, as the loop calls it."""

    def __call__(
        self,
        tenant: str,
        spec: JobSpec,
        *,
        job_id: str | None = None,
        schedule_id: str | None = None,
    ) -> JobRecord: ...


class Schedules:
    """A tenant's schedules, and the loop that fires them."""

    def __init__(
        self,
        store: Store,
        check: Callable[[JobSpec], Any],
        submit: Submit,
        clock: Clock | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_per_tenant: int = MAX_SCHEDULES_PER_TENANT,
    ) -> None:
        self.store = store
        self.max_per_tenant = max_per_tenant
        self._check = check  # a template is checked as a submission would be, nothing stored
        self._submit = submit
        self.clock: Clock = clock or utcnow
        self.poll_seconds = poll_seconds
        self._firing = threading.Lock()  # one tick or run-now at a time in this process
        self._loop = PeriodicThread(
            "embedscale-schedules", self.tick, poll_seconds, log, "schedules: tick"
        )

    def now(self) -> datetime:
        """The clock's time (it must be time-zone aware)."""
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the schedules' clock must return an aware datetime")
        return now

    # --- the tenant's schedules ----------------------------------------------------------

    def create(
        self,
        tenant: str,
        cron: str,
        template: JobSpec | dict[str, Any],
        timezone: str = "UTC",
        enabled: bool = True,
    ) -> ScheduleRecord:
        """A new schedule, once the cron expression, the time zone and the job template all
        pass (InvalidFieldError naming `cron`, `timezone` or `template.<field>`); nothing is
        stored otherwise."""
        cron = check_cron(cron)
        timezone = check_timezone(timezone)
        if not isinstance(template, JobSpec):
            template = JobSpec.model_validate(template)
        try:
            self._check(template)
        except InvalidFieldError as exc:
            raise InvalidFieldError(f"template.{exc.field}", str(exc)) from None
        now = self.now()
        record = ScheduleRecord(
            id=uuid.uuid4().hex,
            tenant=tenant,
            cron=cron,
            timezone=timezone,
            spec=template.model_dump(mode="json"),
            enabled=enabled,
            created_at=now,
            updated_at=now,
            next_run_at=next_slot(cron, timezone, now) if enabled else None,
        )
        # The count and the insert are one transaction: creations arriving together cannot
        # each find the last place free.
        if not self.store.insert_schedule(record, self.max_per_tenant):
            raise ConflictError(
                f"tenant '{tenant}' has {self.max_per_tenant} schedules, the most allowed "
                "(max_schedules_per_tenant, set by the operator): delete one first"
            )
        return self.store.get_schedule(record.id)

    def get(self, schedule_id: str, tenant: str | None = None) -> ScheduleRecord:
        """One schedule (NotFoundError for another tenant's)."""
        return self.store.get_schedule(schedule_id, tenant)

    def list(self, tenant: str | None = None) -> list[ScheduleRecord]:
        """The tenant's schedules (all, without one), oldest first."""
        return self.store.list_schedules(tenant)

    def delete(self, schedule_id: str, tenant: str | None = None) -> ScheduleRecord:
        """Remove a schedule; a run already submitted goes on, and its jobs keep its id."""
        return self.store.delete_schedule(schedule_id, tenant)

    def pause(self, schedule_id: str, tenant: str | None = None) -> ScheduleRecord:
        """Stop firing; a run already submitted goes on."""
        return self.store.set_schedule_enabled(schedule_id, tenant, False, None, self.now())

    def resume(self, schedule_id: str, tenant: str | None = None) -> ScheduleRecord:
        """Fire again from the next slot after now: slots passed while paused are not run."""
        current = self.store.get_schedule(schedule_id, tenant)
        now = self.now()
        return self.store.set_schedule_enabled(
            schedule_id, tenant, True, next_slot(current.cron, current.timezone, now), now
        )

    def run_now(self, schedule_id: str, tenant: str | None = None) -> JobRecord:
        """Submit a run of the schedule now, besides its slots; ConflictError while a run of
        it is active, and the submission's own error (quota, source) if it is refused."""
        with self._firing:
            job_id = uuid.uuid4().hex
            claimed = self.store.claim_run_now(schedule_id, tenant, self.now(), job_id)
            _, error = self._finish_claim(claimed)
        if error is not None:
            raise error
        return self.store.get_job(job_id)

    # --- firing --------------------------------------------------------------------------

    def tick(self) -> builtins.list[ScheduleRecord]:
        """Fire (or skip) every schedule due at the clock's time, and finish claims a crash
        interrupted; returns the schedules this tick changed, as they now are."""
        with self._firing:
            now = self.now()
            changed: dict[str, ScheduleRecord] = {}
            for schedule in self.store.schedules_to_fire(now):
                if schedule.last_outcome == Outcome.CLAIMED:
                    settled, _ = self._finish_claim(schedule)
                    if settled is None:
                        continue  # left claimed: tried again next tick
                    schedule = changed[schedule.id] = settled
                if not (
                    schedule.enabled
                    and schedule.next_run_at is not None
                    and schedule.next_run_at <= now
                ):
                    continue
                claimed = self.store.claim_slot(
                    schedule.id, schedule.next_run_at, now, uuid.uuid4().hex
                )
                if claimed is None:
                    continue  # another claim took the slot, or it was paused meanwhile
                action, schedule = claimed
                if action == Action.FIRE:
                    schedule = self._finish_claim(schedule)[0] or schedule
                else:
                    log.info(
                        "schedule %s (tenant %s): slot skipped, run %s still active",
                        schedule.id,
                        schedule.tenant,
                        schedule.last_job_id,
                    )
                changed[schedule.id] = schedule
            return list(changed.values())

    def _finish_claim(
        self, schedule: ScheduleRecord
    ) -> tuple[ScheduleRecord | None, Exception | None]:
        """Submit the claimed run under its job id (unless a crash came after its job was
        inserted) and record the outcome. (None, None) for an unexpected error: the claim
        stays, and the next tick tries again."""
        job_id = schedule.last_job_id
        if job_id is None:  # every claim names its job; a row edited by hand may not
            log.error("schedule %s is claimed without a job id", schedule.id)
            return None, None
        try:
            self.store.get_job(job_id)
        except NotFoundError:
            pass
        else:  # inserted before a crash that left the claim unsettled
            return self.store.settle_claim(schedule.id, job_id, self.now()), None
        try:
            spec = JobSpec.model_validate(schedule.spec)
            self._submit(schedule.tenant, spec, job_id=job_id, schedule_id=schedule.id)
        except StoreUnavailableError:
            raise  # not the run's fault: the tick fails, a later one fires it
        except (EmbedscaleError, ValidationError) as exc:
            log.warning(
                "schedule %s (tenant %s): run refused: %s", schedule.id, schedule.tenant, exc
            )
            settled = self.store.settle_claim(
                schedule.id, job_id, self.now(), error=str(exc)[:MAX_ERROR_CHARS]
            )
            return settled, exc
        except Exception:
            log.exception(
                "schedule %s (tenant %s): submitting run %s failed; retrying",
                schedule.id,
                schedule.tenant,
                job_id,
            )
            return None, None
        log.info("schedule %s (tenant %s): fired job %s", schedule.id, schedule.tenant, job_id)
        return self.store.settle_claim(schedule.id, job_id, self.now()), None

    def start(self) -> None:
        """Fire due schedules from now on: at once (slots missed while the service was down
        run once), then every `poll_seconds`."""
        self._loop.every_s = self.poll_seconds
        self._loop.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop firing (a submission under way finishes first)."""
        self._loop.stop(timeout)

    @property
    def firing(self) -> bool:
        """Whether the loop runs."""
        return self._loop.alive
