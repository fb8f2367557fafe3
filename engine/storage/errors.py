"""Object-store failures as one line that names what to fix: an endpoint that does not answer,
credentials the store refuses, a bucket that does not exist. Checked before a job or a server
starts (engine.storage.locations.check_reachable), so a typo costs a second, not a cluster start
and a failed job. This module names failures only: it imports nothing of the locations it
describes, so the two never import each other."""

from __future__ import annotations

from embedscale.engine.errors import EmbedscaleError


class StorageError(EmbedscaleError, OSError):
    """An object store that cannot be used as configured; the message says what to fix."""


class StoreUnavailable(EmbedscaleError):
    """An object could not be read for a passing reason (the store throttles, a connection
    dropped): not an OSError, so the readers do not skip the document for good; the partition
    fails and the runner retries it with back-off."""


def describe_storage_error(exc: BaseException, uri: str, endpoint: str | None) -> str:
    """What went wrong reaching `uri`, in one line without secrets, and what to check."""
    where = endpoint or "the provider's default endpoint"
    bucket = uri.split("://", 1)[-1].split("/", 1)[0]
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ConnectionError",
        "TimeoutError",
    }:
        return (
            f"cannot reach the object store at {where} for {uri}: check AWS_ENDPOINT_URL "
            "(or the cluster spec's storage_options endpoint) and that the store is up"
        )
    if "NoCredentialsError" in names:
        return (
            f"no credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or the cluster spec's storage_options)"
        )
    if isinstance(exc, PermissionError):
        return (
            f"the object store at {where} refused the credentials for {uri} "
            f"({_first_line(exc)}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or the cluster spec's storage_options)"
        )
    if isinstance(exc, FileNotFoundError):
        return f"bucket {bucket!r} does not exist at {where}: create it first, or fix the URI {uri}"
    return f"object store error for {uri}: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
