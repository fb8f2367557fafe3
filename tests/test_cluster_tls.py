"""TLS between scheduler, workers and embedscale's client, from a cluster spec's `tls` section:
throwaway certificates (trustme), a job over tls:// on a LocalCluster we start and on separate
`dask scheduler`/`dask worker` processes, and a plain-TCP client refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from embedscale.engine.cluster.start import ClusterSpec, start_cluster
from embedscale.engine.errors import EmbedscaleError
from embedscale.jobs.local_run import EmbedRequest, run_embedding
from tests.conftest import SAMPLE_CORPUS
from tests.dask_processes import DaskProcesses, run_cli_in_process

pytestmark = pytest.mark.slow


@pytest.fixture
def tls_files(tmp_path) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "ca_file": tmp_path / "ca.pem",
        "cert_file": tmp_path / "cert.pem",
        "key_file": tmp_path / "key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca_file"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert_file"]))
    cert.private_key_pem.write_to_path(str(files["key_file"]))
    return {k: str(v) for k, v in files.items()}


def test_a_job_runs_on_a_local_cluster_over_tls(tls_files, tmp_path):
    with start_cluster(ClusterSpec(n_workers=1, dashboard_address=":0", tls=tls_files)) as cluster:
        address = cluster.client.scheduler.address
        assert address.startswith("tls://")
        summary = run_embedding(
            EmbedRequest(table="t", texts=["over tls", "encrypted"], data_dir=str(tmp_path / "d")),
            cluster,
        )
        assert summary.ok and summary.chunks == 2

        # A client without the certificates gets a clear error, whatever address it uses.
        for plain in (address.replace("tls://", "tcp://"), address):
            with pytest.raises(EmbedscaleError) as err:
                start_cluster(ClusterSpec(kind="address", address=plain))
            message = str(err.value)
            assert message.startswith(f"cannot reach the Dask scheduler at {plain}")
            assert "\n" not in message
        assert "tls section" in message or "TLS" in message


def test_run_over_tls_on_separate_scheduler_and_worker_processes(tls_files, tmp_path):
    security = (
        "--tls-ca-file",
        tls_files["ca_file"],
        "--tls-cert",
        tls_files["cert_file"],
        "--tls-key",
        tls_files["key_file"],
    )
    procs = DaskProcesses(tmp_path / "dask", workers=1, scheme="tls", security_args=security)
    spec = tmp_path / "remote-tls.yaml"
    spec.write_text(yaml.safe_dump({"kind": "address", "address": procs.address, "tls": tls_files}))
    try:  # the command in this process: the processes of the cluster are the point here
        done = run_cli_in_process(
            "run",
            str(SAMPLE_CORPUS / "notes"),
            "--table",
            "t",
            "--cluster",
            str(spec),
            "--data-dir",
            str(tmp_path / "d"),
            "--json",
        )
    finally:
        procs.stop()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"


def test_a_tls_file_that_does_not_exist_is_one_line(tls_files, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"kind": "local", "tls": {**tls_files, "cert_file": str(tmp_path / "missing.pem")}}
        )
    )
    done = run_cli_in_process(
        "run",
        str(SAMPLE_CORPUS / "notes"),
        "--table",
        "t",
        "--cluster",
        str(spec),
        "--data-dir",
        str(tmp_path / "d"),
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"embedscale: error: cluster spec {spec}: tls: cert_file "
        f"{tmp_path / 'missing.pem'} does not exist"
    )
    assert not Path(tmp_path / "d").exists()
