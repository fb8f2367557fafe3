"""`embedscale serve`: the job service over HTTP, with uvicorn."""
from __future__ import annotations

import argparse
import logging

from api.settings import Settings


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    overrides = {k: v for k, v in {
        "host": args.host, "port": args.port, "data_dir": args.data_dir,
        "scheduler": args.scheduler, "cluster": args.cluster, "workers": args.workers,
        "allow_roots": args.allow_root, "tiers_file": args.tiers,
    }.items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    # uvicorn turns SIGTERM and Ctrl-C into the app's lifespan shutdown: graceful.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="info", timeout_graceful_shutdown=int(settings.shutdown_timeout) + 5)
    return 0
