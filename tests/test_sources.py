"""Planning a source into partitions: listing, splitting large files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedscale.engine.errors import SourceError
from embedscale.engine.sources.enumeration import plan_source, plan_texts
from embedscale.engine.sources.partitions import FileSlice
from embedscale.engine.sources.readers import RecordFields, read_item


def test_directory_is_listed_recursively_without_hidden_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.md").write_text("b")
    (tmp_path / ".hidden.txt").write_text("h")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.txt").write_text("c")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    plan = plan_source(tmp_path)
    rels = [i.relpath for p in plan.partitions for i in p.items]
    assert rels == ["a.txt", "sub/b.md"]
    assert [(s.source, s.reason) for s in plan.skipped] == [
        ("image.png", "unsupported file type '.png'")
    ]


def test_glob_and_single_file(tmp_path):
    (tmp_path / "x").mkdir()
    for name in ["x/a.txt", "x/b.txt", "x/c.md"]:
        (tmp_path / name).write_text(name)
    plan = plan_source(str(tmp_path / "x" / "*.txt"))
    assert [i.relpath for p in plan.partitions for i in p.items] == ["a.txt", "b.txt"]
    single = plan_source(tmp_path / "x" / "c.md")
    assert [i.relpath for p in single.partitions for i in p.items] == ["c.md"]


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: p / "missing", "source not found"),
        (lambda p: p, "source is empty"),
        (lambda p: str(p / "*.nothing"), "source glob matches no files"),
    ],
)
def test_bad_sources_raise(tmp_path, setup, message):
    with pytest.raises(SourceError, match=message):
        plan_source(setup(tmp_path))


def test_source_without_supported_files_raises(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(SourceError, match="no supported files"):
        plan_source(tmp_path)


def test_small_files_are_packed_and_partitions_are_deterministic(tmp_path):
    for i in range(20):
        (tmp_path / f"{i:02}.txt").write_text("x" * 1000)
    plan = plan_source(tmp_path, partition_bytes=5000)
    assert [len(p.items) for p in plan.partitions] == [5, 5, 5, 5]
    assert [p.index for p in plan.partitions] == [0, 1, 2, 3]
    assert plan_source(tmp_path, partition_bytes=5000).partitions == plan.partitions


def test_a_file_of_a_partition_s_size_or_more_is_a_partition_alone(tmp_path):
    # Packed behind small files, a big one would make the biggest partition bigger still:
    # the one a job's last worker runs while the others wait.
    for name, size in [("a", 1000), ("b", 1000), ("c", 20_000), ("d", 1000), ("e", 4000)]:
        (tmp_path / f"{name}.txt").write_text("x" * size)
    plan = plan_source(tmp_path, partition_bytes=5000)
    assert sorted([Path(i.path).name for i in p.items] for p in plan.partitions) == [
        ["a.txt", "b.txt", "d.txt", "e.txt"],
        ["c.txt"],
    ]
    assert sorted(p.index for p in plan.partitions) == [0, 1]


def test_large_jsonl_is_split_by_rows_and_every_row_is_read_once(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(500)))
    plan = plan_source(p, partition_bytes=2000)
    assert len(plan.partitions) > 5
    docs = [
        d
        for part in plan.partitions
        for item in part.items
        for d in read_item(item, RecordFields())[0]
    ]
    assert [d.doc_id for d in docs] == [f"big.jsonl#{i}" for i in range(500)]


def test_large_parquet_is_split_by_row_ranges(tmp_path):
    p = tmp_path / "big.parquet"
    pq.write_table(
        pa.table({"text": [f"row {i} " * 20 for i in range(1000)]}), p, row_group_size=100
    )
    plan = plan_source(p, partition_bytes=p.stat().st_size // 4)
    slices = [i for part in plan.partitions for i in part.items]
    assert all(isinstance(s, FileSlice) for s in slices)
    assert slices[0].start == 0 and slices[-1].stop == 1000
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    docs = [d for s in slices for d in read_item(s, RecordFields())[0]]
    assert len(docs) == 1000 and len({d.doc_id for d in docs}) == 1000


def test_plan_texts_validates_ids():
    plan = plan_texts(["a", "b", "c"], docs_per_partition=2)
    assert [len(p.items) for p in plan.partitions] == [2, 1]
    with pytest.raises(SourceError, match="not unique"):
        plan_texts(["a", "b"], ids=["x", "x"])
    with pytest.raises(SourceError, match="ids has 1 entries"):
        plan_texts(["a", "b"], ids=["x"])
    with pytest.raises(SourceError, match="empty"):
        plan_texts([])


def test_inline_texts_without_ids_get_ids_from_their_content():
    import hashlib

    first = plan_texts(["alpha", "beta", "alpha"])
    again = plan_texts(["beta"])  # another job, sent later
    [items] = [p.items for p in first.partitions]
    expected = {t: "text-" + hashlib.sha256(t.encode()).hexdigest()[:32] for t in ("alpha", "beta")}
    assert [(i.doc_id, i.text) for i in items] == [
        (expected["alpha"], "alpha"),
        (expected["beta"], "beta"),
    ]
    assert [(s.source, s.reason) for s in first.skipped] == [
        (expected["alpha"], "same text as texts[0]")
    ]
    assert again.partitions[0].items[0].doc_id == expected["beta"]
    assert plan_texts(["x", "y"], ids=["0", "1"]).partitions[0].items[1].doc_id == "1"
