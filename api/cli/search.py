"""`embedscale search`: the chunks that best match a query (by meaning, words or both), with the
table's own model."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from embedscale.api.settings import Settings
from embedscale.api.startup import tables_home
from embedscale.engine.tables.generation_pointer import pointed_home
from embedscale.engine.tables.search import search
from embedscale.jobs.tenants.accounts import tenant_data_dir


def search_command(args: argparse.Namespace) -> int:
    """Print the hits of `embedscale search`; the exit status."""
    # Straight to the table, not through the job service: its DuckDB file may be owned by a
    # running `serve`, and a search needs none of it.
    data_dir = tenant_data_dir(tables_home(Settings.from_args(args), check=True), args.tenant)
    hits = search(
        pointed_home(data_dir, args.table),  # a migrated table: its active generation
        args.table,
        args.query,
        k=args.k,
        where=args.where,
        mode=args.mode,
        nprobes=args.nprobes,
        refine=args.refine,
    )
    if args.json:
        print(json.dumps([asdict(h) for h in hits], ensure_ascii=False))
        return 0
    digits = 4 if args.mode == "hybrid" else 3  # fused scores are near 1/61: 0.0164, 0.0161
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 240 else snippet[:237] + "..."
        print(f"{rank}. {h.doc_id} [chunk {h.chunk_index}]  score {h.score:.{digits}f}")
        print(f"   {snippet}")
    if not hits:
        print("no results")
    return 0
