"""One configuration for every command: flags over EMBEDSCALE_* variables over the defaults."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import chdir
from pathlib import Path

import pytest

from embedscale.api.cli.main import build_parser, main
from embedscale.api.settings import DEFAULT_DATA_DIR, Settings
from embedscale.api.startup import cluster_spec
from embedscale.jobs.service import JobService
from embedscale.jobs.states import check_transition
from tests.helpers import embedscale_in_process


def embedscale(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The command in this process (tests.helpers), in `cwd`, with no EMBEDSCALE_* variable but
    those of `env`."""
    unset = tuple(k for k in os.environ if k.startswith("EMBEDSCALE_") and k not in env)
    with chdir(cwd):
        return embedscale_in_process(*args, env=env, unset=unset)


def test_the_data_dir_variable_holds_for_tenants_and_jobs(tmp_path):
    data = tmp_path / "from-env"
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text(
        "tiers:\n  gold: {daily_chunks: 5, max_concurrent_jobs: 1}\n"
        "  unlimited: {daily_chunks: null, max_concurrent_jobs: null}\n"
    )
    env = {"EMBEDSCALE_DATA_DIR": str(data), "EMBEDSCALE_TIERS_FILE": str(tiers)}
    created = embedscale(
        "tenants", "create", "acme", "--tier", "gold", "--json", cwd=tmp_path, **env
    )
    assert created.returncode == 0, created.stderr
    assert (data / "embedscale.duckdb").is_file()
    assert not (tmp_path / DEFAULT_DATA_DIR).exists()  # the default was not used

    with JobService(data, tiers_file=tiers) as service:
        job = service.submit("acme", {"table": "t", "texts": ["a text"]})
    listed = embedscale("jobs", "list", "--json", cwd=tmp_path, **env)
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)] == [job.id]
    tenants = embedscale("tenants", "list", "--json", cwd=tmp_path, **env)
    assert {t["name"]: t["remaining_chunks"] for t in json.loads(tenants.stdout)} == {
        "acme": 5,
        "local": None,
    }

    # A flag wins over the variable.
    elsewhere = embedscale(
        "tenants", "list", "--json", "--data-dir", str(tmp_path / "other"), cwd=tmp_path, **env
    )
    assert [t["name"] for t in json.loads(elsewhere.stdout)] == ["local"]


def test_every_command_reads_its_settings_the_same_way(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBEDSCALE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EMBEDSCALE_WORKERS", "3")
    parser = build_parser()
    for argv in (
        ["run", "src", "--table", "t"],
        ["search", "t", "q"],
        ["jobs", "list"],
        ["tenants", "list"],
        ["jobs", "resume"],
        ["serve"],
    ):
        assert Settings.from_args(parser.parse_args(argv)).data_dir == tmp_path, argv
    run = Settings.from_args(parser.parse_args(["run", "src", "--table", "t"]))
    assert cluster_spec(run).n_workers == 3
    flagged = Settings.from_args(
        parser.parse_args(["run", "src", "--table", "t", "--workers", "1"])
    )
    assert cluster_spec(flagged).n_workers == 1
    assert cluster_spec(flagged, "critical").log_level == "critical"
    assert cluster_spec(flagged).dashboard_address == "127.0.0.1:8787"


def test_a_bad_setting_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("EMBEDSCALE_WORKERS", "0")
    assert main(["jobs", "resume"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["embedscale: error: --workers: Input should be greater than or equal to 1"]


def test_an_illegal_transition_is_one_line(monkeypatch, tmp_path, capsys):
    def cancel(self, job_id, tenant=None):
        check_transition(job_id, "succeeded", "cancelling", [("queued", "t0"), ("succeeded", "t1")])

    monkeypatch.setattr(JobService, "cancel", cancel)
    assert main(["jobs", "cancel", "j1", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "embedscale: error: job j1: cannot go from succeeded to cancelling "
        "(history: queued -> succeeded)"
    ]


@pytest.mark.parametrize("argv", [["jobs", "list", "--status", "done"]])
def test_statuses_come_from_the_enum(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "choose from 'queued', 'running', 'cancelling'" in capsys.readouterr().err
