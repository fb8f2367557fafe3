"""A real corpus for benchmarks, made on the spot: the pydoc text of CPython's standard library
(already on every machine, PSF licence), one .txt file per module."""
from __future__ import annotations

import importlib
import pkgutil
import pydoc
import sys
import warnings
from pathlib import Path

SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
        "ensurepip", "venv", "pydoc_data", "__main__", "xxsubtype"}


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


def write_corpus(folder: Path, target_bytes: int) -> Path:
    """Write the corpus as text files under `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in stdlib_docs(target_bytes):
        (folder / f"{name}.txt").write_text(text)
    return folder
