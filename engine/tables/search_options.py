"""What a search asks for, checked before any table is opened or model loaded: its mode, how
many hits, and how hard the vector index is searched.

Every front door (CLI, HTTP, Python) passes its values here; a bad one is a
SearchParameterError naming the field, so the API can answer 422 for that field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from embedscale.engine.errors import TableError

SearchMode = Literal["vector", "text", "hybrid"]
MODES: tuple[str, ...] = get_args(SearchMode)
DEFAULT_MODE: SearchMode = "vector"
# IVF partitions searched per query, and how many times `k` candidates are re-ranked by their
# exact distance (`refine_factor`). On 1,000,000 x 384 synthetic rows (benchmarks/bench_tables.py,
# 2 cores) these gave recall@10 0.981 at p95 19.7 ms; nprobes 10 / refine 5 gave 0.949 at
# 16.5 ms, 40 / 10 gave 0.989 at 24.1 ms. Both apply only where a vector index exists; without
# one a search compares every row and is exact.
DEFAULT_NPROBES = 20
DEFAULT_REFINE = 10
MAX_NPROBES = 4096  # Lance makes at most 4,096 partitions: more probes search no more
MAX_REFINE = 100  # k=1000 x 100 exact distances is already a scan of 100,000 rows


class SearchParameterError(TableError):
    """A search parameter out of range; `field` names it (mode, k, nprobes, refine, where)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class SearchOptions:
    """A checked search request: `mode`, `k` hits, and the vector index's `nprobes` and
    `refine` factor."""

    mode: SearchMode = DEFAULT_MODE
    k: int = 5
    nprobes: int = DEFAULT_NPROBES
    refine: int = DEFAULT_REFINE


def search_options(
    k: int = 5, mode: str = DEFAULT_MODE, nprobes: int | None = None, refine: int | None = None
) -> SearchOptions:
    """The options of a search, checked; None takes the default of `nprobes` or `refine`."""
    if mode not in MODES:
        raise SearchParameterError(
            "mode", f"unknown search mode {mode!r}: use one of {', '.join(MODES)}"
        )
    _check_count("k", k, None, "ask for at least one result")
    if nprobes is not None:
        _check_count("nprobes", nprobes, MAX_NPROBES, "search at least one partition")
    if refine is not None:
        _check_count("refine", refine, MAX_REFINE, "1 re-ranks exactly the k candidates")
    return SearchOptions(
        mode,  # type: ignore[arg-type]  # one of MODES, checked above
        k,
        DEFAULT_NPROBES if nprobes is None else nprobes,
        DEFAULT_REFINE if refine is None else refine,
    )


def _check_count(name: str, value: object, most: int | None, hint: str) -> None:
    # bool is an int to Python; a flag's True is not a count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise SearchParameterError(name, f"{name}={value!r}: give a whole number")
    if value < 1:
        raise SearchParameterError(name, f"{name}={value}: {hint}")
    if most is not None and value > most:
        raise SearchParameterError(name, f"{name}={value}: at most {most}")
