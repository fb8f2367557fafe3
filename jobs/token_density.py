"""Characters per token of a job's own text, measured at submission on a small sample with the
model's own tokenizer, for the quota estimate (jobs.tenants.quotas.estimate_chunks).

A fixed 4 characters a token suits plain English prose; Python's pydoc text measured 3.12 with
all-MiniLM-L6-v2's tokenizer (4,903 chunks where 4 characters a token estimated 4,390), code and
changelogs less still, so a job over such text ran past its estimate and its tenant's quota
was checked against too few chunks. The sample is bounded (`SAMPLE_BYTES` in all: a window from
the middle of each of at most `SAMPLE_FILES` local text files spread over the job, or the inline
texts), so a submission stays quick; where no
sample can be had (object-store sources, structured formats, a model whose tokenizer is not
local) the fixed figure stands.
"""

from __future__ import annotations

from embedscale.engine.models.limits import local_tokenizer
from embedscale.engine.models.registry import ModelSpec
from embedscale.engine.sources.file_access import FileAccess, FileRefused
from embedscale.engine.sources.partitions import FileSlice, InlineText, Partition
from embedscale.engine.storage.locations import is_uri
from embedscale.jobs.tenants.quotas import CHARS_PER_TOKEN

SAMPLE_BYTES = 64 * 1024
SAMPLE_FILES = 16  # spread over the job's files: one file's style says little of the others
MIN_SAMPLE_CHARS = 256  # less text than this says little
TEXT_FORMATS = frozenset({"text", "markdown"})  # read as they are: their bytes are the text
# Bounds on a measurement, whatever the sample: no tokenizer makes a token of under one and a
# half characters or over eight of real text.
DENSITY_BOUNDS = (1.5, 8.0)


def chars_per_token(
    partitions: list[Partition], model: ModelSpec | None, access: FileAccess
) -> float:
    """The sample's characters per token (without special tokens), or CHARS_PER_TOKEN."""
    if model is None or not model.local:
        return CHARS_PER_TOKEN
    sample = _sample(partitions, access)
    if len(sample) < MIN_SAMPLE_CHARS:
        return CHARS_PER_TOKEN
    try:
        tokens = len(local_tokenizer(model).encode(sample, add_special_tokens=False).ids)
    except Exception:  # an unusual folder: the job finds out when it loads the model
        return CHARS_PER_TOKEN
    low, high = DENSITY_BOUNDS
    return min(high, max(low, len(sample) / max(1, tokens)))


def _sample(partitions: list[Partition], access: FileAccess) -> str:
    items = [item for partition in partitions for item in partition.items]
    texts = [i.text for i in items if isinstance(i, InlineText)]
    files = [
        i
        for i in items
        if isinstance(i, FileSlice) and i.fmt in TEXT_FORMATS and not is_uri(i.path)
    ]
    parts, left = [], SAMPLE_BYTES
    for text in texts:
        if left <= 0:
            break
        parts.append(text[:left])
        left -= len(parts[-1])
    window = SAMPLE_BYTES // SAMPLE_FILES
    step = max(1, len(files) // SAMPLE_FILES)
    for item in files[::step][:SAMPLE_FILES]:
        if left <= 0:
            break
        try:
            with access.open(item.path) as f:
                # The middle: a file's head (titles, headers, licences) is not its body.
                f.seek(max(0, item.size_bytes // 2 - window // 2))
                raw = f.read(min(left, window))
        except (FileRefused, OSError):
            continue  # the planner or the worker reports it
        parts.append(raw.decode("utf-8", errors="ignore"))
        left -= len(raw)
    return "".join(parts)
