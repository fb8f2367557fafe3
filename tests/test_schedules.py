"""Schedules end to end: the job service with real DuckDB files and a clock the tests move, the
firing loop on a real cluster, kill -9 between a claim and its job, the HTTP routes on a real
uvicorn server, and the CLI (in this process, through its `main`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from embedscale.jobs.errors import ConflictError, InvalidFieldError, NotFoundError
from embedscale.jobs.schedules import MAX_SCHEDULES_PER_TENANT
from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus
from tests.corpora import jsonl_corpus
from tests.helpers import embedscale_in_process, read_rows

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2030, 1, 7, 9, 0, 30, tzinfo=UTC)  # a Monday; slots of */5 at :05, :10, ...
TEXTS = {"table": "notes", "texts": ["heap queue algorithm", "priority queues by heaps"]}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    jsonl_corpus(root / "feed" / "rows.jsonl", rows=3, chars=300)
    return root


def open_service(tmp_path: Path, clock: Clock, roots: Path | None = None, **kw) -> JobService:
    """A control plane without a cluster: its jobs are queued and stay queued (active)."""
    return JobService(
        tmp_path / "data",
        clock=clock,
        allowed_roots=[str(roots)] if roots is not None else None,
        **kw,
    )


@pytest.fixture
def svc(tmp_path, clock, roots):
    service = open_service(tmp_path, clock, roots)
    yield service
    service.close()


def runs(service: JobService, schedule_id: str, tenant: str | None = None) -> list:
    return service.list(tenant, schedule=schedule_id, limit=500)[0]


# --- validation: nothing stored ----------------------------------------------------------


@pytest.mark.parametrize(
    "change,field",
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"template": {"table": "t", "source": "/etc"}}, "template.source"),
        ({"template": {"table": "t", "source": "{root}/missing"}}, "template.source"),
        (
            {"template": {"table": "t", "texts": ["a"], "model": "some/other-model"}},
            "template.model",
        ),
    ],
)
def test_a_bad_schedule_names_its_field_and_stores_nothing(svc, roots, change, field):
    request = {
        "cron": "*/5 * * * *",
        "timezone": "UTC",
        "template": {"table": "t", "source": str(roots / "feed")},
        **change,
    }
    if isinstance(request["template"].get("source"), str):
        request["template"]["source"] = request["template"]["source"].format(root=roots)
    svc.allowed_models = []  # only the default model, as a server offers by default
    with pytest.raises(InvalidFieldError) as refused:
        svc.schedules.create("local", **request)
    assert refused.value.field == field
    assert svc.schedules.list() == []


def test_a_template_is_a_job_spec(svc):
    with pytest.raises(ValidationError) as refused:
        svc.schedules.create("local", "@daily", {"table": "t", "texts": ["a"], "chunk_tokens": 0})
    assert [e["loc"] for e in refused.value.errors()] == [("chunk_tokens",)]
    with pytest.raises(ValidationError):
        svc.schedules.create("local", "@daily", {"table": "../t", "texts": ["a"]})
    assert svc.schedules.list() == []


def test_a_tenant_has_a_bounded_number_of_schedules(svc):
    for _ in range(MAX_SCHEDULES_PER_TENANT):
        svc.schedules.create("local", "@daily", TEXTS)
    with pytest.raises(ConflictError, match="the most allowed"):
        svc.schedules.create("local", "@daily", TEXTS)
    assert len(svc.schedules.list("local")) == MAX_SCHEDULES_PER_TENANT


# --- firing with a controlled clock -------------------------------------------------------


def test_a_due_slot_fires_a_job_with_the_schedule_id(svc, clock, roots):
    schedule = svc.schedules.create(
        "local",
        "*/5 * * * *",
        {"table": "feed", "source": str(roots / "feed")},
        timezone="Europe/Berlin",
    )
    assert schedule.next_run_at == datetime(2030, 1, 7, 9, 5, tzinfo=UTC)
    assert svc.schedules.tick() == [] and runs(svc, schedule.id) == []
    clock.advance(minutes=5)
    [fired] = svc.schedules.tick()
    [job] = runs(svc, schedule.id, "local")
    assert job.schedule_id == schedule.id and job.status == JobStatus.QUEUED
    assert job.table_name == "feed" and job.spec["source"] == str(roots / "feed")
    assert (fired.last_outcome, fired.last_job_id, fired.runs_fired) == ("fired", job.id, 1)
    assert fired.last_run_at == clock.now
    assert fired.next_run_at == datetime(2030, 1, 7, 9, 10, tzinfo=UTC)
    assert svc.get(job.id).to_dict()["schedule_id"] == schedule.id
    assert svc.schedules.tick() == []  # the same slot never fires twice


def test_a_slot_while_the_previous_run_is_active_is_skipped_and_recorded(svc, clock):
    schedule = svc.schedules.create("local", "*/5 * * * *", TEXTS)
    clock.advance(minutes=5)
    [first] = svc.schedules.tick()
    clock.advance(minutes=5)
    [skipped] = svc.schedules.tick()  # the first run is still queued: active
    assert (skipped.last_outcome, skipped.runs_fired, skipped.runs_skipped) == ("skipped", 1, 1)
    assert skipped.last_job_id == first.last_job_id  # the run that was still active
    assert skipped.next_run_at == datetime(2030, 1, 7, 9, 15, tzinfo=UTC)
    assert len(runs(svc, schedule.id)) == 1
    assert svc.schedules.get(schedule.id).runs_skipped == 1

    svc.cancel(first.last_job_id)  # ended: the next slot fires again
    clock.advance(minutes=5)
    [fired] = svc.schedules.tick()
    assert (fired.last_outcome, fired.runs_fired, fired.runs_skipped) == ("fired", 2, 1)
    assert len(runs(svc, schedule.id)) == 2


def test_slots_missed_while_down_fire_once_at_start_up(tmp_path, clock):
    with open_service(tmp_path, clock) as service:
        schedule = service.schedules.create("local", "*/5 * * * *", TEXTS)
    clock.advance(days=2)  # 576 slots pass while the service is down
    with open_service(tmp_path, clock) as service:
        [fired] = service.schedules.tick()
        assert fired.runs_fired == 1 and fired.runs_skipped == 0
        assert fired.next_run_at == datetime(2030, 1, 9, 9, 5, tzinfo=UTC)
        assert service.schedules.tick() == []
        assert len(runs(service, schedule.id)) == 1


def test_a_slot_is_claimed_once_across_restarts(tmp_path, clock):
    with open_service(tmp_path, clock) as service:
        schedule = service.schedules.create("local", "*/5 * * * *", TEXTS)
        slot = schedule.next_run_at
        clock.advance(minutes=5)
        service.schedules.tick()
        # The compare-and-set: a claim of a slot already claimed changes nothing.
        assert service.store.claim_slot(schedule.id, slot, clock.now, "another") is None
    for _ in range(2):  # the same clock time, the file reopened: nothing fires again
        with open_service(tmp_path, clock) as service:
            assert service.schedules.tick() == []
            assert service.store.claim_slot(schedule.id, slot, clock.now, "x") is None
            assert len(runs(service, schedule.id)) == 1


CRASH = """
import os, signal, sys
from datetime import datetime
from embedscale.jobs.service import JobService

