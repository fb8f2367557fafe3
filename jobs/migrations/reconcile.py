"""How two generations of one table differ, by document (pure: no table, no store).

Before a switch the generation switched to must hold exactly the documents of the active one:
jobs that wrote to the table while it was built (a sync, an upsert) changed the active
generation only. Documents are compared by (doc_id, content_hash): those missing from the
target or held there with other content are embedded again with the target's model (a catch-up
job), those the active one no longer has are deleted from the target; then the switch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class HasHash(Protocol):
    """What is compared of a document: its content hash."""

    @property
    def content_hash(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Difference:
    """What the target lacks: documents to embed (missing or changed) and to delete (gone)."""

    changed: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    @property
    def none(self) -> bool:
        return not self.changed and not self.gone


def difference(active: Mapping[str, HasHash], target: Mapping[str, HasHash]) -> Difference:
    """What `target` must change to hold the documents of `active` (doc_id -> document)."""
    changed = sorted(
        d
        for d, doc in active.items()
        if d not in target or target[d].content_hash != doc.content_hash
    )
    gone = sorted(d for d in target if d not in active)
    return Difference(changed, gone)
