"""Fault injection for the exactly-once tests: worker plugins that wrap the engine's fragment
writer on every worker so that the first write in the whole cluster fails after its files are
written (the worst moment: orphan fragments exist). A marker file makes it happen once across
processes and worker restarts."""
from __future__ import annotations

import os

from distributed.diagnostics.plugin import WorkerPlugin


class _WrapFragmentWriter(WorkerPlugin):
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def setup(self, worker) -> None:
        from engine import sink

        self._original = original = sink.write_fragments
        plugin = self

        def write_then_fault(uri, rows):
            fragments = original(uri, rows)
            try:
                os.close(os.open(plugin.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return fragments  # the fault already happened once
            plugin.fault()
            return fragments

        sink.write_fragments = write_then_fault

    def teardown(self, worker) -> None:
        from engine import sink

        sink.write_fragments = self._original

    def fault(self) -> None:
        raise NotImplementedError


class FailOnce(_WrapFragmentWriter):
    """The task raises once; Dask retries it."""

    name = "fault-fail-once"

    def fault(self) -> None:
        raise RuntimeError("injected failure after writing fragments")


class KillWorkerOnce(_WrapFragmentWriter):
    """The worker process dies once, mid-task; the nanny restarts it and the scheduler re-runs
    its tasks elsewhere."""

    name = "fault-kill-worker-once"

    def fault(self) -> None:
        os._exit(1)


class FailAlways(WorkerPlugin):
    """Every partition written to a table whose path contains `needle` fails; with `kill`,
    it kills its worker instead, as a tenant's file that exhausts a worker's memory would."""

    name = "fault-fail-always"

    def __init__(self, needle: str, kill: bool = False) -> None:
        self.needle = needle
        self.kill = kill

    def setup(self, worker) -> None:
        from engine import sink

        self._original = original = sink.write_fragments
        needle, kill = self.needle, self.kill

        def write_or_fail(uri, rows):
            if needle in uri and kill:
                os._exit(1)
            if needle in uri:
                raise OSError(f"injected: disk full writing {uri}")
            return original(uri, rows)

        sink.write_fragments = write_or_fail

    def teardown(self, worker) -> None:
        from engine import sink

        sink.write_fragments = self._original
