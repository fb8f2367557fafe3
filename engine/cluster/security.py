"""TLS between the scheduler, the workers and embedscale's client: a cluster spec's `tls`
section names a CA, a certificate and its key (PEM files), which become Dask's `Security`.

One certificate serves every role here (scheduler, worker, client), as in Dask's own
`Security.temporary()`; each side checks the others against the CA, and encryption is required,
so a plain-TCP peer is refused. Certificates are files, never inline in the spec, so a spec can
be shared without its secrets.
"""

from __future__ import annotations

import os
from typing import Any

from embedscale.engine.errors import EmbedscaleError

TLS_KEYS = ("ca_file", "cert_file", "key_file")


def check_tls(tls: dict[str, Any]) -> None:
    """EmbedscaleError naming the first missing key or file of a spec's `tls` section."""
    if not isinstance(tls, dict):
        raise EmbedscaleError("tls: expected ca_file, cert_file and key_file")
    unknown = set(tls) - set(TLS_KEYS)
    if unknown:
        raise EmbedscaleError(f"tls: unknown keys {sorted(unknown)}; known: {list(TLS_KEYS)}")
    for key in TLS_KEYS:
        path = tls.get(key)
        if not path:
            raise EmbedscaleError(f"tls: {key} is missing (a PEM file)")
        if not os.path.isfile(os.path.expanduser(str(path))):
            raise EmbedscaleError(f"tls: {key} {path} does not exist")


def security_of(tls: dict[str, Any] | None):
    """Dask's Security for a spec's `tls` section (checked first); None without one."""
    if tls is None:
        return None
    check_tls(tls)
    from distributed.security import Security

    ca, cert, key = (os.path.abspath(os.path.expanduser(str(tls[k]))) for k in TLS_KEYS)
    return Security(
        tls_ca_file=ca,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        require_encryption=True,
    )


def connect_error(address: str | None, security: Any | None, exc: BaseException) -> str:
    """Why connecting to a scheduler failed, in one line, with the likely fix: a plain-TCP
    client against a TLS scheduler only sees a connection that never completes its
    handshake."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if security is None and str(address).startswith("tcp://"):
        hint = (
            "; if that scheduler uses TLS, give the cluster spec a tls section (ca_file, "
            "cert_file, key_file) and its tls:// address"
        )
    elif security is not None and not str(address).startswith("tls://"):
        hint = "; with a tls section the scheduler's address must start with tls://"
    else:
        hint = ""
    return f"cannot reach the Dask scheduler at {address}: {reason}{hint}"
