"""Which generation of a table readers without the job store open: a small pointer file.

The control plane records a table's generations in its DuckDB file and switches the active one
there, in one transaction (jobs/store/generations.py). `embedscale search`, `embedscale.search`
and `embedscale.tables` read tables straight from the data dir, without that file (a running
server owns it), so each switch also writes `<data dir>/generations/<name>.active`, holding the
active generation's folder ('' for the table's own): written after the transaction, replaced
whole (a reader sees the old pointer or the new one), and written again by the control plane's
migration sweep should a crash have come in between. No pointer: the table was never migrated.
"""

from __future__ import annotations

import os
from pathlib import Path

from embedscale.engine.storage.locations import (
    NO_OPTIONS,
    Location,
    StorageOptions,
    child_names,
    filesystem,
    is_uri,
    join,
    strip_scheme,
)

FOLDER = "generations"


def _where(data_dir: Path | Location | str, name: str) -> tuple[str, StorageOptions]:
    options = data_dir.options if isinstance(data_dir, Location) else NO_OPTIONS
    return join(str(data_dir), FOLDER, f"{name}.active"), options


def write_pointer(data_dir: Path | Location | str, name: str, folder: str) -> None:
    """Point readers of table `name` at the generation in `folder` ('' : the table's own)."""
    uri, options = _where(data_dir, name)
    if is_uri(uri):
        filesystem(uri, options).pipe(strip_scheme(uri), folder.encode())
        return
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    temporary = f"{uri}.{os.getpid()}.tmp"
    Path(temporary).write_text(folder, encoding="utf-8")
    os.replace(temporary, uri)  # atomic: a reader sees the old pointer or the new one


def remove_pointer(data_dir: Path | Location | str, name: str) -> None:
    """Forget the pointer of a dropped table (nothing there is not an error)."""
    uri, options = _where(data_dir, name)
    try:
        if is_uri(uri):
            filesystem(uri, options).rm(strip_scheme(uri))
        else:
            os.remove(uri)
    except FileNotFoundError:
        pass


def pointed_home(data_dir: Path | Location | str, name: str) -> Path | Location | str:
    """The data dir holding the generation of table `name` that readers open."""
    uri, options = _where(data_dir, name)
    try:
        if is_uri(uri):
            folder = filesystem(uri, options).cat(strip_scheme(uri)).decode()
        else:
            folder = Path(uri).read_text(encoding="utf-8")
    except FileNotFoundError:
        return data_dir
    folder = folder.strip()
    if not folder or ".." in folder.split("/"):
        return data_dir
    if isinstance(data_dir, Location):
        return data_dir.join(*folder.split("/"))
    return join(str(data_dir), *folder.split("/")) if is_uri(data_dir) else Path(data_dir) / folder


def pointed_names(data_dir: Path | Location | str) -> list[str]:
    """The tables of a data dir that have a pointer (were migrated at least once)."""
    uri, options = _where(data_dir, "x")
    folder = uri.rsplit("/", 1)[0] if is_uri(uri) else os.path.dirname(uri)
    try:
        names = child_names(folder, options)
    except FileNotFoundError:
        return []
    return sorted(n.removesuffix(".active") for n in names if n.endswith(".active"))
