"""Real corpora for benchmarks, made on the spot from what every machine already has: the pydoc
text of CPython's standard library (PSF licence), one .txt file per module, with documents of
mixed length; the Debian changelogs and READMEs under /usr/share/doc, long documents; and those
same Debian documents joined into one (a single long file: one document, one partition)."""

from __future__ import annotations

import importlib
import pkgutil
import pydoc
import sys
import warnings
from pathlib import Path

SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "ensurepip",
    "venv",
    "pydoc_data",
    "__main__",
    "xxsubtype",
}


def stdlib_docs(target_bytes: int) -> list[tuple[str, str]]:
    """(module name, pydoc text) pairs, in name order, until `target_bytes` of text."""
    docs, total = [], 0
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names)
    for name in names:
        if name in SKIP or name.startswith("_"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                text = pydoc.plain(pydoc.render_doc(module, renderer=pydoc.plaintext))
        except Exception:
            continue
        docs.append((name, text))
        total += len(text.encode())
        if total >= target_bytes:
            break
    return docs


DEBIAN_DOCS = Path("/usr/share/doc")


def debian_docs(target_bytes: int, root: Path = DEBIAN_DOCS) -> list[tuple[str, str]]:
    """(name, text) of long real documents: the Debian changelogs and READMEs of the installed
    packages (gzipped or not), in path order, until `target_bytes` of text. Empty where the
    machine has none (minimal images strip /usr/share/doc)."""
    import gzip

    docs, total = [], 0
    paths = sorted(
        p
        for pattern in ("*/changelog*", "*/README*")
        for p in root.glob(pattern)
        if p.is_file() and not p.is_symlink()
    )
    for path in paths:
        raw = path.read_bytes()
        try:
            text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode()
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        if len(text) < 4096:  # long documents only
            continue
        name = f"{path.parent.name}-{path.name.removesuffix('.gz')}"
        docs.append((name, text))
        total += len(text.encode())
        if total >= target_bytes:
            break
    return docs


def one_long_document(target_bytes: int, root: Path = DEBIAN_DOCS) -> list[tuple[str, str]]:
    """The Debian documents of `debian_docs` joined into one: a job whose one partition is
    all of its work (empty where the machine has none)."""
    docs = debian_docs(target_bytes, root)
    return [("one-long-document", "\n\n".join(text for _, text in docs))] if docs else []


CORPORA = {"pydoc": stdlib_docs, "debian-docs": debian_docs, "long-document": one_long_document}


def write_corpus(folder: Path, target_bytes: int, kind: str = "pydoc") -> Path:
    """Write corpus `kind` (see CORPORA) as text files under `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in CORPORA[kind](target_bytes):
        (folder / f"{name}.txt").write_text(text)
    return folder
