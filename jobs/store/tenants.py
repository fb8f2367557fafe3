"""Tenants and their API keys (hashed), as the store keeps them."""

from __future__ import annotations

from typing import Any

from embedscale.jobs.errors import ConflictError, InvalidFieldError, NotFoundError
from embedscale.jobs.store.connection import Connected
from embedscale.jobs.store.records import TenantRecord
from embedscale.jobs.store.rows import TENANT_COLUMNS, TENANT_SELECT, tenant_from_row, utcnow

_TENANT_SETTABLE = ("tier", "daily_chunks", "max_concurrent_jobs")


class TenantRows(Connected):
    """The tenants and api_keys tables."""

    def create_tenant(self, name: str, tier: str) -> TenantRecord:
        with self._tx() as con:
            if con.execute("SELECT 1 FROM tenants WHERE name = ?", [name]).fetchone():
                raise ConflictError(f"tenant '{name}' already exists")
            con.execute(
                "INSERT INTO tenants (name, tier, created_at) VALUES (?, ?, ?)",
                [name, tier, utcnow()],
            )
        return self.get_tenant(name)

    def get_tenant(self, name: str) -> TenantRecord:
        with self._lock:
            row = self._con.execute(f"{TENANT_SELECT} WHERE name = ?", [name]).fetchone()
        if row is None:
            raise NotFoundError(f"no tenant '{name}'")
        return tenant_from_row(row)

    def list_tenants(self) -> list[TenantRecord]:
        with self._lock:
            rows = self._con.execute(f"{TENANT_SELECT} ORDER BY name").fetchall()
        return [tenant_from_row(r) for r in rows]

    def update_tenant(self, name: str, **values: Any) -> TenantRecord:
        """Set `tier`, `daily_chunks` or `max_concurrent_jobs` of a tenant, in one statement
        that also reads the row back (NotFoundError if there is no such tenant)."""
        unknown = sorted(set(values) - set(_TENANT_SETTABLE))
        if unknown:  # the column names go into the SQL text: only the known ones may
            raise InvalidFieldError(
                unknown[0],
                f"cannot set tenant field {unknown[0]!r}: use {', '.join(_TENANT_SETTABLE)}",
            )
        if not values:
            return self.get_tenant(name)
        with self._tx() as con:
            row = con.execute(
                f"UPDATE tenants SET {', '.join(f'{c} = ?' for c in values)} WHERE name = ? "
                f"RETURNING {', '.join(TENANT_COLUMNS)}",
                [*values.values(), name],
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no tenant '{name}'")
        return tenant_from_row(row)

    def add_api_key(self, tenant: str, key_hash: str, prefix: str) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT INTO api_keys (key_hash, tenant, prefix, created_at) VALUES (?, ?, ?, ?)",
                [key_hash, tenant, prefix, utcnow()],
            )

    def revoke_api_keys(self, tenant: str) -> int:
        with self._tx() as con:
            revoked = con.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL "
                "RETURNING key_hash",
                [utcnow(), tenant],
            ).fetchall()
        return len(revoked)

    def tenant_for_key_hash(self, key_hash: str) -> str | None:
        with self._lock:
            row = self._con.execute(
                "SELECT tenant FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", [key_hash]
            ).fetchone()
        return row[0] if row else None
