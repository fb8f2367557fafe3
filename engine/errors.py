"""Domain errors of the engine. Each message names what was wrong, the value seen, and what to do.

The CLI and the API map these to one-line messages and status codes; nothing below them raises
HTTP or exits the process.
"""
from __future__ import annotations


class EmbedscaleError(Exception):
    """Base of every error embedscale raises on purpose."""


class SourceError(EmbedscaleError, ValueError):
    """A source path or glob that cannot be read as a whole (missing, empty, unsupported)."""


class EmptySourceError(SourceError):
    """A source that exists (or a glob that is well formed) but lists no document to read."""


class ModelError(EmbedscaleError, ValueError):
    """An unknown model name, or a model that cannot be loaded."""


class ChunkingError(EmbedscaleError, ValueError):
    """Chunk size or overlap that the model cannot accept."""


class TableError(EmbedscaleError, ValueError):
    """A table that cannot take this job: other model or dimension, bad name."""


class TableNotFoundError(TableError, LookupError):
    """No table of that name in the data dir (the API answers 404)."""


def error_line(exc: BaseException | None) -> str:
    """One line for a job record or a log: the exception's type and its message's first line."""
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class ProviderError(EmbedscaleError, RuntimeError):
    """An embedding endpoint that failed: unreachable, an error answer, or vectors that do not
    fit (wrong count or dimension). The message names the endpoint and the cause, never a key."""
