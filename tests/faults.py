"""Fault injection: worker plugins that wrap the engine's fragment writer on every worker. The
exactly-once faults make the first write in the whole cluster fail after its files are written
(the worst moment: orphan fragments exist); a marker file makes it happen once across processes
and worker restarts. HoldWrites holds a job's partitions until the test lets them go."""

from __future__ import annotations

import os
import time
import uuid

from distributed.diagnostics.plugin import WorkerPlugin


class _WrapFragmentWriter(WorkerPlugin):
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def setup(self, worker) -> None:
        from embedscale.engine.sink import lance_sink as sink

        self._original = original = sink.write_fragments
        plugin = self

        def write_then_fault(uri, rows, *storage):
            fragments = original(uri, rows, *storage)
            try:
                os.close(os.open(plugin.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return fragments  # the fault already happened once
            plugin.fault()
            return fragments

        sink.write_fragments = write_then_fault

    def teardown(self, worker) -> None:
        from embedscale.engine.sink import lance_sink as sink

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


class KillHolderOnce(WorkerPlugin):
    """The first worker to be sent the next slice of a partition it holds mid-way
    (engine.tasks.slices) dies before running it, once across the cluster: the slice runs on another
    worker, which has none of the partition's state."""

    name = "fault-kill-holder-once"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def setup(self, worker) -> None:
        from embedscale.engine.tasks import slices

        self._original = original = slices.STATES.take
        marker = self.marker

        def take_or_die(cursor):
            state = original(cursor)
            if state is not None:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return state
                os._exit(1)
            return state

        slices.STATES.take = take_or_die

    def teardown(self, worker) -> None:
        from embedscale.engine.tasks import slices

        slices.STATES.take = self._original


class KillOnPluginAdd(WorkerPlugin):
    """The first worker sent a plugin whose name contains `needle` dies while it receives it,
    once across the cluster: the scheduler's broadcast of that plugin loses a worker mid-way,
    as when an adaptive cluster retires one."""

    name = "fault-kill-on-plugin-add"

    def __init__(self, marker: str, needle: str) -> None:
        self.marker, self.needle = marker, needle

    def setup(self, worker) -> None:
        self._original = original = worker.handlers["plugin-add"]
        marker, needle = self.marker, self.needle

        async def add_or_die(plugin, name=None, catch_errors=True):
            if needle in (name or ""):
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            return await original(plugin=plugin, name=name, catch_errors=catch_errors)

        worker.handlers["plugin-add"] = add_or_die

    def teardown(self, worker) -> None:
        worker.handlers["plugin-add"] = self._original


class FailAlways(WorkerPlugin):
    """Every partition written to a table whose path contains `needle` fails; with `kill`,
    it kills its worker instead, as a tenant's file that exhausts a worker's memory would."""

    name = "fault-fail-always"

    def __init__(self, needle: str, kill: bool = False) -> None:
        self.needle = needle
        self.kill = kill

    def setup(self, worker) -> None:
        from embedscale.engine.sink import lance_sink as sink

        self._original = original = sink.write_fragments
        needle, kill = self.needle, self.kill

        def write_or_fail(uri, rows, *storage):
            if needle in uri and kill:
                os._exit(1)
            if needle in uri:
                raise OSError(f"injected: disk full writing {uri}")
            return original(uri, rows, *storage)

        sink.write_fragments = write_or_fail

    def teardown(self, worker) -> None:
        from embedscale.engine.sink import lance_sink as sink

        sink.write_fragments = self._original


class HoldWrites(WorkerPlugin):
    """Partitions written to a table whose path contains `needle` wait before writing until
    the test lets them go: one per `let_one()`, all of them after `open()`. A held partition
    claims a token file to go, so the test knows exactly how many went through (and, with
    `part`, of which table), whatever the timing. A waiting task secedes from its worker's
    thread pool: held partitions keep their slots in the runner but no worker thread, so other
    jobs' partitions still run."""

    name = "fault-hold-writes"

    def __init__(self, needle: str, folder: str, timeout: float = 300.0) -> None:
        self.needle = needle
        self.folder = folder
        self.timeout = timeout  # a test that never opens the gate fails instead of hanging
        os.makedirs(folder, exist_ok=True)
        self._tokens = 0

    def let_one(self, part: str = "") -> None:
        """Let one more held partition write: any, or one whose table path contains `part`."""
        self._tokens += 1
        _write(os.path.join(self.folder, f"token-{self._tokens}"), part)

    def open(self) -> None:
        """Let every partition write, now and later."""
        _write(os.path.join(self.folder, "open"), "")

    def held(self, part: str = "") -> int:
        """How many partitions wait now (of tables whose path contains `part`)."""
        return sum(part in uri for uri in self._files("held-").values())

    def _files(self, prefix: str) -> dict[str, str]:
        found = {}
        for name in os.listdir(self.folder):
            if name.startswith(prefix) and not name.endswith(".part"):
                try:
                    with open(os.path.join(self.folder, name)) as f:
                        found[name] = f.read()
                except FileNotFoundError:
                    continue  # claimed or let go meanwhile
        return found

    def _wait_for_turn(self, uri: str) -> None:
        from distributed import rejoin, secede

        secede()
        mark = os.path.join(self.folder, f"held-{uuid.uuid4().hex}")
        _write(mark, uri)
        try:
            deadline = time.monotonic() + self.timeout
            while not os.path.exists(os.path.join(self.folder, "open")):
                for token, part in sorted(self._files("token-").items()):
                    if part not in uri:
                        continue
                    try:
                        os.remove(os.path.join(self.folder, token))  # one task claims it
                        return
                    except FileNotFoundError:
                        continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"held writes to '{uri}' were never let go")
                time.sleep(0.02)
        finally:
            os.remove(mark)
            rejoin()

    def setup(self, worker) -> None:
        from embedscale.engine.sink import lance_sink as sink

        self._original = original = sink.write_fragments
        plugin = self

        def write_when_let_go(uri, rows, *storage):
            if plugin.needle in uri:
                plugin._wait_for_turn(uri)
            return original(uri, rows, *storage)

        sink.write_fragments = write_when_let_go

    def teardown(self, worker) -> None:
        from embedscale.engine.sink import lance_sink as sink

        sink.write_fragments = self._original


def _write(path: str, text: str) -> None:
    """Write a small file whole: written aside, then renamed, so no reader sees it half done."""
    with open(path + ".part", "w") as f:
        f.write(text)
    os.replace(path + ".part", path)
