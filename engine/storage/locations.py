"""Where tables and sources live: a local folder, or an object store URI (`s3://bucket/prefix`)
and the options that reach it (endpoint, region, credentials).

Lance and LanceDB write to object stores natively (the same two-phase fragments and single
commit as on a local disk); listings, existence checks and source files go through fsspec
(`s3fs`). Both get the same options, resolved once on the driver from the standard AWS variables
and a cluster spec's `storage_options` section, and shipped to workers inside each job's task
config, so workers of a remote cluster need no credentials of their own. The options never
print: `StorageOptions`' repr names the endpoint and hides every secret.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from embedscale.engine.errors import EmbedscaleError
from embedscale.engine.storage.errors import StorageError, describe_storage_error

# Lance's own option names (object_store's), and the other spellings a spec may use.
_ALIASES = {
    "aws_endpoint": ("aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url"),
    "aws_access_key_id": ("aws_access_key_id", "access_key_id"),
    "aws_secret_access_key": ("aws_secret_access_key", "secret_access_key"),
    "aws_session_token": ("aws_session_token", "session_token"),
    "aws_region": ("aws_region", "region"),
    "allow_http": ("allow_http", "aws_allow_http"),
}
_CANONICAL = {alias: key for key, aliases in _ALIASES.items() for alias in aliases}
# The standard variables, first found wins (AWS_ENDPOINT_URL is what the AWS SDKs read).
_ENVIRONMENT = {
    "aws_endpoint": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT"),
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "aws_session_token": ("AWS_SESSION_TOKEN",),
    "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "allow_http": ("AWS_ALLOW_HTTP",),
}
_SECRETS = frozenset({"aws_secret_access_key", "aws_session_token", "aws_access_key_id"})
DEFAULT_REGION = "us-east-1"  # what S3-compatible stores accept; lance needs one for signing


class StorageOptions(Mapping[str, str]):
    """Object-store options in Lance's names; immutable, hashable, picklable, and safe to
    print (secrets are hidden from repr and str)."""

    __slots__ = ("_items",)

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self._items = tuple(sorted((str(k), str(v)) for k, v in (options or {}).items()))

    def __getitem__(self, key: str) -> str:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StorageOptions):
            return NotImplemented
        return self._items == other._items

    def __reduce__(self):
        return (StorageOptions, (dict(self._items),))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={'***' if k in _SECRETS else v}" for k, v in self._items)
        return f"StorageOptions({shown})"

    __str__ = __repr__

    @property
    def endpoint(self) -> str | None:
        """The object store's endpoint URL (None: the provider's default, e.g. AWS)."""
        return self.get("aws_endpoint")


NO_OPTIONS = StorageOptions()


@dataclass(frozen=True, slots=True)
class Location:
    """A folder on an object store with the options that reach it: what a data dir is when
    tables live remotely (`--tables-uri`). Local data dirs stay plain paths."""

    uri: str
    options: StorageOptions = NO_OPTIONS

    def join(self, *parts: str) -> Location:
        """A folder below this one, reached the same way."""
        return Location(join(self.uri, *parts), self.options)

    def __str__(self) -> str:
        return self.uri


def is_uri(location: str | os.PathLike) -> bool:
    """Whether a location is an object-store URI (`s3://...`) rather than a local path."""
    return "://" in str(location)


def resolve_storage_options(
    spec: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> StorageOptions:
    """The options for object stores: the standard AWS variables, overridden by a spec's
    `storage_options` section. An http:// endpoint needs no separate `allow_http`: naming it is
    the consent. Unknown keys in the spec are an error naming the known ones."""
    environ = os.environ if environ is None else environ
    options: dict[str, str] = {}
    for key, names in _ENVIRONMENT.items():
        value = next((environ[n] for n in names if environ.get(n)), None)
        if value is not None:
            options[key] = value
    for key, value in (spec or {}).items():
        canonical = _CANONICAL.get(str(key).lower())
        if canonical is None:
            raise EmbedscaleError(
                f"unknown storage option {key!r}: use one of {', '.join(sorted(_ALIASES))}"
            )
        if value is not None:
            options[canonical] = str(value).lower() if isinstance(value, bool) else str(value)
    if options.get("aws_endpoint", "").startswith("http://"):
        options.setdefault("allow_http", "true")
    if "aws_endpoint" in options:  # real AWS finds the region itself (~/.aws/config, ...)
        options.setdefault("aws_region", DEFAULT_REGION)
    return StorageOptions(options)


def join(root: str | os.PathLike, *parts: str) -> str:
    """`root`/`parts`, for a local path or a URI (where os.path would eat the '//')."""
    if is_uri(root):
        return posixpath.join(str(root).rstrip("/"), *parts)
    return os.path.join(root, *parts)


def lance_options(location: str, options: StorageOptions) -> dict[str, str] | None:
    """What Lance's `storage_options` take for `location`: None for a local path."""
    return dict(options) if is_uri(location) and options else None


