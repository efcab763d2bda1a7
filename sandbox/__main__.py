"""`python -m sandbox [--host H] [--port 8010] [--seed N] [--today YYYY-MM-DD]`

Environment: AGGREGATOR_SANDBOX_SEED (seed), AGGREGATOR_SANDBOX_TODAY (last day of generated history),
SANDBOX_WEBHOOK_URL (where CONNECTION_SYNCED goes; default CONNECTOR_URL + /v1/webhooks/aggregator when
CONNECTOR_URL is set; `none` turns webhooks off), SANDBOX_WEBHOOK_SECRET (the key of their BI-Signature),
SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET (the registered client), SANDBOX_REDIRECT_URIS (its redirect URIs,
comma-separated; default CONNECTOR_URL + /v1/callback when CONNECTOR_URL is set), BANKSYNC_HOST (listen
address), LOG_LEVEL. Development defaults: sandbox/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from datetime import date

import uvicorn

from sandbox.app import SandboxSettings, create_app


def main() -> None:
    settings = SandboxSettings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m sandbox", description="Powens-compatible aggregator sandbox"
    )
    parser.add_argument("--host", default=os.environ.get("BANKSYNC_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("AGGREGATOR_SANDBOX_PORT", "8010")))
    parser.add_argument("--seed", type=int, default=settings.seed)
    parser.add_argument("--today", type=date.fromisoformat, default=settings.today)
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    settings = dataclasses.replace(settings, seed=args.seed, today=args.today)
    logging.getLogger("sandbox").info(
        "aggregator sandbox on %s:%s (seed %s, webhooks %s)",
        args.host,
        args.port,
        settings.seed,
        settings.webhook_url or "off",
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
