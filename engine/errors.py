"""Domain errors of the engine. Each message names what was wrong, the value seen, and what to do.

The CLI and the API map these to one-line messages and status codes; nothing below them raises
HTTP or exits the process.
"""

from __future__ import annotations

import re


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
    """One short line for a job record or an operator's log: the exception's type and its
    message's first line, never a tenant's text. Our own messages (EmbedscaleError) never
    quote a document and are kept; another library's lose every quoted value (a parser may
    quote the line it choked on, a KeyError its key, a UnicodeDecodeError's repr its bytes)
    and are cut to MAX_ERROR_CHARS (an OSError with an errno keeps its file's path)."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, UnicodeDecodeError):  # its str names a byte; its repr holds them all
        message = f"cannot decode {exc.encoding} at byte {exc.start}: {exc.reason}"
    elif isinstance(exc, EmbedscaleError) or _from_the_os(exc):
        message = first_line(str(exc))
    else:
        message = scrub_message(str(exc))
    return f"{type(exc).__name__}: {message}".rstrip(": ")


def _from_the_os(exc: BaseException) -> bool:
    """An OSError the OS raised: its strerror and a path, no document content."""
    return isinstance(exc, OSError) and exc.errno is not None


MAX_ERROR_CHARS = 300  # another library's message in a job record or a log: one short line
# A quoted value ('...', "...", b'...') in a message we did not write: the opening quote is not
# inside a word, so that the apostrophe of "can't" opens nothing.
_QUOTED = re.compile(
    r"""(?<![A-Za-z0-9])[bBrRuU]?"""
    r"""(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
)
# ...and a quote that opens and never closes on the line (a parser quoting a line it cut): the
# rest of the line goes.
_UNCLOSED = re.compile(r"""(?<![A-Za-z0-9])[bBrRuU]?['"].*$""")
ELIDED = "'…'"
_READ_CHARS = 65536  # of a message, at most: a library may put a whole document in one


def first_line(text: str) -> str:
    """The first non-empty line of `text`, stripped ('' for none)."""
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def scrub_message(text: str) -> str:
    """A message from outside embedscale (a library's exception, an endpoint's answer) made
    safe for records and logs: its first line, every quoted value replaced by '…', at most
    MAX_ERROR_CHARS long. What a tenant sent may be quoted in it; the quotes are removed."""
    line = first_line(text[:_READ_CHARS].replace("\0", ""))
    line = _UNCLOSED.sub("\0", _QUOTED.sub("\0", line))  # NUL: a mark no message holds now
    return bounded(line.replace("\0", ELIDED))


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to `limit` characters, the cut marked with '…'."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ProviderError(EmbedscaleError, RuntimeError):
    """An embedding endpoint that failed: unreachable, an error answer, or vectors that do not
    fit (wrong count or dimension). The message names the endpoint and the cause, never a key."""
