"""The service's settings: one object, from `embedscale serve` flags and EMBEDSCALE_* variables."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.file_access import DEFAULT_MAX_DOCUMENT_BYTES


class Settings(BaseSettings):
    """Where the service keeps its data, which cluster it runs on, who may do what."""

    model_config = SettingsConfigDict(env_prefix="EMBEDSCALE_")

    data_dir: Path = Path("./embedscale-data")
    host: str = "127.0.0.1"
    port: int = 8000
    scheduler: str | None = None  # an existing Dask scheduler's address
    cluster: str | None = None  # or a cluster spec YAML
    workers: int | None = None  # local workers (default: one per core)
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
    # Models tenants may name besides the default one (always allowed, under any alias):
    # registered names, hub ids or local folders; EMBEDSCALE_ALLOWED_MODELS='["a", "b"]'.
    allowed_models: list[str] = Field(default_factory=list)
    tiers_file: str | None = None
    admin_key: str | None = None  # EMBEDSCALE_ADMIN_KEY
    admin_key_file: str | None = None  # EMBEDSCALE_ADMIN_KEY_FILE: a file holding the key
    shutdown_timeout: float = 30.0  # seconds in-flight partitions get to finish on shutdown

    def resolved_admin_key(self) -> str | None:
        """The admin key from the variable or the file; None means no admin routes at all."""
        if self.admin_key:
            return self.admin_key
        if self.admin_key_file:
            key = Path(self.admin_key_file).read_text().strip()
            return key or None
        return None
