"""Keys found missing are remembered briefly: a loop of bad keys costs no store read, a key
issued later is never refused from the note, and the notes are bounded in number."""

from __future__ import annotations

import time

import pytest

from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.tenants.accounts import Tenants
from embedscale.jobs.tenants.key_cache import KeyCache
from embedscale.jobs.tenants.tiers import load_tiers


class CountingStore:
    """A real Store that counts its key lookups."""

    def __init__(self, store: Store) -> None:
        self._store, self.key_reads = store, 0

    def tenant_for_key_hash(self, digest: str) -> str | None:
        self.key_reads += 1
        return self._store.tenant_for_key_hash(digest)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


@pytest.fixture
def tenants(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    tenants = Tenants(CountingStore(store), load_tiers())
    yield tenants
    store.close()


def test_a_loop_of_one_bad_key_reads_the_store_once(tenants):
    for _ in range(50):
        assert tenants.tenant_for_key("es_guess") is None
    assert tenants.store.key_reads == 1
    assert tenants.key_lookups.counts() == {"store": 1, "cache": 49}
    assert tenants.cached_tenant_for_key("es_guess") == (True, None)
    assert tenants.cached_tenant_for_key("es_other") == (False, None)


def test_a_key_issued_after_it_was_found_missing_works_at_once(tenants, monkeypatch):
    monkeypatch.setattr("embedscale.jobs.tenants.accounts.new_api_key", lambda: "es_next")
    assert tenants.tenant_for_key("es_next") is None  # tried before it was issued: noted
    tenants.create("acme", "free")  # issues es_next
    assert tenants.tenant_for_key("es_next") == "acme"


def test_notes_of_missing_keys_expire_and_are_bounded():
    cache = KeyCache(invalid_ttl_s=0.05, max_invalid=3)
    for i in range(5):
        cache.put(f"d{i}", None)
    assert cache.invalid_count() == 3
    assert cache.get("d0") == (False, None)  # the oldest went first
    assert cache.get("d4") == (True, None)
    time.sleep(0.06)
    assert cache.get("d4") == (False, None)
    cache.put("d9", "acme")
    assert cache.get("d9") == (True, "acme")
    cache.forget_tenant("acme")
    assert cache.get("d9") == (False, None)