def filesystem(location: str, options: StorageOptions = NO_OPTIONS):
    """The fsspec filesystem of a URI, built from the options (not from whatever the process's
    own variables say, so driver and workers see the same store)."""
    scheme = str(location).split("://", 1)[0].lower()
    return _filesystem(scheme, options)


@lru_cache(maxsize=16)
def _filesystem(scheme: str, options: StorageOptions):
    import fsspec

    kwargs: dict[str, Any] = {}
    if scheme in ("s3", "s3a"):
        client: dict[str, str] = {}
        if "aws_region" in options:
            client["region_name"] = options["aws_region"]
        if options.endpoint:
            client["endpoint_url"] = options.endpoint
        kwargs = {
            "client_kwargs": client,
            # An endpoint that does not answer fails in seconds, not after minutes of
            # botocore's default retries.
            "config_kwargs": {
                "connect_timeout": 5,
                "read_timeout": 60,
                "retries": {"max_attempts": 3, "mode": "standard"},
            },
            # Listings change under us (tables created and dropped by other jobs): a
            # cached listing would report a dropped table as present.
            "use_listings_cache": False,
            "skip_instance_cache": True,
        }
        if "aws_access_key_id" in options:
            kwargs |= {
                "key": options["aws_access_key_id"],
                "secret": options.get("aws_secret_access_key"),
            }
            if "aws_session_token" in options:
                kwargs["token"] = options["aws_session_token"]
    try:
        return fsspec.filesystem(scheme, **kwargs)
    except (ImportError, ValueError) as exc:
        raise EmbedscaleError(f"cannot use {scheme}:// locations: {exc}") from None


def strip_scheme(uri: str) -> str:
    """`bucket/key` of `s3://bucket/key` (how fsspec names objects)."""
    return uri.split("://", 1)[1] if is_uri(uri) else uri


def with_scheme(scheme_of: str, path: str) -> str:
    """A path fsspec returned (`bucket/key`) as a URI with the scheme of `scheme_of`."""
    return f"{scheme_of.split('://', 1)[0]}://{path}"


def dir_exists(location: str, options: StorageOptions = NO_OPTIONS) -> bool:
    """Whether a folder (on an object store: any object under the prefix) exists."""
    if not is_uri(location):
        return os.path.isdir(location)
    fs = filesystem(location, options)
    path = strip_scheme(location).rstrip("/")
    if not hasattr(fs, "call_s3"):
        return bool(fs.exists(path + "/"))
    # One short listing, whatever the folder holds (a table's _versions has a manifest per
    # commit). Some stores (SeaweedFS, MinIO) keep empty folder markers ('key/') after the
    # objects are deleted: only a real object says the folder exists.
    bucket, _, key = path.partition("/")
    try:
        listed = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key + "/", MaxKeys=100)
    except FileNotFoundError:
        return False
    except Exception as exc:
        raise _storage_error(exc, location, options) from None
    return any(not item["Key"].endswith("/") for item in listed.get("Contents", []))


def remove_tree(location: str, options: StorageOptions = NO_OPTIONS) -> None:
    """Delete a folder or prefix with everything under it (nothing there is not an error)."""
    if not is_uri(location):
        import shutil

        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(location)
        return
    fs = filesystem(location, options)
    try:
        fs.rm(strip_scheme(location).rstrip("/"), recursive=True)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise _storage_error(exc, location, options) from None


def tree_bytes(location: str, options: StorageOptions = NO_OPTIONS) -> int:
    """The bytes of every file under a folder or prefix (0 if there is none)."""
    if not is_uri(location):
        total = 0
        for folder, _, names in os.walk(location):
            for name in names:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile (a cleanup)
                    total += os.path.getsize(os.path.join(folder, name))
        return total
    fs = filesystem(location, options)
    try:
        return int(fs.du(strip_scheme(location).rstrip("/"), total=True))
    except FileNotFoundError:
        return 0
    except Exception as exc:
        raise _storage_error(exc, location, options) from None


def child_names(location: str, options: StorageOptions = NO_OPTIONS) -> list[str]:
    """Names directly under a folder or prefix (empty if there is none)."""
    if not is_uri(location):
        return sorted(os.listdir(location)) if os.path.isdir(location) else []
    fs = filesystem(location, options)
    try:
        entries = fs.ls(strip_scheme(location).rstrip("/"), detail=False)
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise _storage_error(exc, location, options) from None
    return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)


def _storage_error(exc: BaseException, location: str, options: StorageOptions) -> Exception:
    return StorageError(describe_storage_error(exc, location, options.endpoint))


def check_reachable(uri: str, options: StorageOptions) -> None:
    """Raise StorageError unless the bucket of `uri` can be listed with `options`."""
    if not is_uri(uri):
        return
    bucket, _, key = strip_scheme(uri).partition("/")
    if not bucket:
        raise StorageError(f"{uri} names no bucket: use s3://bucket/prefix")
    fs = filesystem(uri, options)
    try:
        if hasattr(fs, "call_s3"):  # one short listing, within the prefix a policy may allow
            fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
        else:
            fs.ls(bucket, detail=False)
    except Exception as exc:
        raise StorageError(describe_storage_error(exc, uri, options.endpoint)) from None
