"""CONNECTION_SYNCED webhooks, sent after each successful sync when a receiver is configured.

Body: `{"user": {...}, "connection": {..., "accounts": [{..., "transactions": [...]}]}}` with, per enabled
account, the lines changed since the last push the receiver acknowledged. Only an HTTP 200 acknowledges
(Powens: any other answer means the data is sent again at the next sync).

Each delivery is signed as Powens signs its webhooks, with the secret the receiver shares with us:
`BI-Signature-Date` is the moment of signing (ISO 8601, UTC, microseconds: `2026-12-01T03:00:00.123456Z`)
and `BI-Signature` is `base64(HMAC-SHA256(secret, "<METHOD>.<path>.<BI-Signature-Date>.<body>"))`, where
`<METHOD>` is `POST`, `<path>` the path of the receiver's URL (`/v1/webhooks/aggregator`) and `<body>` the
exact bytes sent. A receiver recomputes it, compares in constant time, refuses dates too far from its
clock and signatures it has already accepted. Every attempt is signed anew (a new date), so a retry is
never a replay. The date is the wall clock's, not the sandbox's movable clock (`POST /sandbox/clock`).
Also sent: `X-Sandbox-Webhook-Event: CONNECTION_SYNCED`. No secret travels in a header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from sandbox.clock import format_ts
from sandbox.store import Store

log = logging.getLogger("sandbox.webhooks")

SIGNATURE_HEADER = "BI-Signature"
SIGNATURE_DATE_HEADER = "BI-Signature-Date"
EVENT_HEADER = "X-Sandbox-Webhook-Event"


def signature_date(moment: datetime | None = None) -> str:
    """`BI-Signature-Date`: ISO 8601, UTC, with microseconds (two deliveries never share one)."""
    return (
        (moment or datetime.now(UTC))
        .astimezone(UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def sign(secret: str, method: str, path: str, date: str, body: bytes) -> str:
    """`BI-Signature`: base64 of HMAC-SHA256 over `<METHOD>.<path>.<date>.<body>` with the shared secret."""
    message = b".".join([method.upper().encode(), path.encode(), date.encode(), body])
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, url: str, body: bytes, moment: datetime | None = None) -> dict[str, str]:
    """The signature headers of a POST of `body` to `url`."""
    date = signature_date(moment)
    return {
        SIGNATURE_DATE_HEADER: date,
        SIGNATURE_HEADER: sign(secret, "POST", urlsplit(url).path or "/", date, body),
    }


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
        # the exact bytes that are signed are the bytes sent
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {EVENT_HEADER: "CONNECTION_SYNCED", "Content-Type": "application/json"}
        if secret:
            headers.update(signed_headers(secret, url, payload))
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
            response = await self._client.post(url, content=payload, headers=headers)
            record["status"] = response.status_code
            if response.status_code == 200:
                self.store.mark_pushed(connection_id, as_of)
            else:
                log.warning("webhook for connection %s answered %s", connection_id, response.status_code)
        except httpx.HTTPError as exc:
            record["error"] = type(exc).__name__
            log.warning("webhook for connection %s failed: %s", connection_id, type(exc).__name__)
        self.deliveries.append(record)
