"""A job's progress as a bar in chunks, for `Job.wait()`: `tqdm.auto` draws a widget in Jupyter
(with ipywidgets, the `notebooks` extra) and a text bar on stderr in a terminal.

Chunks, not documents or partitions: they are what the model spends its time on, and what the
service's rates (`chunks_per_s`, `tokens_per_s`) and `eta_seconds` are computed in. Like the
client, this module stands alone: nothing of the engine or the control plane.
"""

from __future__ import annotations

from typing import Any

_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} chunks [{elapsed}{postfix}]"
# A job that ended with nothing to embed (an upsert of unchanged documents): no 0% bar.
_NOTHING = "{desc}: no chunks to embed [{elapsed}{postfix}]"


def eta_text(seconds: float | None) -> str:
    """An ETA as h:mm:ss, or "?" while none can be told (the record's eta_seconds is null)."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def expected_total(record: dict[str, Any]) -> int:
    """The bar's length: the chunks the service expects the job to make (its estimate, or an
    extrapolation once the job outgrew it); once the job has succeeded, what it made
    (unchanged documents of an upsert were never embedded)."""
    done = record["chunks_done"]
    if record["status"] == "succeeded":
        return done
    return max(record.get("expected_chunks") or record["estimated_chunks"], done)


class ChunkBar:
    """A tqdm bar that follows a job record: chunks done of those expected, the service's
    chunks/s and tokens/s, and its ETA."""

    def __init__(self, record: dict[str, Any]) -> None:
        # Chosen when first drawn, not when the client is imported: the kernel decides.
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=expected_total(record),
            desc=record["table"],
            unit="chunk",
            bar_format=_FORMAT,
            dynamic_ncols=True,
        )
        self.update(record)

    def update(self, record: dict[str, Any]) -> None:
        """Redraw from the job's latest record."""
        self._bar.total = expected_total(record)
        self._bar.n = record["chunks_done"]
        if self._bar.total == 0 and record["status"] in ("succeeded", "failed", "cancelled"):
            self._bar.bar_format = _NOTHING
        eta = "" if record["status"] != "running" else f" · ETA {eta_text(record['eta_seconds'])}"
        self._bar.set_postfix_str(
            f"{record['chunks_per_s']:.1f} chunks/s · "
            f"{record['tokens_per_s']:.0f} tokens/s · {record['status']}"
            f"{eta}",
            refresh=True,
        )

    def close(self) -> None:
        self._bar.close()
