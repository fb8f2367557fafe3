"""LanceDB sink, exactly once: workers write fragments, the driver commits them.

Lance's two-phase write makes retries safe. A worker writes its partition's rows as data files
that no reader sees (`write_fragments`) and returns their metadata; the driver commits the
fragments of completed partitions in one atomic Append. A task that is retried, or re-run after
its worker died, writes new files, but only the one result the scheduler hands back is ever
committed; the files of a lost attempt stay invisible and are removed by cleanup. Each commit
returns the versions it read and made, for the control plane's ledger, and carries the job id
and its partition numbers as transaction properties, so that a driver restarted after a crash
between the commit and its record can tell which partitions are already in the table
(engine/tables/commit_log.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import lance
import pyarrow as pa

from embedscale.engine.errors import TableError
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.models.registry import vector_space
from embedscale.engine.sink.replacement import commit_replacing, doc_predicate, sql_string
from embedscale.engine.sink.schema import chunk_schema, table_model, table_provider
from embedscale.engine.sink.transactions import recent_transactions
from embedscale.engine.storage.locations import (
    NO_OPTIONS,
    Location,
    StorageOptions,
    dir_exists,
    is_uri,
    join,
    lance_options,
    remove_tree,
    resolve_storage_options,
)


class PartitionResult(Protocol):
    """What the sink commits of a finished partition: its fragments and its counts. The task's
    own result (engine.tasks.partition_task.PartitionResult) is one; the sink names only what it
    reads, so the sink never imports the tasks that write through it."""

    partition: int
    fragments: list
    documents: int
    unchanged: int
    chunks: int
    tokens: int
    replaced_doc_ids: list[str]
    seen_doc_ids: list[str] | None
    skipped: list


MODES = ("append", "overwrite", "upsert", "sync")
REPLACING_MODES = ("upsert", "sync")  # documents with other content replace their old rows
COMMITS_PROPERTY = "embedscale.commits"  # {job_id: {partition: counts}} of one commit
# {job_id: [doc ids]} whose rows (of the version the commit read) a commit deleted: what a
# cancel puts back.
REPLACED_PROPERTY = "embedscale.replaced"
SEEN_PROPERTY = "embedscale.seen"  # sync: {job_id: [doc ids read from the source]}
OVERWRITE_PROPERTY = "embedscale.overwrite"  # the job whose overwrite emptied the table
TABLE_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_TABLE_NAME = re.compile(TABLE_NAME_PATTERN)
_DELETE_BATCH = 1000  # doc ids per lookup


@dataclass(frozen=True, slots=True)
class Commit:
    """A commit made to a table: the version it read (which holds the rows it replaced) and the
    version it made."""

    read_version: int
    version: int


def validate_table_name(name: str) -> str:
    """Refuse names that could escape the data directory or that LanceDB cannot hold."""
    # fullmatch: with match, '$' also matches before a final newline ('t\n' passed).
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name) or ".." in name:
        raise TableError(
            f"invalid table name {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter, digit or '_', without '..' or '/'"
        )
    return name


def lancedb_dir(data_dir: str | Path | Location) -> str | Path:
    """Where a data directory (a local folder or an object-store URI) keeps its LanceDB
    tables."""
    data_dir = str(data_dir) if isinstance(data_dir, Location) else data_dir
    return join(data_dir, "lancedb") if is_uri(data_dir) else Path(data_dir) / "lancedb"


class ChunkTable:
    """A table of chunk rows, seen from the driver: create or check it, then commit to it.
    `data_dir` is a local folder or an object-store Location (or URI) (engine.storage.locations);
    `storage` reaches the latter (default: the Location's options, else the standard AWS
    variables)."""

    def __init__(
        self, data_dir: str | Path | Location, name: str, storage: StorageOptions | None = None
    ) -> None:
        if isinstance(data_dir, Location):
            storage = data_dir.options if storage is None else storage
        self.name = validate_table_name(name)
        self.root = lancedb_dir(data_dir)
        self.uri = join(self.root, f"{self.name}.lance")
        if storage is None:
            storage = resolve_storage_options() if is_uri(self.uri) else NO_OPTIONS
        self.storage = storage

    @property
    def storage_options(self) -> dict[str, str] | None:
        """What each Lance call takes: None for a local table."""
        return lance_options(self.uri, self.storage)

    def dataset(self, version: int | None = None) -> lance.LanceDataset:
        """The table's Lance dataset, as of its latest commit or of `version`."""
        return lance.dataset(self.uri, version=version, storage_options=self.storage_options)

    def exists(self) -> bool:
        return table_exists(self.uri, self.storage)

    def prepare(self, model: ModelInfo, mode: str, job_id: str | None = None) -> Commit | None:
        """Make the table ready for a job: create it, empty it (overwrite, in a commit that
        names `job_id`, so a cancel can bring the old rows back: that commit is returned), or
        check that its model and dimension match the job's (append, upsert, sync)."""
        if mode not in MODES:
            raise TableError(f"unknown write mode {mode!r}: use one of {', '.join(MODES)}")
        schema = chunk_schema(model.name, model.dimension, model.provider, model.provider_url)
        if not self.exists() and self._create(schema):
            return None
        if mode == "overwrite":
            read_version = self.dataset().version
            tx = lance.Transaction(
                read_version=read_version,
                operation=lance.LanceOperation.Overwrite(schema, []),
                transaction_properties={OVERWRITE_PROPERTY: json.dumps(job_id)},
            )
            made = lance.LanceDataset.commit(self.uri, tx, storage_options=self.storage_options)
            return Commit(read_version, made.version)
        existing = self.dataset().schema
        existing_model, existing_dim = table_model(existing)
        if existing_model != model.name or existing_dim != model.dimension:
            raise TableError(
                f"table '{self.name}' holds vectors of model '{existing_model}' "
                f"({existing_dim} dimensions); this job's model '{model.name}' makes "
                f"{model.dimension}: use that model, another table, or --mode overwrite"
            )
        # The same model name behind another provider may be other weights or another
        # precision: vectors of two spaces in one table would give wrong neighbours silently.
        # ONNX fp32 and torch vectors of one model are one space (registry.vector_space).
        existing_provider, _ = table_provider(existing)
        if vector_space(existing_provider) != vector_space(model.provider):
            raise TableError(
                f"table '{self.name}' holds vectors of provider '{existing_provider}'; this "
                f"job's provider is '{model.provider}' (model '{model.name}' in both): use "
                f"provider '{existing_provider}', another table, or --mode overwrite"
            )
        return None

    def _create(self, schema: pa.Schema) -> bool:
        """Create the table, empty; False if another job created it first (two jobs starting
        together on a new table: the loser opens the winner's table and checks it)."""
        if not is_uri(self.root):
            Path(self.root).mkdir(parents=True, exist_ok=True)
        try:
            lance.write_dataset(
                schema.empty_table(),
                self.uri,
                schema=schema,
                mode="create",
                storage_options=self.storage_options,
            )
        except OSError as exc:
            if "already exists" not in str(exc) or not self.exists():
                raise
            return False
        return True

    def commit(self, results_by_job: Mapping[str, Sequence[PartitionResult]]) -> Commit | None:
        """Make the fragments of the given partitions (of one or more jobs) visible in one
        atomic commit; returns it (None: nothing to commit). The commit records each
        partition's counts under its job, so a restarted driver can tell what is in the table
        (engine/tables/commit_log.py). The old rows of documents replaced (upsert, sync) are deleted
        in the same commit (engine/sink/replacement.py): a reader sees each document old or new,
        never missing or doubled. A sync partition is committed even with nothing to write:
        the documents it read decide at the end what is gone from the source."""
        require_table(self.uri, self.storage)
        ds = self.dataset()
        results = [r for rs in results_by_job.values() for r in rs]
        fragments = [f for r in results for f in r.fragments]
        replaced = {
            job_id: ids
            for job_id, rs in results_by_job.items()
            if (ids := [d for r in rs for d in r.replaced_doc_ids])
        }
        seen = {
            job_id: [d for r in rs for d in r.seen_doc_ids or ()]
            for job_id, rs in results_by_job.items()
            if any(r.seen_doc_ids is not None for r in rs)
        }
        if not fragments and not seen:
            return None
        properties = {
            COMMITS_PROPERTY: json.dumps(
                {
                    job_id: {str(r.partition): partition_counts(r) for r in rs}
                    for job_id, rs in results_by_job.items()
                }
            )
        }
        if replaced:
            properties[REPLACED_PROPERTY] = json.dumps(replaced)
        if seen:
            properties[SEEN_PROPERTY] = json.dumps(seen)
        doc_ids = sorted({d for ids in replaced.values() for d in ids})
        try:
            version = commit_replacing(
                self.uri,
                ds,
                doc_predicate(doc_ids) if doc_ids else None,
                fragments,
                properties,
                storage_options=self.storage_options,
            )
        except Exception:
            # On object storage a commit can land and still report an error (the answer to
            # the manifest's write was lost): the table's version says which. Redoing a commit
            # that landed would write its rows twice; failing it would fail jobs whose rows
            # are in the table.
            landed = self.landed(ds.version, properties)
            if landed is None:
                raise
            version = landed
        return Commit(ds.version, version)

    def landed(self, read_version: int, properties: Mapping[str, str]) -> int | None:
        """The version made after `read_version` by a commit carrying exactly `properties`
        (each names its jobs' partitions: no other commit carries the same), or None."""
        try:
            ds = self.dataset()
            newer = recent_transactions(ds, ds.version - read_version)
        except Exception:  # the table cannot be read either: the commit's error stands
            return None
        for age, tx in enumerate(newer):  # newest first: the first made ds.version
            if tx is not None and dict(tx.transaction_properties or {}) == dict(properties):
                return ds.version - age
        return None

    def remove_orphan_files(self) -> None:
        """Remove what workers wrote into the folder of a table that was deleted meanwhile
        (data files of fragments no commit will ever reference)."""
        if not self.exists():
            remove_tree(self.uri, self.storage)


