"""CONNECTION_SYNCED webhooks, sent after each successful sync when a receiver is configured.

Body: `{"user": {...}, "connection": {..., "accounts": [{..., "transactions": [...]}]}}` with, per enabled
account, the lines changed since the last push the receiver acknowledged. Only an HTTP 200 acknowledges
(Powens: any other answer means the data is sent again at the next sync). Headers:
`X-Webhook-Secret: <secret>` and `X-Sandbox-Webhook-Event: CONNECTION_SYNCED`.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import httpx

from sandbox.clock import format_ts
from sandbox.store import Store

log = logging.getLogger("sandbox.webhooks")

SECRET_HEADER = "X-Webhook-Secret"
EVENT_HEADER = "X-Sandbox-Webhook-Event"


@dataclass
class WebhookTarget:
    url: str | None
    secret: str | None


class WebhookSender:
    def __init__(self, store: Store, target: WebhookTarget, timeout_s: float = 10.0) -> None:
        self.store = store
        self.target = target
        self.timeout_s = timeout_s
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=200)
        # one client for every delivery: a new one per webhook cost a TLS context (most of the CPU
        # of the sandbox in a nightly run)
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def configure(self, url: str | None, secret: str | None) -> None:
        self.target = WebhookTarget(url, secret)

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.target.url,
            "secret_set": bool(self.target.secret),
            "deliveries": list(self.deliveries),
        }

    async def connection_synced(self, connection_id: int) -> None:
        url, secret = self.target.url, self.target.secret
        if not url:
            return
        built = self.store.push_payload(connection_id)
        if built is None:
            return
        body, as_of = built
        lines = sum(len(account["transactions"]) for account in body["connection"]["accounts"])
        headers = {EVENT_HEADER: "CONNECTION_SYNCED"}
        if secret:
            headers[SECRET_HEADER] = secret
        record: dict[str, Any] = {
            "event": "CONNECTION_SYNCED",
            "connection_id": connection_id,
            "at": format_ts(self.store.now()),
            "transactions": lines,
            "status": None,
            "error": None,
        }
        try:
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=self.timeout_s)
            response = await self._client.post(url, json=body, headers=headers)
            record["status"] = response.status_code
            if response.status_code == 200:
                self.store.mark_pushed(connection_id, as_of)
            else:
                log.warning("webhook for connection %s answered %s", connection_id, response.status_code)
        except httpx.HTTPError as exc:
            record["error"] = type(exc).__name__
            log.warning("webhook for connection %s failed: %s", connection_id, type(exc).__name__)
        self.deliveries.append(record)
