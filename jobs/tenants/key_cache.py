"""What the service knows of API keys without asking DuckDB: the tenant of each key found, and,
for a short while, the keys found to be no key at all.

Why the second half: a loop guessing keys (or a client left with a revoked one) asked the
store once a request, under its one lock; measured, a flood of bad-key requests cut other
tenants' small jobs by about 75%. A key found missing is now answered from memory for
INVALID_TTL_S, and at most MAX_INVALID of them are kept (least recently seen out first), so
no flood of distinct guesses can grow the memory without bound. A key issued later is never
refused from here: issuing one forgets every invalid key (jobs.tenants.accounts.Tenants).

Keys are held by their hash (jobs.tenants.keys.hash_key), never as given.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

INVALID_TTL_S = 30.0
MAX_INVALID = 10_000


class KeyCache:
    """Key hash -> its tenant, or a brief note that no tenant has it."""

    def __init__(
        self, invalid_ttl_s: float = INVALID_TTL_S, max_invalid: int = MAX_INVALID
    ) -> None:
        self.invalid_ttl_s, self.max_invalid = invalid_ttl_s, max_invalid
        self._lock = threading.Lock()
        self._tenants: dict[str, str] = {}
        self._invalid: OrderedDict[str, float] = OrderedDict()  # hash -> until (monotonic)

    def get(self, digest: str) -> tuple[bool, str | None]:
        """(known, tenant): (True, name) for a key found, (True, None) for a key recently
        found to be none, (False, None) when only the store can tell."""
        tenant = self._tenants.get(digest)
        if tenant is not None:
            return True, tenant
        with self._lock:
            until = self._invalid.get(digest)
            if until is None:
                return False, None
            if until < time.monotonic():
                del self._invalid[digest]
                return False, None
            self._invalid.move_to_end(digest)
            return True, None

    def put(self, digest: str, tenant: str | None) -> None:
        """What the store answered for `digest` (None: no tenant has that key)."""
        with self._lock:
            if tenant is not None:
                self._tenants[digest] = tenant
                self._invalid.pop(digest, None)
                return
            self._invalid[digest] = time.monotonic() + self.invalid_ttl_s
            self._invalid.move_to_end(digest)
            while len(self._invalid) > self.max_invalid:
                self._invalid.popitem(last=False)

    def forget_tenant(self, tenant: str) -> None:
        """Drop the keys of `tenant` (after a write that revoked or moved them)."""
        with self._lock:
            self._tenants = {d: t for d, t in self._tenants.items() if t != tenant}

    def forget_invalid(self) -> None:
        """Drop every note of a missing key (after a key was issued)."""
        with self._lock:
            self._invalid.clear()

    def invalid_count(self) -> int:
        """How many missing keys are remembered now."""
        with self._lock:
            return len(self._invalid)
