"""Tenants and their caches: a cached tier or key never outlives the write that changed it.

Each race is made deterministic with a store whose calls run another request's read at the
exact moment in question (no threads, no sleeps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from embedscale.jobs.errors import InvalidFieldError, NotFoundError
from embedscale.jobs.service import JobService
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.tenants.accounts import Tenants, check_tenant_name, tenant_data_dir
from embedscale.jobs.tenants.tiers import load_tiers


class HookedStore:
    """A real Store whose `method` runs `hook` first (before) or last (after), once."""

    def __init__(
        self, store: Store, method: str, hook: Callable[[], Any], after: bool = False
    ) -> None:
        self._store, self._method, self._hook, self._after = store, method, hook, after

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name != self._method or self._hook is None:
            return real

        def hooked(*args: Any, **kwargs: Any) -> Any:
            hook, self._hook = self._hook, None
            if not self._after:
                hook()
            result = real(*args, **kwargs)
            if self._after:
                hook()
            return result

        return hooked


@pytest.fixture
def tenants(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    tenants = Tenants(store, load_tiers())
    tenants.create("acme", "free")
    yield tenants
    store.close()


def test_a_read_just_before_the_write_does_not_keep_the_old_tier(tenants):
    real = tenants.store
    assert tenants.tier_of("acme").name == "free"
    # Another request asks for the tier after the cache was last cleared but before the
    # store has the new one (clearing first, as before, cached 'free' for good here).
    tenants.store = HookedStore(real, "update_tenant", lambda: tenants.tier_of("acme"))
    tenants.set_tier("acme", "premium")
    assert tenants.tier_of("acme").name == "premium"
    assert real.get_tenant("acme").tier == "premium"

    tenants.store = HookedStore(real, "update_tenant", lambda: tenants.tier_of("acme"))
    tenants.set_limits("acme", daily_chunks=7)
    assert tenants.tier_of("acme").daily_chunks == 7


def test_a_read_that_began_before_the_write_is_not_cached_after_it(tenants):
    real = tenants.store
    # The read fetches the old row; the write (and its cache clear) happens before the read
    # stores what it fetched: that old tier must not be cached.
    tenants.store = HookedStore(
        real, "get_tenant", lambda: Tenants.set_tier(tenants, "acme", "enterprise"), after=True
    )
    assert tenants.tier_of("acme").name == "free"  # what it read: the write came after
    tenants.store = real
    assert tenants.tier_of("acme").name == "enterprise"


def test_a_key_looked_up_during_its_rotation_is_not_cached(tenants):
    real = tenants.store
    _, key = tenants.create("beta", "free")
    new_keys = []
    tenants.store = HookedStore(
        real,
        "tenant_for_key_hash",
        lambda: new_keys.append(Tenants.rotate_key(tenants, "beta")),
        after=True,
    )
    assert tenants.tenant_for_key(key) == "beta"  # read before the revocation
    tenants.store = real
    assert tenants.tenant_for_key(key) is None  # revoked: not served from a cache
    assert tenants.tenant_for_key(new_keys[0]) == "beta"


def test_the_service_keeps_its_tenant_methods(tmp_path):
    with JobService(tmp_path) as service:
        record, key = service.create_tenant("acme", "free")
        assert service.tenant_for_key(key) == "acme" == record.name
        assert service.set_tier("acme", "premium").tier == "premium"
        assert service.tier_of("acme").daily_chunks == 10_000
        assert service.set_limits("acme", daily_chunks=5).daily_chunks == 5
        assert service.usage("acme").remaining_chunks == 5
        assert service.tenant_for_key(service.rotate_key("acme")) == "acme"
        assert service.tenant_for_key(key) is None
        assert [t.name for t in service.list_tenants()] == ["acme", "local"]
        assert service.get_tenant("local").tier == "unlimited"
        with pytest.raises(NotFoundError, match="no tenant 'nobody'"):
            service.set_tier("nobody", "free")


@pytest.mark.parametrize("name", ["../x", "a/b", "Acme", "", "x\n", "-a", "a" * 65])
def test_names_outside_the_rule_are_refused_where_they_would_become_paths(tmp_path, name):
    with pytest.raises(InvalidFieldError, match="invalid tenant name") as err:
        tenant_data_dir(tmp_path, name)
    assert err.value.field == "tenant"
    with pytest.raises(InvalidFieldError) as err:
        check_tenant_name(name, "name")
    assert err.value.field == "name"
