"""Real chunk tables without a cluster or a model: rows of made-up vectors committed through the
sink as a job's partitions would be (the same fragments, transaction properties and, given a
store, the same ledger rows and partitions marked done), for the tests of table versions,
restores and cleanups."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
from lance.fragment import write_fragments

from embedscale.engine.models.info import ModelInfo
from embedscale.engine.sink.lance_sink import ChunkTable, Commit, partition_counts
from embedscale.engine.sink.schema import chunk_schema
from embedscale.engine.sources.partitions import InlineText, Partition
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store, utcnow
from embedscale.jobs.store.ledger import PARTITION, LedgerRow
from embedscale.jobs.store.progress import PartitionDone
from embedscale.jobs.store.records import JobRecord

MODEL = ModelInfo("test-model", 4, 128, 2)


@dataclass
class FakePartition:
    """What the sink reads of a finished partition (engine.sink.lance_sink.PartitionResult)."""

    partition: int
    fragments: list
    documents: int
    chunks: int
    unchanged: int = 0
    tokens: int = 0
    replaced_doc_ids: list[str] = field(default_factory=list)
    seen_doc_ids: list[str] | None = None
    skipped: list = field(default_factory=list)


def chunk_rows(job_id: str, doc_ids: list[str]) -> pa.Table:
    """One chunk row per document, of `job_id`, with a made-up 4-float vector."""
    n = len(doc_ids)
    schema = chunk_schema(MODEL.name, MODEL.dimension)
    return pa.table(
        {
            "id": [uuid.uuid4().hex for _ in doc_ids],
            "doc_id": doc_ids,
            "chunk_index": [0] * n,
            "text": [f"text of {d}" for d in doc_ids],
            "vector": [[float(i), 1.0, 0.5, 0.25] for i in range(n)],
            "token_count": [3] * n,
            "char_start": [0] * n,
            "char_end": [10] * n,
            "content_hash": ["h"] * n,
            "source": doc_ids,
            "metadata": ["{}"] * n,
            "job_id": [job_id] * n,
            "model": [MODEL.name] * n,
            "created_at": [datetime.now(UTC)] * n,
        },
        schema=schema,
    )


def new_table(data_dir, name: str = "docs") -> ChunkTable:
    """An empty chunk table (version 1), made as a job's preparation makes it."""
    table = ChunkTable(data_dir, name)
    table.prepare(MODEL, "append")
    return table


def commit_docs(table: ChunkTable, job_id: str, doc_ids: list[str], partition: int = 0) -> Commit:
    """Commit one partition of `job_id` holding a row per document."""
    rows = chunk_rows(job_id, doc_ids)
    fragments = write_fragments(rows, table.uri, schema=rows.schema)
    made = table.commit({job_id: [FakePartition(partition, fragments, len(doc_ids), len(doc_ids))]})
    assert made is not None
    return made


def queued_record(
    job_id: str, tenant: str, table: ChunkTable, texts: list[str], **fields
) -> JobRecord:
    """A queued append job of `tenant` into `table` over `texts`, as the service admits one
    (`fields`: the record's other fields, partitions_total, kind, details...)."""
    now = utcnow()
    return JobRecord(
        id=job_id,
        tenant=tenant,
        spec={"table": table.name, "texts": texts, "mode": "append"},
        status=JobStatus.QUEUED,
        priority="normal",
        table_name=table.name,
        history=[(str(JobStatus.QUEUED), now.isoformat())],
        created_at=now,
        updated_at=now,
        **fields,
    )


def ledger_job(
    store: Store,
    table: ChunkTable,
    doc_ids: list[str],
    tenant: str = "local",
    status: JobStatus = JobStatus.SUCCEEDED,
    recorded: bool = True,
) -> str:
    """A job of `tenant` recorded in `store` as the runner records one: admitted, started, its
    one partition committed to `table` and marked done with its ledger row, then moved to
    `status` (left running for RUNNING). Not `recorded`: a crash came between its commit and
    its record (it is left running). Returns its id."""
    job_id = uuid.uuid4().hex
    items = tuple(InlineText(d, f"text of {d}") for d in doc_ids)
    record = queued_record(job_id, tenant, table, list(doc_ids), partitions_total=1)
    store.insert_job(record, [Partition(0, items)])
    store.start_jobs([job_id])
    made = commit_docs(table, job_id, doc_ids)
    if not recorded:
        return job_id
    result = FakePartition(0, [], len(doc_ids), len(doc_ids))
    row = LedgerRow(job_id, PARTITION, made.version, made.read_version, 0)
    store.record_partitions_done(
        [PartitionDone(job_id, tenant, 0, partition_counts(result), ledger=row)]
    )
    if status != JobStatus.RUNNING:
        store.set_status(job_id, status)
    return job_id
