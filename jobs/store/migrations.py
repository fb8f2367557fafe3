"""The DuckDB schema, as numbered migrations applied forward on start-up.

A file at an older version is migrated in place; one written by a newer embedscale is refused.
Never edit a released migration: add the next one.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: tenants, their API keys (hashed), jobs with their partitions, and the usage ledger.
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        tier TEXT NOT NULL,
        daily_chunks BIGINT,            -- override of the tier's quota (NULL: the tier's)
        max_concurrent_jobs INTEGER,    -- override of the tier's limit (NULL: the tier's)
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE api_keys (
        key_hash TEXT PRIMARY KEY,      -- sha256 of the key; the key itself is never stored
        tenant TEXT NOT NULL,
        prefix TEXT NOT NULL,           -- first characters, to tell keys apart in listings
        created_at TIMESTAMPTZ NOT NULL,
        revoked_at TIMESTAMPTZ
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        spec TEXT NOT NULL,             -- the JobSpec as JSON
        status TEXT NOT NULL,
        priority TEXT NOT NULL,
        table_name TEXT NOT NULL,
        history TEXT NOT NULL,          -- JSON list of [status, ISO time]
        created_at TIMESTAMPTZ NOT NULL,
        started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        updated_at TIMESTAMPTZ NOT NULL,
        estimated_chunks BIGINT NOT NULL DEFAULT 0,
        partitions_total INTEGER NOT NULL DEFAULT 0,
        partitions_done INTEGER NOT NULL DEFAULT 0,
        documents_done BIGINT NOT NULL DEFAULT 0,
        documents_unchanged BIGINT NOT NULL DEFAULT 0,
        chunks_done BIGINT NOT NULL DEFAULT 0,
        tokens_done BIGINT NOT NULL DEFAULT 0,
        skipped_count BIGINT NOT NULL DEFAULT 0,
        error TEXT,
        error_reason TEXT,              -- machine-readable: quota_exhausted, partition_failed, ...
        dashboard_link TEXT
    );
    CREATE TABLE job_partitions (
        job_id TEXT NOT NULL,
        partition INTEGER NOT NULL,
        items TEXT NOT NULL,            -- JSON: the partition's document references
        size_bytes BIGINT NOT NULL,
        status TEXT NOT NULL,           -- pending | done | failed
        attempts INTEGER NOT NULL DEFAULT 0,
        documents BIGINT NOT NULL DEFAULT 0,
        chunks BIGINT NOT NULL DEFAULT 0,
        tokens BIGINT NOT NULL DEFAULT 0,
        error TEXT,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (job_id, partition)
    );
    CREATE TABLE usage (
        tenant TEXT NOT NULL,
        day DATE NOT NULL,              -- UTC day
        chunks BIGINT NOT NULL DEFAULT 0,
        tokens BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, day)
    );
    """,
    # 2: skipped documents with their reasons, and schedules (for cron-triggered runs).
    """
    CREATE TABLE job_skipped (
        job_id TEXT NOT NULL,
        partition INTEGER,
        source TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        cron TEXT NOT NULL,
        spec TEXT NOT NULL,
        enabled BOOLEAN NOT NULL DEFAULT TRUE,
        last_run_at TIMESTAMPTZ,
        next_run_at TIMESTAMPTZ,
        created_at TIMESTAMPTZ NOT NULL
    );
    """,
    # 3: sync's counts (documents changed and deleted), and the schedule that started a job.
    """
    ALTER TABLE jobs ADD COLUMN documents_changed BIGINT DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN documents_deleted BIGINT DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN schedule_id TEXT;
    """,
    # 4: what a schedule needs to fire: its time zone, and the record of its latest run (the
    # claimed job's id makes a claim that a crash interrupted finish once, not twice).
    """
    ALTER TABLE schedules ADD COLUMN timezone TEXT DEFAULT 'UTC';
    ALTER TABLE schedules ADD COLUMN updated_at TIMESTAMPTZ;
    ALTER TABLE schedules ADD COLUMN last_job_id TEXT;
    ALTER TABLE schedules ADD COLUMN last_outcome TEXT;     -- claimed | fired | skipped | refused
    ALTER TABLE schedules ADD COLUMN last_outcome_at TIMESTAMPTZ;
    ALTER TABLE schedules ADD COLUMN last_error TEXT;       -- why the latest run was refused
    ALTER TABLE schedules ADD COLUMN runs_fired BIGINT DEFAULT 0;
    ALTER TABLE schedules ADD COLUMN runs_skipped BIGINT DEFAULT 0;
    ALTER TABLE schedules ADD COLUMN runs_refused BIGINT DEFAULT 0;
    """,
    # 5: how busy the GPUs were while a job's partitions ran (NVML, sampled on the workers):
    # busy % = gpu_busy_seconds / gpu_seconds; and the most GPU memory a worker held.
    """
    ALTER TABLE jobs ADD COLUMN gpu_seconds DOUBLE DEFAULT 0;       -- partition time on GPUs
    ALTER TABLE jobs ADD COLUMN gpu_busy_seconds DOUBLE DEFAULT 0;  -- of it, a kernel running
    ALTER TABLE jobs ADD COLUMN gpu_peak_bytes BIGINT DEFAULT 0;
    """,
    # 6: the job ledger: what each commit of a job did to its table (the job's table_name),
    # written in the transaction that records the commit (jobs/store/ledger.py). Sync, undo and
    # resume read it, not the table's recent commits, which a busy table passes in minutes.
    """
    CREATE TABLE ledger_commits (
        job_id TEXT NOT NULL,
        kind TEXT NOT NULL,             -- partition | overwrite | sync_deleted | skipped
        partition INTEGER,              -- the partition committed (kind partition)
        version BIGINT,                 -- the version the commit made (NULL: not yet known)
        read_version BIGINT,            -- the version it read: it holds the rows it replaced
        seen TEXT[],                    -- sync: documents read (skipped sources too)
        replaced TEXT[]                 -- documents whose rows (of read_version) it deleted
    );
    """,
    # 7: what kind of job a row is: `embed` (documents embedded into a table) or `maintenance`
    # (a table compacted, its indexes refreshed and its old versions removed:
    # jobs/runner/table_maintenance.py), and what a maintenance run did, as JSON.
    """
    ALTER TABLE jobs ADD COLUMN kind TEXT DEFAULT 'embed';
    ALTER TABLE jobs ADD COLUMN details TEXT;
    """,
    # 8: the generations of a table (jobs/migrations/): each a physical LanceDB table holding the
    # table's rows embedded with one model. Generation 1 is the table's own folder; a migration
    # builds the next one beside it, and the switch flips which one is `active` in one
    # transaction. A table with no row here is its own generation 1, active.
    """
    CREATE TABLE table_generations (
        tenant TEXT NOT NULL,
        table_name TEXT NOT NULL,
        generation INTEGER NOT NULL,
        physical TEXT NOT NULL,         -- the folder under the tenant's data dir ('' for 1)
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        state TEXT NOT NULL,            -- building | built | active | retired | failed | removed
        job_id TEXT,                    -- the job that built it (NULL for generation 1)
        catch_up_job TEXT,              -- the latest job that brought it up to the active one
        switch_requested BOOLEAN NOT NULL DEFAULT FALSE,  -- switch to it once reconciled
        switch_mode TEXT NOT NULL DEFAULT 'manual',       -- auto: switch when built
        reuse_chunks BOOLEAN NOT NULL DEFAULT FALSE,      -- the chunks' text kept as they were
        error TEXT,                     -- why it failed, or why its last switch did not happen
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        activated_at TIMESTAMPTZ,
        retired_at TIMESTAMPTZ,
        PRIMARY KEY (tenant, table_name, generation)
    );
    """,
]

LATEST_VERSION = len(MIGRATIONS)
