"""A partition split into ranges runs on several workers at once (engine.tasks.slices): its
ranges go out together, each a task of its own, and the partition comes back when every range
has returned, as one result, with the cursors of the ranges still to embed.

Used where a job has the cluster to itself and threads to spare: its last big partitions would
otherwise run on one worker each while the others wait (a long document is one partition).
The partition is still committed once, when its last range is done, so splitting changes
nothing in exactly-once; a range that fails takes its partition back to its start, as a failed
slice does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distributed import Future

from embedscale.engine.tasks.partition_task import PartitionResult


@dataclass(eq=False)
class RangeGroup:
    """The ranges of one partition in flight. `lead` is what the job's `in_flight` holds for
    the partition while any range runs (the first range's future)."""

    job_id: str
    index: int
    lead: Future
    running: dict[str, Future]  # task key -> future, of the ranges not yet returned
    starts: dict[str, int]  # task key -> the chunk its range starts at
    results: list[tuple[int, PartitionResult]] = field(default_factory=list)

    def returned(self, key: str, result: PartitionResult) -> bool:
        """Take a range's result; whether every range has now returned."""
        self.running.pop(key, None)
        self.results.append((self.starts[key], result))
        return not self.running

    def joined(self, held: PartitionResult) -> PartitionResult:
        """`held` (the partition's slices before the ranges went out) with every range's
        slices added, in the order of the ranges (so of the chunks), and the ranges left."""
        left = [r.cursor for _, r in self.results if r.cursor is not None]
        for _, result in sorted(self.results, key=lambda item: item[0]):
            held.add_slice(result)
        held.set_ranges(left)
        return held
