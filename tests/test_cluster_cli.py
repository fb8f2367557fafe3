"""`embedscale cluster up` / `cluster status`, the example specs, and the `manager` kind (any
class with Dask's Cluster interface, as dask-kubernetes and dask-jobqueue provide)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from embedscale.engine.cluster.start import ClusterSpec, start_cluster
from embedscale.engine.errors import EmbedscaleError
from tests.api_server import free_port
from tests.conftest import SAMPLE_CORPUS
from tests.dask_processes import ROOT, clean_env, run_cli, run_cli_in_process
from tests.helpers import run

SPECS = sorted((ROOT / "cluster_specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_example_spec_loads(path):
    spec = ClusterSpec.from_yaml(path)
    if spec.kind == "manager":
        module, _, name = spec.manager.rpartition(".")
        assert module.startswith(("dask_kubernetes", "dask_jobqueue")) and name[0].isupper()
        assert spec.manager_options and spec.adaptive["maximum"] > spec.adaptive["minimum"]


def test_a_manager_spec_starts_its_class_and_runs_a_job(tmp_path):
    spec = ClusterSpec(
        kind="manager",
        manager="distributed.LocalCluster",
        manager_options={
            "n_workers": 1,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        },
    )
    with start_cluster(spec) as cluster:
        summary = run(cluster, table="t", texts=["from a cluster manager"], data_dir=str(tmp_path))
        assert summary.ok and summary.chunks == 1
    with pytest.raises(EmbedscaleError, match="pip install dask-jobqueue"):
        start_cluster(ClusterSpec(kind="manager", manager="dask_jobqueue.NoSuchCluster"))


@pytest.mark.slow
def test_cluster_up_runs_jobs_and_status_shows_its_workers(tmp_path):
    port = free_port()
    spec = tmp_path / "up.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"kind": "local", "n_workers": 1, "threads_per_worker": 1, "dashboard_address": "none"}
        )
    )
    log = (tmp_path / "up.log").open("w+")
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedscale",
            "cluster",
            "up",
            "--spec",
            str(spec),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C" not in Path(log.name).read_text():
            assert up.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.25)
        printed = Path(log.name).read_text()
        address = f"tcp://127.0.0.1:{port}"
        assert f"scheduler:  {address}" in printed and "workers:    1 x 1" in printed

        # The commands that only talk to the cluster run in this process (tests.dask_processes):
        # `cluster up` above is the command under test in a process of its own.
        before = run_cli_in_process("cluster", "status", "--scheduler", address, "--json")
        assert before.returncode == 0, before.stderr
        workers = json.loads(before.stdout)["workers"]
        assert [(w["threads"], w["gpus"], w["models"]) for w in workers] == [(1, 0, [])]
        assert workers[0]["memory_limit"] > 0

        done = run_cli_in_process(
            "run",
            str(SAMPLE_CORPUS / "notes"),
            "--table",
            "t",
            "--scheduler",
            address,
            "--data-dir",
            str(tmp_path / "data"),
            "--json",
        )
        assert done.returncode == 0, done.stderr
        after = json.loads(
            run_cli_in_process("cluster", "status", "--scheduler", address, "--json").stdout
        )["workers"]
        assert after[0]["models"] == ["all-MiniLM-L6-v2"]
        # With its precision (conftest's guard of 1.0 keeps fp32; measured where bf16 exists).
        assert after[0]["model_precisions"][0].startswith("all-MiniLM-L6-v2 (fp32")
        table = run_cli_in_process("cluster", "status", "--scheduler", address)
        assert "all-MiniLM-L6-v2" in table.stdout and "1 workers, 1 threads" in table.stdout
    finally:
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(timeout=60) == 0
        log.close()


def test_cluster_up_refuses_an_address_spec(tmp_path):
    done = run_cli_in_process(
        "cluster", "up", "--spec", str(ROOT / "cluster_specs" / "remote.yaml")
    )
    assert done.returncode == 1 and "cluster up starts a cluster" in done.stderr


def test_a_manager_spec_with_tls_and_a_busy_port_are_one_line(tmp_path):
    with pytest.raises(EmbedscaleError, match="give its security in manager_options"):
        ClusterSpec(
            kind="manager",
            manager="distributed.LocalCluster",
            tls={"ca_file": "a", "cert_file": "b", "key_file": "c"},
        ).checked()
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("cluster", "up", "--workers", "1", "--port", str(port), timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot start the scheduler on 127.0.0.1:{port}" in lines[0]
