"""Test corpora made from the bundled sample's real text."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SAMPLE_CORPUS

_TEXT = (SAMPLE_CORPUS / "stdlib" / "collections-reference.txt").read_text()


def jsonl_corpus(path: Path, rows: int, chars: int = 1000, text_chars: int | None = None) -> Path:
    """`rows` documents of about `chars` characters each, in one jsonl file (the planner
    splits it into partitions of about 16 documents).

    `text_chars`: embed only that many characters of each row, and make up the rest of its
    `chars` with a `filler` field (kept as row metadata, never embedded). The planner cuts by
    bytes, so the partitions stay as they were while the model's work shrinks with the text:
    a quarter of the text is about a quarter of the tokens. The quota's estimate counts bytes
    (4 a token for jsonl), so it runs ahead of the chunks actually made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text_chars = chars if text_chars is None else text_chars
    with path.open("w") as f:
        for i in range(rows):
            start = (i * 997) % (len(_TEXT) - chars)
            record = {"id": f"doc-{i}", "text": _TEXT[start : start + text_chars]}
            if text_chars < chars:
                record["filler"] = "-" * (chars - text_chars)
            f.write(json.dumps(record) + "\n")
    return path
