"""In-process publish/subscribe of job events: the runner publishes, the API's WebSockets and
the CLI's progress bar subscribe. Callbacks run on the publisher's thread, so subscribers hand
events over to their own thread or loop (see `AsyncSubscription`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
Callback = Callable[[Event], None]


class EventBus:
    """Subscribers per job id, and to every job (`job_id=None`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str | None, list[Callback]] = {}

    def subscribe(self, job_id: str | None, callback: Callback) -> Callable[[], None]:
        """Call `callback` with each event of `job_id`; returns the function that unsubscribes."""
        with self._lock:
            self._subscribers.setdefault(job_id, []).append(callback)

        def unsubscribe() -> None:
            with self._lock:
                callbacks = self._subscribers.get(job_id, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._subscribers.pop(job_id, None)

        return unsubscribe

    def publish(self, job_id: str, event: Event) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(job_id, ())) + list(
                self._subscribers.get(None, ())
            )
        for callback in callbacks:
            callback(event)


class AsyncSubscription:
    """Events of one job delivered into an asyncio queue of the subscribing loop."""

    def __init__(self, bus: EventBus, job_id: str) -> None:
        self._loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self._unsubscribe = bus.subscribe(job_id, self._deliver)

    def _deliver(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def close(self) -> None:
        self._unsubscribe()
