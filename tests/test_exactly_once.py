"""A retried partition never appears twice: a task that fails once, a worker killed mid-task."""

from __future__ import annotations

import cloudpickle
import pytest

from tests import faults
from tests.conftest import copy_small_corpus
from tests.helpers import assert_verified, read_rows, run

pytestmark = pytest.mark.slow

# The fault plugins live in the tests, which workers cannot import: ship them by value.
cloudpickle.register_pickle_by_value(faults)


@pytest.fixture(scope="module")
def reference_ids(cluster, tmp_path_factory):
    """The ids of a run without faults, once for the module's faults: on small_corpus's files
    (a chunk's id depends on its document's id, its place and the model, not on the folder)."""
    folder = tmp_path_factory.mktemp("reference")
    data_dir = folder / "data"
    run(
        cluster,
        source=str(copy_small_corpus(folder)),
        table="reference",
        data_dir=str(data_dir),
        partition_bytes=4096,
    )
    ids = read_rows(data_dir, "reference").column("id").to_pylist()
    assert len(ids) == len(set(ids)) > 20
    return sorted(ids)


@pytest.mark.parametrize("plugin_class", [faults.FailOnce, faults.KillWorkerOnce])
def test_exact_ids_after_a_fault(
    cluster, small_corpus, data_dir, tmp_path, reference_ids, plugin_class
):
    marker = tmp_path / "fault-happened"
    plugin = plugin_class(str(marker))
    cluster.client.register_plugin(plugin)
    try:
        summary = run(
            cluster,
            source=str(small_corpus),
            table="faulty",
            data_dir=str(data_dir),
            partition_bytes=4096,
        )
    finally:
        cluster.client.unregister_worker_plugin(plugin.name)
    assert marker.exists(), "the fault was never injected"
    assert summary.ok, summary.error
    ids = read_rows(data_dir, "faulty").column("id").to_pylist()
    assert sorted(ids) == reference_ids  # every chunk once: none lost, none doubled
    assert summary.chunks == len(reference_ids)
    assert_verified(data_dir, "faulty")  # and the table matches its ledger, job by job
