"""No tenant text in a worker's log. When a task raises, Dask's worker logs "Compute Failed" with
the exception's repr: a KeyError repeats a record's key, a parser may quote the line it choked
on, a UnicodeDecodeError's repr holds every byte it was decoding. A filter on the worker's logger
scrubs that repr as engine.errors.error_line scrubs a job's error (quoted values removed, one
short line); the task's own repr names document references only (engine.sources.partitions). A
WorkerPlugin installs the filter on every worker, of a cluster we start or one we connect to,
and on workers that join later.
"""

from __future__ import annotations

import logging

from distributed.diagnostics.plugin import WorkerPlugin

from embedscale.engine.errors import scrub_message

WORKER_LOGGER = "distributed.worker"  # where Dask logs "Compute Failed"
_TASK_FAILED = "Compute Failed"
_EXCEPTION_ARG = 3  # (key, state, task, exception repr, traceback) of that line


class ScrubTaskErrors(logging.Filter):
    """Rewrites Dask's "Compute Failed" records: the exception's repr scrubbed. The traceback
    it also logs is code lines only, and stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(record.msg, str)
            and record.msg.startswith(_TASK_FAILED)
            and isinstance(args, tuple)
            and len(args) > _EXCEPTION_ARG
        ):
            scrubbed = list(args)
            scrubbed[_EXCEPTION_ARG] = scrub_message(str(args[_EXCEPTION_ARG]))
            record.args = tuple(scrubbed)
        return True


def install_scrubbing() -> None:
    """Put the filter on this process's worker logger (once)."""
    logger = logging.getLogger(WORKER_LOGGER)
    if not any(isinstance(f, ScrubTaskErrors) for f in logger.filters):
        logger.addFilter(ScrubTaskErrors())


class ScrubTaskErrorsPlugin(WorkerPlugin):
    """Installs ScrubTaskErrors on each worker of the cluster, those joining later too."""

    name = "embedscale-scrub-task-errors"
    idempotent = True  # every service registering it again changes nothing

    def setup(self, worker) -> None:
        install_scrubbing()
