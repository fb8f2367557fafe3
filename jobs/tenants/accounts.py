"""Tenants: their names, tiers with their own overrides, API keys, and today's usage.

`Tenants` owns the two caches every request reads (a tenant's effective tier, a key's tenant,
jobs/tenants/key_cache.py, which also remembers missing keys briefly). Both are cleared after the
store
write they reflect, never before: a read between a clear and the write would cache the old
value for good.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from embedscale.engine.storage.locations import Location
from embedscale.jobs.errors import InvalidFieldError, NotFoundError
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.records import TenantRecord
from embedscale.jobs.tally import Tally
from embedscale.jobs.tenants.key_cache import KeyCache
from embedscale.jobs.tenants.keys import hash_key, key_prefix, new_api_key
from embedscale.jobs.tenants.quotas import remaining_today, resets_at
from embedscale.jobs.tenants.tiers import Tier, with_overrides

LOCAL_TENANT = "local"  # the CLI's built-in tenant; its tables live right in the data dir
LOCAL_TIER = "unlimited"
TENANT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_TENANT_NAME = re.compile(TENANT_NAME_PATTERN)

V = TypeVar("V")  # what a cache holds


def check_tenant_name(name: object, field: str = "tenant") -> str:
    """`name` if it is a tenant name (1-64 lowercase letters, digits, '-', '_'), else
    InvalidFieldError naming `field`. Such a name can never be a path ('../x', 'a/b')."""
    # fullmatch: with match, '$' also matches before a final newline.
    if not isinstance(name, str) or not _TENANT_NAME.fullmatch(name):
        raise InvalidFieldError(
            field, f"invalid tenant name {name!r}: use 1-64 lowercase letters, digits, '-' or '_'"
        )
    return name


def tenant_data_dir(data_dir: str | Path | Location, tenant: str) -> Path | Location:
    """Where a tenant's tables live: the local tenant's in the data dir itself, others' each in
    a folder (an object store: a prefix) of their own, so no table name can reach another
    tenant's tables. A name outside the tenant-name rule is refused here, where it would become
    a path."""
    check_tenant_name(tenant)
    if isinstance(data_dir, Location):
        return data_dir if tenant == LOCAL_TENANT else data_dir.join("tenants", tenant)
    data_dir = Path(data_dir)
    return data_dir if tenant == LOCAL_TENANT else data_dir / "tenants" / tenant


@dataclass(frozen=True)
class Usage:
    """A tenant's quota and what it used today."""

    tenant: str
    tier: str
    daily_chunks: int | None
    used_chunks: int
    used_tokens: int
    remaining_chunks: int | None
    resets_at: str
    max_concurrent_jobs: int | None
    active_jobs: int
    # Chunks the tenant's queued and running jobs are still expected to embed (estimates less
    # what they charged): a submission is admitted only within remaining_chunks less these.
    promised_chunks: int = 0


