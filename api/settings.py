"""embedscale's settings: one object, from command-line flags over EMBEDSCALE_* variables over
the defaults, for every command (`run`, `jobs`, `tenants`, `search` and `serve`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from embedscale.engine.sources.file_access import DEFAULT_MAX_DOCUMENT_BYTES
from embedscale.jobs.policies.schedules import MAX_SCHEDULES_PER_TENANT
from embedscale.jobs.runner.table_maintenance import COMPACT_AFTER_FRAGMENTS, RETENTION
from embedscale.jobs.store.retention import DEFAULT_RETENTION_DAYS

DEFAULT_DATA_DIR = Path("./embedscale-data")
# Flags of the `embedscale` commands (argparse dests) -> the setting each one sets. A flag not
# given leaves the variable's value, or the default.
FLAG_SETTINGS = {
    "data_dir": "data_dir",
    "tables_uri": "tables_uri",
    "host": "host",
    "port": "port",
    "scheduler": "scheduler",
    "cluster": "cluster",
    "workers": "workers",
    "allow_root": "allow_roots",
    "tiers": "tiers_file",
    "max_document_bytes": "max_document_bytes",
    "allow_model": "allowed_models",
    "dashboard_address": "dashboard_address",
    "allow_provider_url": "allowed_provider_urls",
    "expose_dashboard": "expose_dashboard",
    "log_format": "log_format",
    "max_request_bytes": "max_request_bytes",
    "max_websockets_per_tenant": "max_websockets_per_tenant",
    "max_schedules_per_tenant": "max_schedules_per_tenant",
    "job_retention_days": "job_retention_days",
}
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_WEBSOCKETS_PER_TENANT = 20


class Settings(BaseSettings):
    """Where embedscale keeps its data, which cluster it runs on, who may do what. The
    allow-lists (allow_roots, allowed_models) and the admin key guard `serve` from its
    tenants; the other commands run as the machine's own user and ignore them."""

    model_config = SettingsConfigDict(env_prefix="EMBEDSCALE_")

    data_dir: Path = DEFAULT_DATA_DIR  # EMBEDSCALE_DATA_DIR
    # Tables on an object store (s3://bucket/prefix, EMBEDSCALE_TABLES_URI), each tenant under
    # its own prefix; the job state (DuckDB) stays in data_dir on this machine.
    tables_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    scheduler: str | None = None  # an existing Dask scheduler's address
    cluster: str | None = None  # or a cluster spec YAML
    workers: int | None = Field(None, ge=1)  # local workers (default: one per core)
    # The Dask dashboard of a cluster we start: None = the API's host, port 8787 (a spec's bare
    # ':port' also binds to the API's host, not to every interface); 'none' = no dashboard.
    dashboard_address: str | None = None
    # The dashboard has no authentication: tenants get its link and the scheduler's address
    # from /v1/cluster only when the operator says so.
    expose_dashboard: bool = False
    allow_roots: list[str] = Field(default_factory=list)  # server-side source folders allowed
    # Largest document a job may read (a file read whole, a JSON line): larger ones are skipped
    # with their size, so no tenant's file can exhaust a worker's memory.
    max_document_bytes: int = Field(DEFAULT_MAX_DOCUMENT_BYTES, gt=0)
    # Largest request body `serve` reads (EMBEDSCALE_MAX_REQUEST_BYTES): a larger one is a 413
    # naming this limit, answered from its Content-Length before any of it is read (or once
    # this much has come, without one), and after the key was checked.
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, gt=0)
    # Progress sockets (WS /v1/jobs/{id}/events) one tenant may hold open at once: each holds
    # a subscription and a task of the server's event loop; one more is refused with a 429
    # naming this limit (EMBEDSCALE_MAX_WEBSOCKETS_PER_TENANT).
    max_websockets_per_tenant: int = Field(DEFAULT_MAX_WEBSOCKETS_PER_TENANT, gt=0)
    # Schedules one tenant may have: each is read on every tick of the firing loop; one more
    # is refused with a 409 naming this limit (EMBEDSCALE_MAX_SCHEDULES_PER_TENANT).
    max_schedules_per_tenant: int = Field(MAX_SCHEDULES_PER_TENANT, ge=0)
    # Days an ended job keeps the inline texts it was sent (its record, figures and ledger
    # stay; the rows it wrote are the tenant's table's): EMBEDSCALE_JOB_RETENTION_DAYS.
    job_retention_days: float = Field(DEFAULT_RETENTION_DAYS, ge=0)
    # Table maintenance (compaction, index refresh, old versions removed): a run once a table
    # has taken this many fragments from commits (EMBEDSCALE_MAINTENANCE_AFTER_FRAGMENTS), and
    # at least hourly for one that took any; versions younger than
    # EMBEDSCALE_VERSION_RETENTION_DAYS are kept (to restore from, and for time travel).
    maintenance_after_fragments: int = Field(COMPACT_AFTER_FRAGMENTS, ge=1)
    version_retention_days: float = Field(RETENTION.days, ge=0)
    # /v1/ requests without a valid key (none, a wrong one) answered per client address and
    # minute; past that a 429 without touching the database, so that a loop guessing keys
    # costs other tenants nothing (EMBEDSCALE_UNAUTHENTICATED_PER_MINUTE).
    unauthenticated_per_minute: int = Field(120, gt=0)
    # Models tenants may name besides the default one (always allowed, under any alias):
    # registered names, hub ids or local folders; EMBEDSCALE_ALLOWED_MODELS='["a", "b"]'.
    allowed_models: list[str] = Field(default_factory=list)
    # Endpoints a job's provider 'openai' may name: the workers send them their
    # EMBEDSCALE_PROVIDER_API_KEY, so a tenant must not choose where it goes.
    allowed_provider_urls: list[str] = Field(default_factory=list)
    tiers_file: str | None = None
    admin_key: str | None = None  # EMBEDSCALE_ADMIN_KEY
    admin_key_file: str | None = None  # EMBEDSCALE_ADMIN_KEY_FILE: a file holding the key
    shutdown_timeout: float = 30.0  # seconds in-flight partitions get to finish on shutdown
    # How `serve` logs: text lines, or one JSON object a line with the job and tenant ids of
    # the lines about one (api/server/log_format.py). EMBEDSCALE_LOG_FORMAT=json.
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """The settings of a command: its flags (those it has and was given) over the
        EMBEDSCALE_* variables over the defaults."""
        return cls(
            **{
                setting: getattr(args, flag)
                for flag, setting in FLAG_SETTINGS.items()
                if getattr(args, flag, None) is not None
            }
        )

    def resolved_admin_key(self) -> str | None:
        """The admin key from the variable or the file; None means no admin routes at all."""
        if self.admin_key:
            return self.admin_key
        if self.admin_key_file:
            key = Path(self.admin_key_file).read_text().strip()
            return key or None
        return None
