"""Small helpers for tests: reading back what a job wrote, waiting for a job over HTTP, and
`embedscale verify` after a fault test."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import httpx
import lance
import pyarrow as pa

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.jobs.local_run import EmbedRequest, RunSummary, run_embedding


def read_rows(data_dir: Path, table: str, columns: list[str] | None = None) -> pa.Table:
    return lance.dataset(ChunkTable(data_dir, table).uri).to_table(columns=columns)


def run(cluster, **kw) -> RunSummary:
    kw.setdefault("chunk_tokens", 64)
    kw.setdefault("overlap_tokens", 8)
    return run_embedding(EmbedRequest(**kw), cluster)


def wait_done(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict:
    """A job's record once it has ended, polled through the API."""
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


@contextmanager
def logged(logger_name: str) -> Iterator[list[str]]:
    """The messages a logger emits inside the block (pytest's caplog is off: -p no:logging)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def embedscale_in_process(
    *args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`embedscale ARGS` run in this process through the console script's `main`, with `env`
    added to the environment and `unset` taken out: its exit status, stdout and stderr, as
    `subprocess.run(..., capture_output=True, text=True)` gives them for the real command. No
    interpreter, torch or model to load again, and no cluster of its own when the arguments name
    one with --scheduler; argparse's exits (usage errors, --help) are statuses too."""
    from embedscale.api.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env or {}), redirect_stdout(out), redirect_stderr(err):
        for name in unset:
            os.environ.pop(name, None)
        try:
            status = main(list(args))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(
        ["embedscale", *args], status, out.getvalue(), err.getvalue()
    )


def verify(
    data_dir: str | Path, table: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict, str]:
    """`embedscale verify TABLE --data-dir DATA_DIR ARGS --json` run in this process, with
    `env` added to the environment (object-store credentials): (exit status, the report,
    stderr)."""
    from embedscale.api.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env or {}), redirect_stdout(out), redirect_stderr(err):
        status = main(["verify", table, "--data-dir", str(data_dir), "--json", *args])
    return status, (json.loads(out.getvalue()) if out.getvalue() else {}), err.getvalue()


def assert_verified(
    data_dir: str | Path, table: str, *args: str, env: dict[str, str] | None = None
) -> dict:
    """What a fault test ends with: the table matches its ledger (`embedscale verify` exits 0
    with no problem at all, warnings included). The data dir's DuckDB file must be closed."""
    status, report, err = verify(data_dir, table, *args, env=env)
    assert status == 0 and report["ok"] and report["problems"] == [], err or report
    return report


def assert_verified_by_api(admin: httpx.Client, table: str, tenant: str) -> dict:
    """The same through a running server's GET /v1/tables/{name}/verify (the admin's client)."""
    answer = admin.get(f"/v1/tables/{table}/verify", params={"tenant": tenant})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["ok"] and report["problems"] == [], report
    return report
