"""`embedscale verify TABLE`: one table checked against itself and the job ledger
(jobs/table_verify.py); exit status 0 when it is sound, 1 naming each problem on stderr."""

from __future__ import annotations

import argparse
import json
import sys

from embedscale.api.settings import Settings
from embedscale.api.startup import open_service


def verify_command(args: argparse.Namespace) -> int:
    """Print what `embedscale verify` found; the exit status."""
    # The ledger is the data dir's DuckDB file: while `serve` owns it, this is a one-line error
    # naming the way out (GET /v1/tables/{name}/verify with the admin key).
    with open_service(Settings.from_args(args), local_user=True) as service:
        report = service.verify_table(args.tenant, args.table)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    elif report.ok:
        print(
            f"table '{report.table}' of tenant '{report.tenant}': ok ({report.rows} rows of "
            f"{report.jobs} jobs, model {report.model}, {report.dimension} dimensions)"
        )
    for line in report.lines():
        print(line, file=sys.stderr)
    return 0 if report.ok else 1