data_dir, now, stage = sys.argv[1], datetime.fromisoformat(sys.argv[2]), sys.argv[3]
service = JobService(data_dir, clock=lambda: now)
submit = service.submit

def crash(*args, **kwargs):
    if stage == "after-insert":
        submit(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

service.schedules._submit = crash
service.schedules.tick()
sys.exit(3)  # not reached
"""


@pytest.mark.parametrize("stage", ["before-insert", "after-insert"])
def test_kill_9_between_the_claim_and_its_job_runs_the_slot_exactly_once(tmp_path, clock, stage):
    with open_service(tmp_path, clock) as service:
        schedule = service.schedules.create("local", "*/5 * * * *", TEXTS)
    clock.advance(minutes=5)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", CRASH, str(tmp_path / "data"), clock.now.isoformat(), stage],
        env=env,
        cwd=ROOT,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    with open_service(tmp_path, clock) as service:
        claimed = service.schedules.get(schedule.id)
        assert claimed.last_outcome == "claimed" and claimed.runs_fired == 0
        assert len(runs(service, schedule.id)) == (1 if stage == "after-insert" else 0)
        [settled] = service.schedules.tick()
        assert (settled.last_outcome, settled.runs_fired) == ("fired", 1)
        [job] = runs(service, schedule.id)
        assert job.id == claimed.last_job_id  # the claimed id: inserted once, whoever did
        assert settled.next_run_at == datetime(2030, 1, 7, 9, 10, tzinfo=UTC)
        assert service.schedules.tick() == []
    with open_service(tmp_path, clock) as service:
        assert service.schedules.tick() == [] and len(runs(service, schedule.id)) == 1


def test_pause_and_resume(svc, clock):
    schedule = svc.schedules.create("local", "*/5 * * * *", TEXTS)
    paused = svc.schedules.pause(schedule.id)
    assert not paused.enabled and paused.next_run_at is None
    clock.advance(hours=1)
    assert svc.schedules.tick() == []  # an hour of slots pass, paused
    resumed = svc.schedules.resume(schedule.id)
    # Slots passed while paused are not run: the next is the first after now.
    assert resumed.enabled and resumed.next_run_at == datetime(2030, 1, 7, 10, 5, tzinfo=UTC)
    assert svc.schedules.tick() == [] and runs(svc, schedule.id) == []
    clock.advance(minutes=5)
    assert [s.last_outcome for s in svc.schedules.tick()] == ["fired"]
    created_paused = svc.schedules.create("local", "@hourly", TEXTS, enabled=False)
    assert created_paused.next_run_at is None


def test_a_removed_schedule_fires_no_more_and_its_runs_keep_its_id(svc, clock):
    schedule = svc.schedules.create("local", "*/5 * * * *", TEXTS)
    clock.advance(minutes=5)
    svc.schedules.tick()
    removed = svc.schedules.delete(schedule.id)
    assert removed.id == schedule.id
    with pytest.raises(NotFoundError):
        svc.schedules.get(schedule.id)
    with pytest.raises(NotFoundError):
        svc.schedules.delete(schedule.id)
    clock.advance(hours=1)
    assert svc.schedules.tick() == []
    [job] = runs(svc, schedule.id)
    assert job.schedule_id == schedule.id


def test_another_tenants_schedule_is_not_found(svc):
    svc.create_tenant("alice", "premium")
    svc.create_tenant("bob", "premium")
    schedule = svc.schedules.create("alice", "@daily", TEXTS)
    for action in (
        svc.schedules.get,
        svc.schedules.pause,
        svc.schedules.resume,
        svc.schedules.run_now,
        svc.schedules.delete,
    ):
        with pytest.raises(NotFoundError):
            action(schedule.id, "bob")
    assert svc.schedules.list("bob") == []
    assert [s.id for s in svc.schedules.list("alice")] == [schedule.id]
    assert svc.schedules.get(schedule.id, "alice").enabled


def test_a_run_over_the_quota_is_refused_and_recorded(svc, clock):
    svc.create_tenant("thrifty", "free")
    svc.set_limits("thrifty", daily_chunks=1)
    schedule = svc.schedules.create("thrifty", "*/5 * * * *", TEXTS)
    clock.advance(minutes=5)
    [refused] = svc.schedules.tick()
    assert (refused.last_outcome, refused.runs_refused, refused.runs_fired) == ("refused", 1, 0)
    assert "chunks left today" in refused.last_error
    assert runs(svc, schedule.id) == []
    svc.set_limits("thrifty", daily_chunks=1000)  # a refused run holds nothing: next one fires
    clock.advance(minutes=5)
    [fired] = svc.schedules.tick()
    assert (fired.last_outcome, fired.last_error, fired.runs_refused) == ("fired", None, 1)


def test_a_source_gone_since_creation_is_refused_at_fire_time(svc, clock, roots):
    source = roots / "feed"
    schedule = svc.schedules.create("local", "*/5 * * * *", {"table": "t", "source": str(source)})
    (source / "rows.jsonl").rename(roots / "elsewhere.jsonl")
    clock.advance(minutes=5)
    [refused] = svc.schedules.tick()
    assert refused.last_outcome == "refused" and "source" in refused.last_error
    assert runs(svc, schedule.id) == []


def test_run_now_is_one_more_run_and_waits_for_the_active_one(svc, clock):
    schedule = svc.schedules.create("local", "@daily", TEXTS)
    job = svc.schedules.run_now(schedule.id)
    assert job.schedule_id == schedule.id and job.status == JobStatus.QUEUED
    after = svc.schedules.get(schedule.id)
    assert after.next_run_at == schedule.next_run_at  # the slots stay as they were
    assert (after.last_job_id, after.runs_fired) == (job.id, 1)
    with pytest.raises(ConflictError, match=job.id):
        svc.schedules.run_now(schedule.id)
    svc.cancel(job.id)
    assert svc.schedules.run_now(schedule.id).id != job.id


# --- the firing loop on a real cluster ------------------------------------------------------


@pytest.mark.slow
def test_the_loop_fires_runs_that_succeed(cluster, tmp_path, clock):
    from embedscale.jobs.runner.loop import RunnerConfig

    service = JobService(
        tmp_path / "data",
        cluster,
        clock=clock,
        schedule_poll_seconds=0.05,
        runner_config=RunnerConfig(backoff_seconds=0.05),
    )
    try:
        service.start(fire_schedules=True)
        schedule = service.schedules.create(
            "local", "*/5 * * * *", {**TEXTS, "mode": "upsert", "ids": ["a", "b"]}
        )
        for n in (1, 2):  # the loop fires each slot by itself; each run ends before the next
            clock.advance(minutes=5)
            deadline = time.monotonic() + 120
            while len(found := runs(service, schedule.id)) < n:
                assert time.monotonic() < deadline, "the loop never fired"
                time.sleep(0.05)
            done = service.wait(found[0].id, timeout=120)
            assert done.status == JobStatus.SUCCEEDED and done.schedule_id == schedule.id
        assert service.schedules.get(schedule.id).runs_fired == 2
        rows = read_rows(service.tenant_data_dir("local"), "notes", ["doc_id"])
        assert sorted(rows.column("doc_id").to_pylist()) == ["a", "b"]
    finally:
        service.close()
    assert not service.schedules.firing


# --- HTTP ----------------------------------------------------------------------------------


def _schedule_body(server, **change) -> dict:
    feed = server.root / "schedules" / "feed"
    if not feed.exists():
        jsonl_corpus(feed / "rows.jsonl", rows=3, chars=300)
    return {
        "cron": "0 3 * * *",
        "timezone": "Europe/Berlin",
        "template": {"table": "feed", "source": str(feed), "mode": "upsert"},
        **change,
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "change,loc",
    [
        ({"cron": "0 25 * * *"}, ["body", "cron"]),
        ({"cron": ""}, ["body", "cron"]),
        ({"timezone": "Europe/Atlantis"}, ["body", "timezone"]),
        ({"template": {"table": "feed", "source": "/etc"}}, ["body", "template", "source"]),
        (
            {"template": {"table": "feed", "texts": ["a"], "model": "x/y"}},
            ["body", "template", "model"],
        ),
        (
            {"template": {"table": "feed", "texts": ["a"], "chunk_tokens": 0}},
            ["body", "template", "chunk_tokens"],
        ),
        ({"template": None}, ["body", "template"]),
        ({"every": "day"}, ["body", "every"]),
    ],
)
def test_http_bad_schedule_is_422_naming_the_field(server, change, loc):
    client = server.tenant(f"s{abs(hash(json.dumps(change))) % 10**8}")
    answer = client.post("/v1/schedules", json=_schedule_body(server, **change))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == loc
    assert client.get("/v1/schedules").json() == {"schedules": []}


@pytest.mark.slow
def test_http_schedules(server):
    anonymous = httpx.Client(base_url=server.url)
    for method, path in (
        ("GET", ""),
        ("POST", ""),
        ("GET", "/x"),
        ("DELETE", "/x"),
        ("POST", "/x/pause"),
        ("POST", "/x/resume"),
        ("POST", "/x/run"),
    ):
        answer = anonymous.request(method, f"/v1/schedules{path}", json={})
        assert answer.status_code == 401, (method, path, answer.text)
    alice, bob = server.tenant("sched-alice"), server.tenant("sched-bob")
    created = alice.post("/v1/schedules", json=_schedule_body(server))
    assert created.status_code == 201, created.text
    schedule = created.json()
    sid = schedule["id"]
    assert schedule["tenant"] == "sched-alice" and schedule["enabled"]
    assert schedule["template"]["mode"] == "upsert" and schedule["last_outcome"] is None
    assert alice.get(f"/v1/schedules/{sid}").json() == schedule
    assert [s["id"] for s in alice.get("/v1/schedules").json()["schedules"]] == [sid]

    # Another tenant sees nothing and can change nothing.
    assert bob.get("/v1/schedules").json() == {"schedules": []}
    for method, path in (
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("POST", "/run"),
    ):
        assert bob.request(method, f"/v1/schedules/{sid}{path}").status_code == 404

    paused = alice.post(f"/v1/schedules/{sid}/pause").json()
    assert not paused["enabled"] and paused["next_run_at"] is None
    resumed = alice.post(f"/v1/schedules/{sid}/resume").json()
    assert resumed["enabled"] and resumed["next_run_at"]

    # A run now is an ordinary job with the schedule's id; it waits for the tenant's
    # concurrency like any job, and a second one is refused while it is active.
    server.hold_in_queue("sched-alice")
    run = alice.post(f"/v1/schedules/{sid}/run")
    assert run.status_code == 201, run.text
    job = run.json()
    assert job["schedule_id"] == sid and job["status"] == "queued"
    listed = alice.get("/v1/jobs", params={"schedule": sid}).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert alice.get("/v1/jobs", params={"schedule": "other"}).json()["jobs"] == []
    assert bob.get("/v1/jobs", params={"schedule": sid}).json()["jobs"] == []
    again = alice.post(f"/v1/schedules/{sid}/run")
    assert again.status_code == 409 and job["id"] in again.json()["detail"]
    shown = alice.get(f"/v1/schedules/{sid}").json()
    assert (shown["last_job_id"], shown["last_outcome"], shown["runs_fired"]) == (
        job["id"],
        "fired",
        1,
    )

    server.hold_in_queue("sched-alice", held=False)
    alice.delete(f"/v1/jobs/{job['id']}")
    removed = alice.delete(f"/v1/schedules/{sid}")
    assert removed.status_code == 200 and removed.json()["id"] == sid
    assert alice.get(f"/v1/schedules/{sid}").status_code == 404
    assert alice.get("/v1/jobs", params={"schedule": sid}).json()["jobs"][0]["id"] == job["id"]


@pytest.mark.slow
def test_http_client_schedules(server):
    from embedscale.api.client.service import ApiError, Client

    with server.admin() as admin:
        key = admin.post("/v1/tenants", json={"name": "sched-carol", "tier": "premium"}).json()[
            "api_key"
        ]
    body = _schedule_body(server)
    with Client(server.url, key) as client:
        schedule = client.schedules.add(
            "*/10 * * * *",
            "feed",
            source=body["template"]["source"],
            timezone="Asia/Tokyo",
            mode="upsert",
        )
        assert schedule["timezone"] == "Asia/Tokyo" and schedule["cron"] == "*/10 * * * *"
        assert [s["id"] for s in client.schedules.list()] == [schedule["id"]]
        assert not client.schedules.pause(schedule["id"])["enabled"]
        assert client.schedules.resume(schedule["id"])["enabled"]
        job = client.schedules.run(schedule["id"])
        assert [j.id for j in client.jobs(schedule=schedule["id"])] == [job.id]
        assert job.wait(timeout=120)["schedule_id"] == schedule["id"]
        assert client.schedules.get(schedule["id"])["last_job_id"] == job.id
        client.schedules.remove(schedule["id"])
        with pytest.raises(ApiError) as missing:
            client.schedules.get(schedule["id"])
        assert missing.value.status_code == 404
        with pytest.raises(ApiError) as bad:
            client.schedules.add("nope", "feed", texts=["a"])
        assert bad.value.status_code == 422 and bad.value.detail[0]["loc"] == ["body", "cron"]


# --- the CLI -------------------------------------------------------------------------------


def embedscale(*args: str) -> subprocess.CompletedProcess:
    """The command's arguments, output and exit status, run in this process (none of these
    start a cluster: tests/test_cli.py runs the installed command in a process of its own)."""
    return embedscale_in_process(*args)


@pytest.mark.slow
def test_cli_schedules(tmp_path, roots):
    data = ["--data-dir", str(tmp_path / "data")]
    added = embedscale(
        "schedules",
        "add",
        "30 2 * * *",
        str(roots / "feed"),
        "--table",
        "feed",
        "--mode",
        "upsert",
        "--timezone",
        "Europe/Berlin",
        "--chunk-tokens",
        "64",
        *data,
        "--json",
    )
    assert added.returncode == 0, added.stderr
    schedule = json.loads(added.stdout)
    sid = schedule["id"]
    assert schedule["template"]["chunk_tokens"] == 64 and schedule["timezone"] == "Europe/Berlin"

    listed = embedscale("schedules", "list", *data, "--json")
    assert [s["id"] for s in json.loads(listed.stdout)] == [sid]
    table = embedscale("schedules", "list", *data)
    assert sid in table.stdout and "30 2 * * *" in table.stdout

    paused = embedscale("schedules", "pause", sid, *data)
    assert paused.returncode == 0 and paused.stdout.strip() == f"schedule {sid} paused"
    resumed = embedscale("schedules", "resume", sid, *data, "--json")
    assert json.loads(resumed.stdout)["enabled"] is True

    run = embedscale("schedules", "run", sid, *data, "--json")
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["schedule_id"] == sid and job["status"] == "queued"
    jobs = embedscale("jobs", "list", "--schedule", sid, *data, "--json")
    assert [j["id"] for j in json.loads(jobs.stdout)] == [job["id"]]

    removed = embedscale("schedules", "remove", sid, *data)
    assert removed.returncode == 0 and removed.stdout.strip() == f"schedule {sid} removed"
    assert json.loads(embedscale("schedules", "list", *data, "--json").stdout) == []

    for args, says in (
        (["61 * * * *", str(roots)], "invalid cron expression '61 * * * *'"),
        (["@daily", str(roots), "--timezone", "Nowhere/City"], "unknown time zone 'Nowhere/City'"),
        (["@daily", str(roots / "missing")], "source not found"),
        (["@daily", str(roots), "--chunk-tokens", "0"], "--chunk-tokens:"),
        (["@daily", str(roots), "--tenant", "ghost"], "no tenant 'ghost'"),
    ):
        bad = embedscale("schedules", "add", *args, "--table", "t", *data)
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
        assert bad.stderr.startswith("embedscale: error:") and says in bad.stderr, bad.stderr
    assert json.loads(embedscale("schedules", "list", *data, "--json").stdout) == []
