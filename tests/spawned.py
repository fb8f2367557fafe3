"""What tests run in spawned processes (several processes of one host), in a module light to
import: a spawned process imports the module of its target, and a test module's own imports
(the service, lance, torch and the rest) would cost each process seconds of CPU. Each target
imports what it needs itself."""

from __future__ import annotations

import os
import time
from pathlib import Path


def fake_export(folder, pipeline, target: Path) -> None:
    """A slow stand-in ONNX exporter that counts its runs in a file beside the cache."""
    with open(target.parents[1].parent / "runs", "a") as runs:
        runs.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    target.write_bytes(b"onnx")


def export_race(cache: str, folder: str, start) -> None:
    """One worker of a host: the host's export cache at `cache`, then, once all are ready
    (`start`, a barrier), the export of the model in `folder` through the cache."""
    from embedscale.engine.models import onnx_export
    from embedscale.engine.models.onnx_pipeline import read_pipeline

    os.environ[onnx_export.CACHE_ENV] = cache
    onnx_export.export = fake_export
    start.wait()
    path = onnx_export.exported_model(Path(folder), read_pipeline(Path(folder)))
    assert path.read_bytes() == b"onnx"


def commit_rows(uri: str, options: dict[str, str], tag: str, commits: int) -> None:
    """One writer's commits to the Lance table at `uri`, each from a dataset it just opened
    (another process's view)."""
    import lance
    import pyarrow as pa
    from lance.fragment import write_fragments

    for i in range(commits):
        rows = pa.table({"a": [f"{tag}-{i}"]})
        fragments = write_fragments(rows, uri, schema=rows.schema, storage_options=options)
        read = lance.dataset(uri, storage_options=options).version
        lance.LanceDataset.commit(
            uri,
            lance.Transaction(read_version=read, operation=lance.LanceOperation.Append(fragments)),
            storage_options=options,
        )
