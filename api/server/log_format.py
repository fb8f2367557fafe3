"""How `serve` logs: text (the default) or one JSON object a line (`--log-format json`,
EMBEDSCALE_LOG_FORMAT=json), for log shippers that index fields rather than parse text.

Every handler, ours, uvicorn's and Dask's (the scheduler of a cluster we start runs in this
process and logs through its own handler), gets the same two filters: RedactSecrets (no API key
reaches a line) and LogContextFilter (the job and tenant a line is about, jobs/log_context.py).
In JSON each line has `time`, `level`, `logger`, `message`, then `job_id` and `tenant` where
they apply, `exception` for a traceback, and uvicorn's access lines their request's parts.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any, Literal

from embedscale.api.server.log_redaction import RedactSecrets, log_config, redact
from embedscale.jobs.log_context import FIELDS, LogContextFilter

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# uvicorn.access formats its args as (client, method, path with query, http version, status).
_ACCESS_ARGS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if (value := getattr(record, name, None)) is not None:
                line[name] = value
        if (
            record.name == "uvicorn.access"
            and isinstance(record.args, tuple)
            and len(record.args) == len(_ACCESS_ARGS)
        ):
            line.update(zip(_ACCESS_ARGS, record.args, strict=True))
        if record.exc_info:
            # RedactSecrets sees the message, not the traceback: redact that here.
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter of a format name."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def prepare_handler(handler: logging.Handler, log_format: LogFormat | None = None) -> None:
    """Give `handler` the redaction and context filters (once), and with `log_format` its
    formatter."""
    for kind in (RedactSecrets, LogContextFilter):
        if not any(isinstance(f, kind) for f in handler.filters):
            handler.addFilter(kind())
    if log_format is not None:
        handler.setFormatter(formatter(log_format))


def configure_logging(log_format: LogFormat, level: int = logging.INFO) -> None:
    """Root logging for `serve` in `log_format`; in JSON, the loggers that own handlers
    (Dask's, tornado's) print JSON too, so that every line of the process parses."""
    logging.basicConfig(level=level, format=TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        prepare_handler(handler, log_format)
    if log_format != "json":
        return
    logging.captureWarnings(True)  # a warnings.warn (Dask's "port in use") is a JSON line too
    for logger in list(logging.getLogger().manager.loggerDict.values()):
        for handler in getattr(logger, "handlers", ()):
            prepare_handler(handler, log_format)
    # The worker processes of a cluster `serve` starts write to its stderr too. Dask sets up
    # their logging from its config as it is imported there, and they inherit this variable.
    os.environ["DASK_DISTRIBUTED__LOGGING"] = repr(WORKER_LOGGING)


# Dask's "new style" logging config (a logging.dictConfig) for worker processes: JSON lines,
# keys redacted; the levels are Dask's defaults. The root logger's handler takes every other
# logger's warnings (embedscale's own: a CPU without bf16 kernels, say), which Python would
# otherwise print bare, as its last resort.
WORKER_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
    "filters": {"redact_secrets": {"()": "embedscale.api.server.log_redaction.RedactSecrets"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["redact_secrets"],
        }
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        name: {"level": level, "handlers": ["stderr"], "propagate": False}
        for name, level in (
            ("distributed", "INFO"),
            ("distributed.client", "WARNING"),
            ("bokeh", "ERROR"),
            ("tornado", "CRITICAL"),
            ("tornado.application", "ERROR"),
        )
    },
}


def uvicorn_log_config(base: dict[str, Any], log_format: LogFormat) -> dict[str, Any]:
    """A copy of uvicorn's dictConfig with our filters on every handler (RedactSecrets through
    log_redaction.log_config) and, in JSON, our formatter in place of uvicorn's."""
    config = log_config(base)
    config["filters"]["log_context"] = {"()": LogContextFilter}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler["filters"], "log_context"]
    if log_format == "json":
        config["formatters"] = {name: {"()": JsonFormatter} for name in base.get("formatters", {})}
    return config
