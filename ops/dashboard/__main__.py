"""`python -m ops.dashboard [--host H] [--port 8090] [--bootstrap H:P] [--history-minutes 30]`"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta

import uvicorn

from ops.dashboard.app import create_app
from shared.logging import configure_logging
from shared.settings import ServiceSettings


def main(argv: list[str] | None = None) -> None:
    settings = ServiceSettings()
    parser = argparse.ArgumentParser(prog="python -m ops.dashboard", description="Live operations dashboard")
    parser.add_argument("--host", default=os.environ.get("BANKSYNC_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DASHBOARD_PORT", "8090")))
    parser.add_argument("--bootstrap", default=settings.kafka_bootstrap_servers, help="Kafka host:port")
    parser.add_argument(
        "--history-minutes", type=float, default=30.0, help="how far back to read at start (default 30)"
    )
    parser.add_argument("--poll-seconds", type=float, default=3.0, help="lag and DLQ refresh period")
    args = parser.parse_args(argv)
    if args.history_minutes < 0 or args.poll_seconds <= 0:
        parser.error("--history-minutes must be >= 0 and --poll-seconds > 0")
    configure_logging("dashboard", settings.log_level)
    app = create_app(
        args.bootstrap, history=timedelta(minutes=args.history_minutes), poll_interval_s=args.poll_seconds
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_config=None, access_log=False, timeout_graceful_shutdown=2
    )


if __name__ == "__main__":
    main()
