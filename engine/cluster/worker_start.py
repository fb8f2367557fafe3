"""How a local cluster makes its worker processes: forked from a server that imported the
engine's heavy modules once, rather than each spawned afresh.

A spawned worker imports torch, transformers, sentence-transformers, pyarrow and lance itself
before it embeds anything: about 8 s of CPU per worker here, paid again by every worker an
adaptive cluster adds and every worker Dask restarts. Python's forkserver pays it once per
process: the server imports those modules, then forks each worker from itself (measured with
two workers on this 2-core machine: 9.3 s from cluster start to the model loaded in both,
0.6 s for each cluster after the first; 16.7 s of CPU each, ~0 after the first).

Only modules that are safe to fork are preloaded: a fork copies no thread, so a module whose
import starts one (lancedb runs a background event loop) would be left broken in every worker,
and lance says it is not fork-safe (it warns on every fork of a process that imported it).
Each worker imports those itself. Workers on GPUs keep spawn (engine.cluster.start): their
CUDA setup is per worker and is never to be inherited. A module that is not installed is
skipped by the server.
"""

from __future__ import annotations

import multiprocessing
import os

from embedscale.engine.errors import EmbedscaleError

START_METHOD_ENV = "EMBEDSCALE_WORKER_START"  # forkserver (default where the OS has it) | spawn
START_METHODS = ("forkserver", "spawn")
PRELOAD = (
    "distributed",
    "numpy",
    "pandas",
    "pyarrow",
    "torch",
    "transformers",
    "sentence_transformers",
    "onnxruntime",
    "embedscale.engine.models.sentence_transformer",
)


def worker_start_method() -> str:
    """How local workers are started: $EMBEDSCALE_WORKER_START, else forkserver where the
    platform has it (not Windows), else spawn."""
    wanted = os.environ.get(START_METHOD_ENV, "").strip().lower()
    if wanted and wanted not in START_METHODS:
        raise EmbedscaleError(
            f"unknown {START_METHOD_ENV}={wanted!r}: use {' or '.join(START_METHODS)}"
        )
    available = multiprocessing.get_all_start_methods()
    if wanted:
        if wanted not in available:
            raise EmbedscaleError(f"{START_METHOD_ENV}={wanted} is not available on this platform")
        return wanted
    return "forkserver" if "forkserver" in available else "spawn"


def worker_start_config() -> dict[str, str]:
    """The Dask config that makes a local cluster's nannies start (and restart) workers the
    chosen way (set for the whole process by engine.cluster.start), with the forkserver's
    preload set (it is read when the server starts, on the first worker; a server already
    running keeps what it has)."""
    method = worker_start_method()
    if method == "forkserver":
        # distributed sets its own preload once, on its first forkserver context: let it,
        # then widen it, so that it never overwrites ours.
        import dask
        from distributed.utils import get_mp_context

        with dask.config.set({"distributed.worker.multiprocessing-method": method}):
            context = get_mp_context()
        context.set_forkserver_preload(list(PRELOAD))
    return {"distributed.worker.multiprocessing-method": method}