def partition_counts(result: PartitionResult) -> dict[str, int]:
    """The figures of a partition that progress and the usage ledger are made of."""
    return {
        "documents": result.documents,
        "unchanged": result.unchanged,
        "changed": len(result.replaced_doc_ids),
        "chunks": result.chunks,
        "tokens": result.tokens,
        "skipped": len(result.skipped),
    }


# --- worker side -------------------------------------------------------------------------------


def table_exists(uri: str, storage: StorageOptions = NO_OPTIONS) -> bool:
    """Whether a table has been committed at `uri` (it has a `_versions` folder)."""
    return dir_exists(join(uri, "_versions"), storage)


def write_fragments(uri: str, rows: pa.Table, storage: StorageOptions = NO_OPTIONS) -> list:
    """Write rows as invisible fragments of the table at `uri`; returns their metadata. A
    table deleted meanwhile is not brought back as a folder of orphaned data files."""
    from lance.fragment import write_fragments as lance_write_fragments

    require_table(uri, storage)

    return lance_write_fragments(
        rows, uri, schema=rows.schema, storage_options=lance_options(uri, storage)
    )


def require_table(uri: str, storage: StorageOptions = NO_OPTIONS) -> None:
    """Raise TableError if the table at `uri` is gone (deleted while a job writes to it)."""
    if not table_exists(uri, storage):
        stem = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".lance")
        raise TableError(
            f"table {stem!r} no longer exists: it was deleted while a job was writing to it"
        )


def existing_hashes(
    uri: str, doc_ids: Sequence[str], storage: StorageOptions = NO_OPTIONS
) -> dict[str, set[str]]:
    """doc_id -> the content hashes its rows in the table have (upsert's change detection)."""
    found: dict[str, set[str]] = {}
    if not doc_ids:
        return found
    require_table(uri, storage)
    ds = lance.dataset(uri, storage_options=lance_options(uri, storage))
    for i in range(0, len(doc_ids), _DELETE_BATCH):
        chunk = doc_ids[i : i + _DELETE_BATCH]
        table = ds.to_table(
            columns=["doc_id", "content_hash"],
            filter=f"doc_id IN ({', '.join(sql_string(d) for d in chunk)})",
        )
        for doc_id, h in zip(
            table.column("doc_id").to_pylist(), table.column("content_hash").to_pylist()
        ):
            found.setdefault(doc_id, set()).add(h)
    return found
