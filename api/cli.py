"""The `embedscale` command: run a job on a folder of documents, search the result."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.errors import EmbedscaleError

DEFAULT_DATA_DIR = "./embedscale-data"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedscale", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="embed a directory, file or glob of documents into a table")
    run.add_argument("source", help="directory (recursive), file or glob of documents")
    run.add_argument("--table", required=True, help="LanceDB table to write")
    run.add_argument("--model", default="all-MiniLM-L6-v2",
                     help="registered name, sentence-transformers hub id or local folder")
    run.add_argument("--chunk-tokens", type=int, help="tokens per chunk (default: model maximum)")
    run.add_argument("--overlap-tokens", type=int, help="tokens shared by neighbouring chunks")
    run.add_argument("--mode", choices=["append", "overwrite", "upsert"], default="append")
    run.add_argument("--text-field", default="text", help="text field of json/jsonl/csv/parquet")
    run.add_argument("--id-field", default="id", help="id field of json/jsonl/csv/parquet")
    _cluster_args(run)
    _common_args(run)

    search = sub.add_parser("search", help="find the chunks nearest to a query")
    search.add_argument("table")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="how many chunks (default 5)")
    search.add_argument("--where", help="SQL filter on the table's columns, e.g. \"source = 'a.md'\"")
    _common_args(search)
    return parser


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"default {DEFAULT_DATA_DIR}")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of an existing Dask scheduler")
    where.add_argument("--cluster", help="cluster spec YAML (see cluster_specs/)")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    p.add_argument("--verbose", action="store_true",
                   help="show the local workers' warnings and errors (hidden by default: the "
                        "summary reports what failed)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `embedscale` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from api.cli_run import run_command

            return run_command(args)
        from api.cli_search import search_command

        return search_command(args)
    except EmbedscaleError as exc:
        print(f"embedscale: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("embedscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
