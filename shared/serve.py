"""Command-line entry of each service: `python -m services.<name> [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from shared.settings import ServiceSettings


def serve(app_factory: Callable[[], FastAPI], *, service: str, default_port: int) -> None:
    parser = argparse.ArgumentParser(prog=f"banksync-{service}")
    parser.add_argument("--host", default=os.environ.get("BANKSYNC_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get(f"{service.upper()}_PORT", default_port))
    )
    args = parser.parse_args()
    settings = ServiceSettings()  # the same environment the app's settings read
    uvicorn.run(
        app_factory(),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.http_keep_alive_s,
        limit_concurrency=settings.http_limit_concurrency or None,
        backlog=settings.http_backlog,
    )
