"""`python -m ops.dashboard [--host H] [--port 8090] [--bootstrap H:P] [--history-minutes 30]`

`python -m ops.dashboard --print-token [--token-hours 8]` prints an ops token to paste into the login
page (signed with this environment's `BANKSYNC_JWT_SECRET`), and exits.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import timedelta

import uvicorn

from ops.dashboard.app import create_app
from shared.auth import OPS_SCOPE, is_user_id
from shared.logging import configure_logging
from shared.service import WeakSecrets, refuse_weak_secrets
from shared.settings import ServiceSettings


def operator_name() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return "operator"
    return name if is_user_id(name) else "operator"


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
    parser.add_argument(
        "--print-token", action="store_true", help="print an ops token for the login page, and exit"
    )
    parser.add_argument("--token-hours", type=float, default=8.0, help="the printed token's lifetime")
    args = parser.parse_args(argv)
    if args.history_minutes < 0 or args.poll_seconds <= 0:
        parser.error("--history-minutes must be >= 0 and --poll-seconds > 0")
    tokens = settings.token_policy()
    if args.print_token:
        ttl_s = int(args.token_hours * 3600)
        if not 0 < ttl_s <= tokens.max_lifetime_s:
            parser.error(f"--token-hours must be > 0 and at most {tokens.max_lifetime_s / 3600:g}")
        print(tokens.issue(operator_name(), scopes=OPS_SCOPE, ttl_s=ttl_s))
        return
    configure_logging("dashboard", settings.log_level)
    try:
        # anyone can mint an ops token with a published default: the login would protect nothing
        refuse_weak_secrets("dashboard", settings, names=("BANKSYNC_JWT_SECRET",))
    except WeakSecrets as refused:
        sys.exit(str(refused))
    app = create_app(
        args.bootstrap,
        history=timedelta(minutes=args.history_minutes),
        poll_interval_s=args.poll_seconds,
        tokens=tokens,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_config=None, access_log=False, timeout_graceful_shutdown=2
    )


if __name__ == "__main__":
    main()
