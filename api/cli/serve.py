"""`embedscale serve`: the job service over HTTP, with uvicorn."""

from __future__ import annotations

import argparse

from embedscale.api.settings import Settings


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from embedscale.api.server.app import create_app, open_service
    from embedscale.api.server.log_format import configure_logging, uvicorn_log_config

    settings = Settings.from_args(args)
    # API keys in query strings and headers never reach a log line; job and tenant ids do.
    configure_logging(settings.log_format)
    # Opened here, not in the app's lifespan: a locked or damaged data dir ends `serve` with
    # one line (uvicorn would log a traceback), and before a cluster is started for nothing.
    service = open_service(settings)
    try:
        # uvicorn turns SIGTERM and Ctrl-C into the app's lifespan shutdown: graceful.
        uvicorn.run(
            create_app(settings, service=service),
            host=settings.host,
            port=settings.port,
            log_level="info",
            log_config=uvicorn_log_config(LOGGING_CONFIG, settings.log_format),
            timeout_graceful_shutdown=int(settings.shutdown_timeout) + 5,
        )
    finally:
        service.close()  # closed by the lifespan already, unless uvicorn never started it
    return 0
