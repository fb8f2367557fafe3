"""The states of a table's generation and the steps allowed between them (pure: no I/O).

A generation is one physical LanceDB table holding the table's rows embedded with one model.
Searches and jobs reach the `active` one; a migration builds the next one beside it.
"""

from __future__ import annotations

from enum import StrEnum

from embedscale.jobs.errors import ConflictError


class GenerationState(StrEnum):
    BUILDING = "building"  # its migration job is queued or running
    BUILT = "built"  # every document embedded; not yet searched (a switch makes it active)
    ACTIVE = "active"  # what searches read and jobs write: exactly one per table
    RETIRED = "retired"  # was active; kept for a rollback until the retention window ends
    FAILED = "failed"  # its migration job failed or was cancelled; its folder is removed
    REMOVED = "removed"  # retired past the retention window; its folder is removed


# A generation a switch can make active: one built by a migration, or one retired by a switch
# (a rollback brings it back).
SWITCHABLE = frozenset({GenerationState.BUILT, GenerationState.RETIRED})
# A generation whose migration is still under way: a second migration of the table waits.
IN_PROGRESS = frozenset({GenerationState.BUILDING, GenerationState.BUILT})

_ALLOWED: dict[tuple[GenerationState, GenerationState], str] = {
    (GenerationState.BUILDING, GenerationState.BUILT): "its migration job succeeded",
    (GenerationState.BUILDING, GenerationState.FAILED): "its migration job failed or was cancelled",
    (GenerationState.BUILT, GenerationState.ACTIVE): "a switch made it the table",
    (GenerationState.BUILT, GenerationState.FAILED): "its catch-up failed or it was abandoned",
    (GenerationState.ACTIVE, GenerationState.RETIRED): "a switch made another one the table",
    (GenerationState.RETIRED, GenerationState.ACTIVE): "a rollback made it the table again",
    (GenerationState.RETIRED, GenerationState.REMOVED): "its retention window ended",
}


def check_step(old: GenerationState, new: GenerationState, what: str) -> None:
    """ConflictError unless a generation may go from `old` to `new`; `what` names it."""
    if (GenerationState(old), GenerationState(new)) not in _ALLOWED:
        raise ConflictError(f"{what} is {old}: it cannot become {new}")
