"""Credentials never reach a log line: API keys in query strings (`?token=`, what a WebSocket
client sends when it cannot set headers) and `Bearer <key>` are replaced by `***`.

uvicorn's access log keeps the request path in `record.args` (its formatter unpacks them), so
the filter rewrites each argument and the message template, keeping the shape of args; only a
key split between the two ('Bearer %s', key) makes it format the message itself.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"
SECRET_PARAMS = ("token", "api_key", "key", "access_token")
_QUERY_SECRET = re.compile(r"(?i)([?&;](?:" + "|".join(SECRET_PARAMS) + r")=)[^&;#\s\"']+")
_BEARER = re.compile(r"(?i)(\bbearer\s+)(?!%)[^\s\"',;]+")  # not a '%s' of a template


def redact(text: str) -> str:
    """`text` with the values of secret query parameters and bearer keys replaced by ***."""
    return _BEARER.sub(r"\g<1>" + REDACTED, _QUERY_SECRET.sub(r"\g<1>" + REDACTED, text))


class RedactSecrets(logging.Filter):
    """A logging filter (for handlers, so it sees propagated records too) that redacts."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        if record.args:  # a secret split between template and argument ('Bearer %s', key)
            try:
                message = record.getMessage()
            except Exception:  # a broken record: logging reports it itself
                return True
            if redact(message) != message:
                record.msg, record.args = redact(message), ()
        return True


def _redact_arg(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def log_config(base: dict[str, Any]) -> dict[str, Any]:
    """A copy of a logging dictConfig (uvicorn's LOGGING_CONFIG) with RedactSecrets on every
    handler."""
    config = {
        **base,
        "filters": {**base.get("filters", {}), "redact_secrets": {"()": RedactSecrets}},
    }
    config["handlers"] = {
        name: {**handler, "filters": [*handler.get("filters", []), "redact_secrets"]}
        for name, handler in base.get("handlers", {}).items()
    }
    return config
