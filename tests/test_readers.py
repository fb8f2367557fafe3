"""Each format reader, on real files, with the bad inputs the engine must skip and report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedscale.engine.sources.partitions import FileSlice, InlineText
from embedscale.engine.sources.readers import RecordFields, read_item

FIELDS = RecordFields()


def slice_of(path: Path, fmt: str, **kw) -> FileSlice:
    return FileSlice(str(path), path.name, fmt, path.stat().st_size, **kw)


def test_text_file_is_one_document_with_path_id(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("\ufeffHello there.\n", encoding="utf-8")
    docs, skipped = read_item(slice_of(p, "text"), FIELDS)
    assert not skipped
    [d] = docs
    assert (d.doc_id, d.text, d.source) == ("a.txt", "Hello there.\n", "a.txt")
    assert len(d.content_hash) == 64


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"\x00\x01\x02\x03 binary", "binary file"),
        (b"caf\xe9 au lait", "invalid UTF-8 at byte 3"),
        (b"   \n\t \n", "empty document"),
        (b"", "empty document"),
    ],
)
def test_bad_text_files_are_skipped_with_reason(tmp_path, content, reason):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    docs, skipped = read_item(slice_of(p, "text"), FIELDS)
    assert docs == []
    assert [(s.source, s.reason) for s in skipped] == [("bad.txt", reason)]


def test_vanished_file_is_skipped_not_fatal(tmp_path):
    item = FileSlice(str(tmp_path / "gone.txt"), "gone.txt", "text", 10)
    docs, skipped = read_item(item, FIELDS)
    assert docs == [] and skipped[0].reason.startswith("unreadable")


def test_jsonl_rows_ids_metadata_and_bad_lines(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(
        "\n".join(
            [
                json.dumps({"id": 7, "text": "seven", "lang": "en"}),
                json.dumps({"text": "no id here"}),
                "{not json",
                json.dumps({"id": "x", "body": "wrong field"}),
                "",
                json.dumps({"id": "y", "text": 12}),
                json.dumps(["a", "list"]),
                json.dumps({"id": "z", "text": "  "}),
            ]
        )
        + "\n"
    )
    docs, skipped = read_item(slice_of(p, "jsonl"), FIELDS)
    assert [(d.doc_id, d.text) for d in docs] == [("7", "seven"), ("rows.jsonl#1", "no id here")]
    assert docs[0].metadata == {"lang": "en", "path": "rows.jsonl", "row": 0}
    reasons = {s.source: s.reason for s in skipped}
    assert reasons["rows.jsonl#2"].startswith("malformed JSON line")
    assert reasons["rows.jsonl#3"] == "no 'text' field"
    assert reasons["rows.jsonl#5"] == "'text' is a int, not text"
    assert reasons["rows.jsonl#6"] == "record is a list, not an object"
    assert reasons["rows.jsonl#7"] == "empty document"


def test_jsonl_byte_range_keeps_row_numbers(tmp_path):
    p = tmp_path / "r.jsonl"
    lines = [json.dumps({"text": f"row {i}"}) + "\n" for i in range(5)]
    p.write_text("".join(lines))
    start = len(lines[0]) + len(lines[1])
    stop = start + len(lines[2]) + len(lines[3])
    docs, _ = read_item(slice_of(p, "jsonl", start=start, stop=stop, first_row=2), FIELDS)
    assert [d.doc_id for d in docs] == ["r.jsonl#2", "r.jsonl#3"]
    assert [d.text for d in docs] == ["row 2", "row 3"]


def test_custom_text_and_id_fields(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"key": "k1", "body": "hello"}) + "\n")
    docs, _ = read_item(slice_of(p, "jsonl"), RecordFields(text_field="body", id_field="key"))
    assert [(d.doc_id, d.text) for d in docs] == [("k1", "hello")]


def test_json_object_and_list(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"text": "single"}))
    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"id": "a", "text": "first"}, {"text": "second"}]))
    bad = tmp_path / "bad.json"
    bad.write_text('{"text": ')
    assert [d.doc_id for d in read_item(slice_of(one, "json"), FIELDS)[0]] == ["one.json"]
    assert [d.doc_id for d in read_item(slice_of(many, "json"), FIELDS)[0]] == ["a", "many.json#1"]
    docs, skipped = read_item(slice_of(bad, "json"), FIELDS)
    assert docs == [] and skipped[0].reason.startswith("invalid JSON")


def test_csv_rows_and_missing_column(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('id,text,kind\n1,"multi\nline, quoted",a\n,second,b\n')
    docs, _ = read_item(slice_of(p, "csv"), FIELDS)
    assert [(d.doc_id, d.text) for d in docs] == [
        ("1", "multi\nline, quoted"),
        ("t.csv#1", "second"),
    ]
    assert docs[1].metadata["kind"] == "b"
    q = tmp_path / "q.csv"
    q.write_text("a,b\n1,2\n")
    assert read_item(slice_of(q, "csv"), FIELDS)[1][0].reason == "no 'text' column"


def test_parquet_row_range_across_row_groups(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"id": [f"d{i}" for i in range(10)], "text": [f"text {i}" for i in range(10)]}),
        p,
        row_group_size=3,
    )
    docs, _ = read_item(slice_of(p, "parquet", start=2, stop=7), FIELDS)
    assert [d.doc_id for d in docs] == ["d2", "d3", "d4", "d5", "d6"]
    assert docs[0].metadata["row"] == 2


def test_not_a_parquet_file_is_skipped(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_text("not parquet")
    docs, skipped = read_item(slice_of(p, "parquet"), FIELDS)
    assert docs == [] and skipped[0].reason.startswith("not a readable parquet file")


def test_inline_text():
    docs, _ = read_item(InlineText("q1", "hello", '{"k": 1}'), FIELDS)
    assert docs[0].metadata == {"k": 1} and docs[0].source == "inline"
    assert read_item(InlineText("q2", " "), FIELDS)[1][0].reason == "empty document"
