"""Test corpora made from the bundled sample's real text."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SAMPLE_CORPUS

_TEXT = (SAMPLE_CORPUS / "stdlib" / "collections-reference.txt").read_text()


def jsonl_corpus(path: Path, rows: int, chars: int = 1000) -> Path:
    """`rows` documents of about `chars` characters each, in one jsonl file (the planner
    splits it into partitions of about 16 documents)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(rows):
            start = (i * 997) % (len(_TEXT) - chars)
            f.write(json.dumps({"id": f"doc-{i}", "text": _TEXT[start : start + chars]}) + "\n")
    return path
