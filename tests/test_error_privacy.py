"""No tenant data in operator logs or job records: an error line names the document and the
error, never the document's text. Documents that trip each reader (a malformed JSON line, invalid
UTF-8, a CSV field over csv's limit, a file that is no parquet) and a task whose exception quotes
its input each carry a secret marker; it shows up in no skipped reason, job error, runner log or
worker log."""

from __future__ import annotations

import logging
import sys

import cloudpickle
import httpx
import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from embedscale.engine.cluster.worker_logs import ScrubTaskErrors
from embedscale.engine.errors import MAX_ERROR_CHARS, TableError, error_line
from embedscale.engine.models.openai_http import _describe
from embedscale.jobs.local_run import JobFailedError
from tests.helpers import assert_verified, logged, run

MARKER = "SECRET-MARKER-123"

# The fault plugin below is defined here, which workers cannot import: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_an_error_line_keeps_our_words_and_drops_what_another_library_quotes():
    assert error_line(KeyError(MARKER)) == "KeyError: '…'"
    quoting = ValueError(f'Expected 2 fields in line 3, saw 3: "{MARKER}, a, b"\nmore')
    assert error_line(quoting) == "ValueError: Expected 2 fields in line 3, saw 3: '…'"
    assert error_line(ValueError("can't parse it's input")) == (
        "ValueError: can't parse it's input"
    )  # apostrophes open no quote
    cut = ValueError(f'JSON parse error in line 7: "{MARKER} and the rest of the line')
    assert error_line(cut) == "ValueError: JSON parse error in line 7: '…'"  # never closed
    try:
        (MARKER.encode() + b"\xff tail").decode("utf-8")
    except UnicodeDecodeError as exc:  # its repr holds every byte
        assert (
            error_line(exc) == "UnicodeDecodeError: cannot decode utf-8 at byte 17: "
            "invalid start byte"
        )
    assert len(error_line(RuntimeError("x" * 5000))) < MAX_ERROR_CHARS + 20
    ours = TableError("table 'docs' holds vectors of model 'm'")
    assert error_line(ours) == "TableError: table 'docs' holds vectors of model 'm'"
    disk = OSError(28, "No space left on device", "/data/t.lance/data/x.lance")
    assert error_line(disk) == (
        "OSError: [Errno 28] No space left on device: '/data/t.lance/data/x.lance'"
    )


def test_an_endpoints_answer_quoting_its_input_is_scrubbed():
    url = "http://embedder.internal/v1/embeddings"
    fastapi = httpx.Response(
        422,
        json={
            "detail": [
                {
                    "type": "string_too_long",
                    "loc": ["body", "input", 0],
                    "msg": "String should have at most 8 characters",
                    "input": MARKER,
                }
            ]
        },
    )
    openai = httpx.Response(
        400, json={"error": {"message": f"bad input '{MARKER}'", "code": "invalid_input"}}
    )
    plain = httpx.Response(500, text=f'could not embed "{MARKER}"')
    lines = [_describe(url, r) for r in (fastapi, openai, plain)]
    assert all(MARKER not in line for line in lines), lines
    assert lines[0].endswith("answered 422: String should have at most 8 characters")
    assert lines[1].endswith("answered 400: bad input '…' (code invalid_input)")


def test_dasks_compute_failed_line_is_scrubbed():
    record = logging.LogRecord(
        "distributed.worker",
        logging.ERROR,
        __file__,
        1,
        "Compute Failed\nKey:       %s\nState:     %s\nTask:  %s\nException: %r\nTraceback: %r\n",
        (
            "embed_partition-1",
            "executing",
            "<Task ...>",
            repr(ValueError(f"cannot chunk '{MARKER}'")),
            "  File ...\n",
        ),
        None,
    )
    assert ScrubTaskErrors().filter(record)
    message = record.getMessage()
    assert MARKER not in message and "ValueError(" in message and "embed_partition-1" in message


@pytest.mark.slow
def test_documents_that_trip_the_readers_are_named_without_their_text(cluster, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("A plain document about the tides of the estuary.")
    (corpus / "rows.jsonl").write_text(
        f'{{"text": "a fine row"}}\n{{"text": "{MARKER} never closed\n'
    )
    (corpus / "invalid.txt").write_bytes(MARKER.encode() + b" \xff\xfe the rest")
    (corpus / "wide.csv").write_text(f'text\n"{MARKER} {"x" * 140_000}"\n')
    (corpus / "fake.parquet").write_text(f"{MARKER} is no parquet file")
    data_dir = tmp_path / "data"
    with logged("jobs") as job_lines, logged("engine") as engine_lines:
        summary = run(cluster, source=str(corpus), table="t", data_dir=str(data_dir))
    assert summary.ok and summary.documents == 2
    reasons = {s.source: s.reason for s in summary.skipped}
    assert set(reasons) == {"rows.jsonl#1", "invalid.txt", "wide.csv", "fake.parquet"}, reasons
    assert reasons["wide.csv"] == "malformed CSV: field larger than field limit (131072)"
    assert reasons["invalid.txt"].startswith("invalid UTF-8 at byte 18")
    assert MARKER not in repr(reasons)
    assert MARKER not in "\n".join(job_lines + engine_lines)
    assert MARKER not in repr(cluster.client.get_worker_logs())
    assert_verified(data_dir, "t")


class LeakyChunker(WorkerPlugin):
    """Chunking raises an error that quotes the document's text, as a careless library might."""

    name = "fault-leaky-chunker"

    def setup(self, worker) -> None:
        from embedscale.engine.tasks import partition_task as tasks

        self._original = original = tasks.chunk_texts

        def chunk_or_quote(texts, *args, **kwargs):
            for text in texts:
                if MARKER in text:
                    raise ValueError(f"cannot chunk {text!r}")
            return original(texts, *args, **kwargs)

        tasks.chunk_texts = chunk_or_quote

    def teardown(self, worker) -> None:
        from embedscale.engine.tasks import partition_task as tasks

        tasks.chunk_texts = self._original


@pytest.mark.slow
def test_a_task_whose_error_quotes_its_document_leaks_it_nowhere(cluster, tmp_path):
    plugin = LeakyChunker()
    cluster.client.register_plugin(plugin)
    try:
        with logged("jobs") as lines, pytest.raises(JobFailedError) as failed:
            run(
                cluster,
                texts=[f"{MARKER} is in this document"],
                table="leaky",
                data_dir=str(tmp_path / "data"),
                max_attempts=1,
            )
    finally:
        cluster.client.unregister_worker_plugin(plugin.name)
    error = failed.value.summary.error
    assert "ValueError: cannot chunk '…'" in error and MARKER not in error
    assert MARKER not in "\n".join(lines)
    worker_logs = repr(cluster.client.get_worker_logs())
    assert "Compute Failed" in worker_logs and MARKER not in worker_logs