class Tenants:
    """The tenants of one store, with the tiers they may have."""

    def __init__(self, store: Store, tiers: dict[str, Tier]) -> None:
        self.store, self.tiers = store, tiers
        self._lock = threading.Lock()
        self._tier_cache: dict[str, Tier] = {}
        self._keys = KeyCache()
        # Key lookups by what answered them, 'store' or 'cache' (for /metrics): a flood of
        # bad keys shows as cache answers, not store reads.
        self.key_lookups = Tally()
        # Bumped by every tenant write: a value read from the store before a write finished
        # is not cached after it (see _cache).
        self._version = 0

    def ensure_local(self) -> None:
        """Create the CLI's built-in, unlimited tenant if the store has none yet."""
        try:
            self.store.get_tenant(LOCAL_TENANT)
        except NotFoundError:
            self.store.create_tenant(LOCAL_TENANT, LOCAL_TIER)

    def get(self, name: str) -> TenantRecord:
        """A tenant's record (NotFoundError if there is none)."""
        return self.store.get_tenant(name)

    def list(self) -> list[TenantRecord]:
        """Every tenant, by name."""
        return self.store.list_tenants()

    def tier_of(self, tenant: str) -> Tier:
        """The tenant's effective limits: its tier with its own overrides. Cached: this is
        asked for every request and every partition, and only this class changes tenants."""
        tier = self._tier_cache.get(tenant)
        if tier is None:
            version = self._version
            tier = self._load_tier(tenant)
            self._cache(self._tier_cache, tenant, tier, version)
        return tier

    def _load_tier(self, tenant: str) -> Tier:
        record = self.store.get_tenant(tenant)
        tier = self.tiers.get(record.tier)
        if tier is None:
            raise InvalidFieldError(
                "tier",
                f"tenant '{tenant}' has tier '{record.tier}', which the tiers file does not define",
            )
        return with_overrides(tier, record.daily_chunks, record.max_concurrent_jobs)

    def cached_tier(self, tenant: str) -> Tier | None:
        """The tenant's effective limits if they are in memory (None: only the store can
        tell), for callers that must not wait on the store (the API's event loop)."""
        return self._tier_cache.get(tenant)

    def _cache(self, cache: dict[str, V], key: str, value: V, version: int) -> None:
        with self._lock:
            if version == self._version:  # no tenant write since the read began
                cache[key] = value

    def _written(self, name: str) -> None:
        # After the write: a read in between may have cached the old values; this drops them,
        # and the version keeps a read that began before the write from caching them after.
        with self._lock:
            self._version += 1
            self._tier_cache.pop(name, None)
            self._keys.forget_tenant(name)

    def create(self, name: str, tier: str) -> tuple[TenantRecord, str]:
        """A new tenant and its first API key (returned once, stored hashed)."""
        check_tenant_name(name, "name")
        self._check_tier(tier)
        record = self.store.create_tenant(name, tier)
        return record, self._issue_key(name)

    def set_tier(self, name: str, tier: str) -> TenantRecord:
        """Move a tenant to another tier (its own overrides stay)."""
        self._check_tier(tier)
        record = self.store.update_tenant(name, tier=tier)
        self._written(name)
        return record

    def set_limits(
        self, name: str, daily_chunks: int | None = None, max_concurrent_jobs: int | None = None
    ) -> TenantRecord:
        """Per-tenant overrides of the tier's limits (None: the tier's)."""
        for field, value in (
            ("daily_chunks", daily_chunks),
            ("max_concurrent_jobs", max_concurrent_jobs),
        ):
            if value is not None and value < 0:
                raise InvalidFieldError(field, f"{field}={value} must not be negative")
        record = self.store.update_tenant(
            name, daily_chunks=daily_chunks, max_concurrent_jobs=max_concurrent_jobs
        )
        self._written(name)
        return record

    def rotate_key(self, name: str) -> str:
        """Revoke the tenant's keys and issue a new one (returned once)."""
        self.store.get_tenant(name)
        self.store.revoke_api_keys(name)
        self._written(name)
        return self._issue_key(name)

    def tenant_for_key(self, key: str) -> str | None:
        """The tenant of an API key (None if unknown or revoked). Cached per key hash:
        every request asks, and only rotate_key revokes; a key found missing is remembered
        briefly too, so a loop of bad keys costs no store read (jobs/tenants/key_cache.py)."""
        known, tenant = self.cached_tenant_for_key(key)
        if known:
            return tenant
        digest = hash_key(key)
        version = self._version
        tenant = self.store.tenant_for_key_hash(digest)
        self.key_lookups.add("store")
        with self._lock:
            if version == self._version:  # no tenant write since the read began
                self._keys.put(digest, tenant)
        return tenant

    def cached_tenant_for_key(self, key: str) -> tuple[bool, str | None]:
        """(known, tenant) from memory alone: (True, tenant) for a key known, (True, None)
        for a key known to be missing, (False, None) when only the store can tell."""
        known, tenant = self._keys.get(hash_key(key))
        if known:
            self.key_lookups.add("cache")
        return known, tenant

    def usage(self, tenant: str) -> Usage:
        """The tenant's quota, what it used today, and its jobs holding a concurrency slot."""
        tier = self.tier_of(tenant)
        chunks, tokens = self.store.usage(tenant)
        return Usage(
            tenant,
            tier.name,
            tier.daily_chunks,
            chunks,
            tokens,
            remaining_today(tier, chunks),
            resets_at().isoformat(),
            tier.max_concurrent_jobs,
            self.store.active_job_counts().get(tenant, 0),
            self.store.promised(tenant),
        )

    def _issue_key(self, tenant: str) -> str:
        key = new_api_key()
        self.store.add_api_key(tenant, hash_key(key), key_prefix(key))
        # After the write: a new key is never refused from the note of a missing one (a
        # lookup that began before the write is kept from noting it by the version).
        with self._lock:
            self._version += 1
            self._keys.forget_invalid()
        return key

    def _check_tier(self, tier: str) -> None:
        if tier not in self.tiers:
            raise InvalidFieldError(
                "tier", f"unknown tier {tier!r}: use one of {', '.join(sorted(self.tiers))}"
            )
