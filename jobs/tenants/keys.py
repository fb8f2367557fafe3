"""API keys: random, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "es_"


def new_api_key() -> str:
    """A fresh key: 'es_' and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """What the store keeps. Keys are random and long, so a plain SHA-256 is enough (no
    password stretching needed) and lets a request's key be looked up by its hash."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """The first characters of a key: enough to tell keys apart in listings, useless alone."""
    return key[:10]


def same_key(a: str, b: str) -> bool:
    """Constant-time comparison (for the admin key)."""
    return hmac.compare_digest(a.encode(), b.encode())
