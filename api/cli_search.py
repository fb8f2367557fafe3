"""`embedscale search`: the chunks nearest to a query, with the table's own model."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from engine.search import search
from jobs.service import tenant_data_dir


def search_command(args: argparse.Namespace) -> int:
    hits = search(tenant_data_dir(args.data_dir, args.tenant), args.table, args.query,
                  k=args.k, where=args.where)
    if args.json:
        print(json.dumps([asdict(h) for h in hits], ensure_ascii=False))
        return 0
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 240 else snippet[:237] + "..."
        print(f"{rank}. {h.doc_id} [chunk {h.chunk_index}]  score {h.score:.3f}")
        print(f"   {snippet}")
    if not hits:
        print("no results")
    return 0
