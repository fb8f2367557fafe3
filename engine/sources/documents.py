"""What a source yields: documents with stable ids and content hashes, and the reasons others
were skipped."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """One document to chunk and embed."""

    doc_id: str
    text: str
    source: str  # the file it came from, relative to the source root
    metadata: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""

    def __post_init__(self) -> None:
        if not self.content_hash:
            self.content_hash = content_hash(self.text)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file or row that was not embedded, and why (binary, invalid UTF-8, empty, ...)."""

    source: str
    reason: str


def content_hash(text: str) -> str:
    """Hash of a whole document's text: an unchanged document is not re-embedded on upsert."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def chunk_id(doc_id: str, chunk_index: int, model: str) -> str:
    """Stable row id of a chunk: the same document, position and model give the same id."""
    key = f"{model}\x1f{doc_id}\x1f{chunk_index}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=16).hexdigest()
