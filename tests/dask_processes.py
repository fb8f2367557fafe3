"""Processes as on other hosts: a Dask cluster of separate OS processes (`dask scheduler` and
`dask worker` started from the command line on 127.0.0.1, each in its own session, so a test can
kill a worker and its nanny together, as a lost host), and `embedscale` commands run the same
way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.api_server import free_port

ROOT = Path(__file__).resolve().parents[1]


def dask_command() -> str:
    return str(Path(sys.executable).parent / "dask")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a process on another host: none of this one's AWS credentials (the
    job carries what workers need), the project importable, the hub never reached. The
    precision settings stay (tests/conftest.py: the suite runs fp32)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "EMBEDSCALE_")) or k.startswith("EMBEDSCALE_PRECISION_")
    }
    return {**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **extra}


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`embedscale ARGS` in a process of its own, with `clean_env` plus `env`."""
    return subprocess.run(
        [sys.executable, "-m", "embedscale", *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_in_process(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """What `run_cli` gives, with the command run in this process (tests.helpers), in `cwd`,
    with none of this process's AWS_* and EMBEDSCALE_* variables but those of `env`: for the
    command's refusals and for jobs on a cluster named with --scheduler."""
    from contextlib import chdir

    from tests.helpers import embedscale_in_process

    env = env or {}
    unset = tuple(k for k in os.environ if k.startswith(("AWS_", "EMBEDSCALE_")) and k not in env)
    with chdir(cwd):
        return embedscale_in_process(*args, env=env, unset=unset)


class DaskProcesses:
    """A scheduler and named workers, each its own process group; `address` to connect."""

    def __init__(
        self,
        workdir: Path,
        workers: int = 2,
        scheme: str = "tcp",
        security_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"{scheme}://127.0.0.1:{self.port}"
        self.security_args = security_args
        self.processes: dict[str, subprocess.Popen] = {}
        self._scheduler_command = [
            dask_command(),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-dashboard",
            *(["--protocol", scheme] if scheme != "tcp" else []),
            *security_args,
        ]
        self._start("scheduler", self._scheduler_command)
        for n in range(1, workers + 1):
            self.start_worker(f"w{n}")

    def restart_scheduler(self) -> None:
        """Kill the scheduler as a lost host and start a fresh one at the same address, then
        start the workers again as their supervisor would (a Dask worker and its nanny close
        once their scheduler is gone); clients reconnect by themselves."""
        self.kill("scheduler")
        self._start("scheduler", self._scheduler_command)
        workers = [name for name in self.processes if name != "scheduler"]
        for name in workers:
            try:
                self.processes[name].wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill(name)
            self.start_worker(name)

    def _start(self, name: str, command: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        # Workers start in a folder of their own: no path relative to the test's works there.
        cwd = self.workdir / name
        cwd.mkdir(exist_ok=True)
        self.processes[name] = subprocess.Popen(
            command,
            cwd=cwd,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self, name: str) -> None:
        self._start(
            name,
            [
                dask_command(),
                "worker",
                self.address,
                "--name",
                name,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--host",
                "127.0.0.1",
                "--memory-limit",
                "4GiB",
                "--no-dashboard",
                *self.security_args,
            ],
        )

    def revive(self) -> None:
        """Start again the workers that are gone (killed by an earlier test of a module that
        shares these processes), under their names."""
        for name, process in list(self.processes.items()):
            if name != "scheduler" and process.poll() is not None:
                self.start_worker(name)

    def wait_for_workers(self, client, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while len(client.scheduler_info(n_workers=-1)["workers"]) < count:
            for name, p in self.processes.items():
                assert p.poll() is None, f"{name} exited; see {self.workdir / name}.log"
            assert time.monotonic() < deadline, "workers did not join the scheduler"
            time.sleep(0.25)

    def kill(self, name: str) -> None:
        """SIGKILL a process and everything it started (a worker's nanny and the worker): the
        host is gone, nothing gets to say goodbye."""
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()

    def stop(self) -> None:
        for p in self.processes.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.processes.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
