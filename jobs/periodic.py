"""A step run on a daemon thread at once and then every few seconds, until stopped: the loops
of the schedules and of retention. A failing step is logged and the next one tries again (a
store outage, which passes, as one line rather than a traceback each time)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from embedscale.jobs.errors import StoreUnavailableError


class PeriodicThread:
    """Runs `step` now and every `every_s` seconds on a thread named `name`."""

    def __init__(
        self, name: str, step: Callable[[], object], every_s: float, log: logging.Logger, what: str
    ) -> None:
        self.name, self.step, self.every_s = name, step, every_s
        self._log, self._what = log, what  # what a failure is logged as: "schedules: tick"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except StoreUnavailableError as exc:  # a full disk: the next step tries again
                self._log.warning("%s failed: %s", self._what, exc)
            except Exception:  # the loop outlives a bad step
                self._log.exception("%s failed", self._what)
            self._stop.wait(self.every_s)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the step under way, if any."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
