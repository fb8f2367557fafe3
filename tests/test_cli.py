"""The `embedscale` command end to end: one run of the real command in a process of its own,
the rest in this process through the console script's `main` (the same argument parsing, error
lines and exit statuses, without an interpreter, torch and the model to load per command), jobs
on the session's cluster named with --scheduler. The command starting its own cluster, killed
and resumed, is tests/test_resume.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import embedscale_in_process as embedscale

pytestmark = pytest.mark.slow

EMBEDSCALE = [sys.executable, "-m", "embedscale"]
ROOT = Path(__file__).resolve().parents[1]


def embedscale_process(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real command in a process of its own."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*EMBEDSCALE, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_run_then_search(small_corpus, data_dir, cluster):
    scheduler = cluster.client.scheduler.address
    (small_corpus / "bad.jsonl").write_text("{broken\n")
    done = embedscale_process(
        "run",
        str(small_corpus),
        "--table",
        "docs",
        "--data-dir",
        str(data_dir),
        "--scheduler",
        scheduler,
        "--chunk-tokens",
        "128",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["documents"] == 12 and summary["chunks"] > 12
    assert summary["skipped"] == [
        {
            "source": "bad.jsonl#0",
            "reason": "malformed JSON line: Expecting property name enclosed in double quotes",
        }
    ]
    assert summary["table_uri"].startswith(str(data_dir))
    assert summary["chunks_per_s"] > 0 and summary["dashboard_link"].startswith("http")
    assert summary["tokens_per_s"] > summary["chunks_per_s"]
    assert summary["eta_seconds"] is None  # finished: nothing left to wait for
    # What precision it asked for and what each worker's model ran in (tests pin fp32).
    chosen = summary["details"]["model_precision"]
    assert chosen["requested"] == "auto" and chosen["forms"][0]["form"] == "fp32"

    found = embedscale(
        "search",
        "docs",
        "heap queue algorithm, priority queue",
        "-k",
        "3",
        "--data-dir",
        str(data_dir),
        "--json",
    )
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3 and hits[0]["doc_id"] == "heapq.txt"
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    # Text output: the progress bar goes to stderr, the summary to stdout.
    again = embedscale(
        "run",
        str(small_corpus),
        "--table",
        "docs",
        "--data-dir",
        str(data_dir),
        "--scheduler",
        scheduler,
        "--chunk-tokens",
        "128",
        "--mode",
        "upsert",
    )
    assert again.returncode == 0, again.stderr
    assert "documents read: 0 (unchanged, not re-embedded: 12)" in again.stdout
    assert "1 x malformed JSON line" in again.stdout and "chunks/s:" in again.stdout
    assert "Dask dashboard: http" in again.stderr and "partitions" in again.stderr
    assert "chunks/s · ETA" in again.stderr and "tokens/s:" in again.stdout
    assert "precision:      auto -> fp32" in again.stdout

    text = embedscale("search", "docs", "heap", "-k", "1", "--data-dir", str(data_dir))
    assert text.returncode == 0 and text.stdout.startswith("1. heapq.txt")


def assert_one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("embedscale: error")]
    assert len(errors) == 1 and expected in errors[0], done.stderr


def test_missing_source(tmp_path):
    done = embedscale("run", str(tmp_path / "nope"), "--table", "t", "--data-dir", str(tmp_path))
    assert_one_line_error(done, "source not found")


def test_empty_source(tmp_path):
    (tmp_path / "empty").mkdir()
    done = embedscale("run", str(tmp_path / "empty"), "--table", "t", "--data-dir", str(tmp_path))
    assert_one_line_error(done, "source is empty")


def test_bad_table_name(small_corpus, tmp_path):
    done = embedscale("run", str(small_corpus), "--table", "../x", "--data-dir", str(tmp_path))
    assert_one_line_error(done, "invalid table name '../x'")


def test_unknown_model(small_corpus, tmp_path, cluster):
    done = embedscale(
        "run",
        str(small_corpus),
        "--table",
        "t",
        "--data-dir",
        str(tmp_path),
        "--scheduler",
        cluster.client.scheduler.address,
        "--model",
        "no-such-model-anywhere",
    )
    assert_one_line_error(done, "cannot load model 'no-such-model-anywhere'")


def test_search_of_a_missing_table(tmp_path):
    done = embedscale("search", "nothing", "query", "--data-dir", str(tmp_path))
    assert_one_line_error(done, "no table 'nothing'")


def test_tenant_and_job_commands(tmp_path):
    from embedscale.jobs.service import JobService

    data = str(tmp_path / "data")
    created = embedscale(
        "tenants", "create", "acme", "--tier", "free", "--data-dir", data, "--json"
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["api_key"]
    assert key.startswith("es_")
    assert_one_line_error(
        embedscale("tenants", "create", "acme", "--tier", "free", "--data-dir", data),
        "already exists",
    )
    assert_one_line_error(
        embedscale("tenants", "create", "beta", "--tier", "gold", "--data-dir", data),
        "unknown tier 'gold'",
    )
    assert embedscale("tenants", "set-tier", "acme", "premium", "--data-dir", data).returncode == 0
    tenants = json.loads(embedscale("tenants", "list", "--data-dir", data, "--json").stdout)
    acme = next(t for t in tenants if t["name"] == "acme")
    assert (acme["tier"], acme["used_chunks"], acme["remaining_chunks"]) == ("premium", 0, 10000)
    rotated = json.loads(
        embedscale("tenants", "rotate-key", "acme", "--data-dir", data, "--json").stdout
    )["api_key"]
    assert rotated != key

    with JobService(data) as service:  # a queued job, as a crashed server would leave it
        job = service.submit("acme", {"table": "t", "texts": ["queued text"]})
    listed = json.loads(embedscale("jobs", "list", "--data-dir", data, "--json").stdout)
    assert [j["id"] for j in listed] == [job.id] and listed[0]["status"] == "queued"
    shown = json.loads(embedscale("jobs", "show", job.id, "--data-dir", data, "--json").stdout)
    assert shown["tenant"] == "acme" and shown["skipped"] == []
    cancelled = embedscale("jobs", "cancel", job.id, "--data-dir", data)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert_one_line_error(
        embedscale("jobs", "cancel", job.id, "--data-dir", data), "already cancelled"
    )
    assert_one_line_error(embedscale("jobs", "show", "nope", "--data-dir", data), "no job 'nope'")
    assert "no unfinished jobs" in embedscale("jobs", "resume", "--data-dir", data).stdout
