"""Running the app on uvicorn: structured logs on stderr, its own access log instead of
uvicorn's (which would print query strings), and a clean stop on SIGTERM or Ctrl-C
(requests in hand finish, then the workers stop)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from neurosono.serve.app import create_app
from neurosono.serve.settings import ServeSettings

GRACE_S = 30  # how long a stop waits for requests in hand


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    for name in ("neurosono.serve", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(logging.INFO)
        log.propagate = False


def run_server(settings: ServeSettings) -> int:
    """Serve until stopped; the exit status (0 after a clean stop)."""
    configure_logging()
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACE_S,
        server_header=False,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
