"""Registered client applications, as Powens' console registers them: a client id, its secret, and the
redirect URIs its webview may send a browser back to (matched exactly, the whole string, query included).

The sandbox knows the clients its settings name (`SANDBOX_CLIENT_ID`, `SANDBOX_CLIENT_SECRET`,
`SANDBOX_REDIRECT_URIS`); the development defaults below are the connector's own development defaults
(services/connector/app.py), so that `make up` works with nothing set. Never use them in production.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

DEV_CLIENT_ID = "banksync-dev-client"
DEV_CLIENT_SECRET = "dev-only-aggregator-client-secret"
# the connector's callback where `make up` runs it (CONNECTOR_URL, by either name of the loopback)
DEV_REDIRECT_URIS = ("http://127.0.0.1:8002/v1/callback", "http://localhost:8002/v1/callback")


@dataclass(frozen=True)
class ClientApp:
    client_id: str
    client_secret: str
    redirect_uris: frozenset[str]


class Clients:
    def __init__(self, apps: Iterable[ClientApp]) -> None:
        self._apps = {app.client_id: app for app in apps}

    def get(self, client_id: str | None) -> ClientApp | None:
        return self._apps.get(client_id or "")

    def authenticate(self, client_id: str | None, client_secret: str | None) -> ClientApp | None:
        """The client whose id and secret these are; None when either is missing or wrong (the secret is
        compared in constant time, and compared even for an unknown id)."""
        app = self.get(client_id)
        expected = app.client_secret if app is not None else "\0" * 32
        matches = hmac.compare_digest((client_secret or "").encode(), expected.encode())
        return app if app is not None and client_secret and matches else None

    def allows(self, client_id: str | None, redirect_uri: str | None) -> bool:
        """Whether the webview of `client_id` may redirect to `redirect_uri` (registered, exact match)."""
        app = self.get(client_id)
        return app is not None and bool(redirect_uri) and redirect_uri in app.redirect_uris
