"""HTTP client for the Powens (Budget Insight) API, or the sandbox that speaks it (the Aggregator port):
its answers become typed records (domain.connections.AggregatorConnection, domain.accounts.BankAccount);
the bank's lines pass on as they came.

Passing failures (5xx, timeouts, 429 with Retry-After, connection errors) are retried with
exponential backoff and full jitter within a bounded time; then `AggregatorError` says what failed.
The user's token travels only in the Authorization header and never appears in errors or logs; the
client's credentials (Powens' `client_id`, `client_secret`) only in the bodies of `POST /auth/init` and
`POST /auth/token/access`, never in a URL, an error or a log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from services.connector.domain.accounts import bank_account_view
from services.connector.domain.connections import AggregatorConnection
from services.connector.domain.failures import (
    AggregatorError,
    Failure,
    backoff_delays,
    classify_connection_error,
    classify_http_status,
)
from services.connector.domain.lines import BankLine
from services.connector.domain.sync_run import FetchWindow
from shared.contract.payloads import Bank
from shared.logging import get_logger

log = get_logger(__name__)
PAGE_SIZE = 500
# the aggregator's answers to a refused code exchange or client: never worth a retry
AUTH_ERRORS = {
    "invalidClient": "L'agrégateur ne reconnaît pas notre application (client_id, client_secret).",
    "invalidCode": "Le code de l'agrégateur est inconnu, expiré ou déjà utilisé.",
    "invalidRedirectUri": "Le code de l'agrégateur n'a pas été émis pour cette adresse de retour.",
}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 8.0
    budget_s: float = 60.0


class PowensClient:
    def __init__(
        self,
        base_url: str,
        *,
        client_id: str = "",
        client_secret: SecretStr | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # our application at the aggregator: `client_id` is public (webview URLs), the secret is not
        self.client_id = client_id
        self._client_secret = client_secret or SecretStr("")
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.monotonic() + self.retry.budget_s
        delays = backoff_delays(self.retry.attempts, base_s=self.retry.base_s, cap_s=self.retry.cap_s)
        while True:
            failure: Failure
            wait_hint: float | None = None
            try:
                response = await self._http.request(method, path, headers=headers, **kwargs)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                failure = classify_http_status(503)
                detail = f"{type(exc).__name__} calling {method} {path}"
            else:
                if response.status_code < 400:
                    body: dict[str, Any] = response.json() if response.content else {}
                    return body
                failure = _failure_of(response)
                detail = f"HTTP {response.status_code} on {method} {path}"
                if not failure.retryable:
                    raise AggregatorError(failure, detail)
                wait_hint = _retry_after(response)
            delay = next(delays, None)
            if delay is None or time.monotonic() + (wait_hint or delay) > deadline:
                raise AggregatorError(failure, detail)
            log.info("aggregator_retry", path=path, code=failure.code, wait_s=round(wait_hint or delay, 2))
            await asyncio.sleep(wait_hint if wait_hint is not None else delay)

    def _client_credentials(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self._client_secret.get_secret_value()}

    async def create_user(self) -> tuple[str, str]:
        """`POST /2.0/auth/init` with the client's credentials: a new aggregator user and its permanent
        token (without them, Powens gives a token that expires after 30 minutes)."""
        body = await self._request("POST", "/2.0/auth/init", json=self._client_credentials())
        return str(body["auth_token"]), str(body.get("id_user", ""))

    async def exchange_code(self, code: str, redirect_uri: str) -> tuple[str, str]:
        """`POST /2.0/auth/token/access`: the code a webview redirect carried, exchanged (once) with the
        client's credentials for the permanent token of the user it was issued for; returns the token and
        that user's id (asked of `GET /2.0/users/me` when the answer does not say)."""
        body = await self._request(
            "POST",
            "/2.0/auth/token/access",
            json={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                **self._client_credentials(),
            },
        )
        token = str(body["access_token"])
        id_user = body.get("id_user")
        if id_user is None:
            id_user = (await self._request("GET", "/2.0/users/me", token=token)).get("id")
        return token, str(id_user if id_user is not None else "")

    async def temporary_code(self, token: str) -> str:
        """`GET /2.0/auth/token/code`: a short-lived code that opens the webview for this user."""
        body = await self._request("GET", "/2.0/auth/token/code", token=token)
        return str(body["code"])

    async def connectors(self) -> list[Bank]:
        """The banks the aggregator connects to (Powens' connectors), by id and name."""
        body = await self._request("GET", "/2.0/connectors")
        return [
            Bank(id=str(connector["id"]), name=str(connector.get("name", connector["id"])))
            for connector in body.get("connectors", [])
        ]

    async def connections(self, token: str) -> list[AggregatorConnection]:
        """Connections with ALL their accounts (`all_accounts`): new ones are disabled until chosen."""
        body = await self._request(
            "GET", "/2.0/users/me/connections", token=token, params={"expand": "all_accounts"}
        )
        return [_connection(connection) for connection in body.get("connections", [])]

    async def connection(self, token: str, connection_id: str) -> AggregatorConnection:
        """One connection with all its accounts (new ones disabled, closed ones with `deleted` set)."""
        body = await self._request(
            "GET",
            f"/2.0/users/me/connections/{connection_id}",
            token=token,
            params={"expand": "all_accounts"},
        )
        return _connection(body)

    async def sync_connection(self, token: str, connection_id: str) -> AggregatorConnection:
        """Asks the aggregator to refresh a connection; its state says whether the bank let it, and its
        accounts (all of them) what the bank shows now: new ones, closed ones, balances."""
        body = await self._request(
            "POST",
            f"/2.0/users/me/connections/{connection_id}",
            token=token,
            params={"expand": "all_accounts"},
        )
        return _connection(body)

    async def delete_user(self, token: str) -> None:
        """`DELETE /2.0/users/me`: the aggregator forgets the user, their connections and their data."""
        await self._request("DELETE", "/2.0/users/me", token=token)

    async def delete_connection(self, token: str, connection_id: str) -> None:
        await self._request("DELETE", f"/2.0/users/me/connections/{connection_id}", token=token)

    async def set_account_enabled(self, token: str, account_id: str, enabled: bool) -> None:
        await self._request(
            "PUT", f"/2.0/users/me/accounts/{account_id}", token=token, json={"disabled": not enabled}
        )

    async def transactions(
        self, token: str, account_id: str, window: FetchWindow
    ) -> AsyncIterator[list[BankLine]]:
        """Pages of an account's transactions in the window (`last_update` since the cursor, or all),
        following `limit`/`offset` until `total` is read."""
        offset = 0
        while True:
            query = {**window.params(), "limit": str(PAGE_SIZE), "offset": str(offset)}
            body = await self._request(
                "GET", f"/2.0/users/me/accounts/{account_id}/transactions", token=token, params=query
            )
            page: list[BankLine] = list(body.get("transactions", []))
            if page:
                yield page
            offset += len(page)
            total = int(body.get("total", offset))
            if not page or offset >= total or not (body.get("_links") or {}).get("next"):
                return


def _failure_of(response: httpx.Response) -> Failure:
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = body.get("code") if isinstance(body, dict) else None
    if response.status_code == 400 and code in AUTH_ERRORS:
        return Failure(str(code), AUTH_ERRORS[str(code)], False)
    if response.status_code in (401, 403):
        return Failure("aggregator_auth", "L'accès à l'agrégateur a été refusé pour cet utilisateur.", False)
    if isinstance(code, str) and response.status_code < 500 and response.status_code != 429:
        return classify_connection_error(code)
    return classify_http_status(response.status_code)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return min(float(value), 30.0)
    except ValueError:
        return None


def _connection(connection: dict[str, Any]) -> AggregatorConnection:
    """`accounts` is the whole list (`all_accounts`) when the answer has it, else `accounts`; None when
    the answer has neither."""
    accounts = connection.get("all_accounts", connection.get("accounts"))
    error = connection.get("error") or connection.get("state")
    last_update = connection.get("last_update")
    return AggregatorConnection(
        id=str(connection["id"]),
        connector_id=str(connection.get("id_connector", "")),
        error=str(error) if error else None,
        last_update=str(last_update) if last_update else None,
        accounts=tuple(bank_account_view(a) for a in accounts) if accounts is not None else None,
    )
