"""Which job and tenant a log line is about, without passing them to every `log.*` call.

The fields live in a context variable holding a dict. `log_fields(...)` opens a scope (a new
dict, the enclosing fields copied in) for a block of code: the runner wraps its handling of one
job, the API one request. `add_log_fields(...)` adds to the scope already open, in place, so a
field learnt late reaches every line of the scope: the tenant found by a dependency that runs in
a worker thread (which gets a copy of the context, but the same dict), or the id of the job a
request created, on uvicorn's access line written after the route returned.

`LogContextFilter` copies the fields onto each record; the formatters print them (the JSON one
as keys, see api/server/log_format.py). It is a handler filter, so records propagated from any
logger
get the fields too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
FIELDS = ("job_id", "tenant")  # what a log line may be about, in the order printed
_fields: ContextVar[dict[str, str] | None] = ContextVar("embedscale_log_fields", default=None)


@contextmanager
def log_fields(**fields: str | None) -> Iterator[dict[str, str]]:
    """A scope whose log lines carry `fields` (None values are left out) on top of the
    enclosing scope's; yields the scope's dict."""
    scope = {**(_fields.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _fields.set(scope)
    try:
        yield scope
    finally:
        _fields.reset(token)


def add_log_fields(**fields: str | None) -> None:
    """Add `fields` to the scope open here (seen by everything sharing that scope); without a
    scope, to this context only."""
    scope = _fields.get()
    values = {k: v for k, v in fields.items() if v is not None}
    if scope is None:
        _fields.set(values)
    else:
        scope.update(values)


def current_log_fields() -> dict[str, str]:
    """The fields of the scope open here (a copy)."""
    return dict(_fields.get() or {})


class LogContextFilter(logging.Filter):
    """Sets `job_id` and `tenant` on each record from the scope it was logged in. A value
    given with `extra=` wins; a field the scope lacks is set to None so formats can name it."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = _fields.get() or {}
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, scope.get(name))
        return True


def call_with_log_fields(fields: Mapping[str, str | None], fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a scope of `fields`: for work handed to a thread pool, whose threads do
    not inherit the submitter's context."""
    with log_fields(**fields):
        return fn(*args)
