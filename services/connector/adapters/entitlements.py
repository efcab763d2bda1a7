"""HTTP client of the entitlements service (the Entitlements port): a user's rights, asked on their
behalf with a short-lived service token when the projection cannot answer (see handlers/gate.py)."""

from __future__ import annotations

from typing import Any

import httpx

from services.connector.domain.rights import EntitlementsUnavailable, Rights
from shared.auth import TokenPolicy
from shared.logging import get_logger

log = get_logger(__name__)


class EntitlementsClient:
    def __init__(self, entitlements_url: str, tokens: TokenPolicy, *, timeout_s: float = 3.0) -> None:
        self.entitlements_url = entitlements_url.rstrip("/")
        self.tokens = tokens
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def rights(self, user_id: str) -> Rights:
        # a short-lived service token with the ops scope: the connector asks on the user's behalf
        token = self.tokens.issue("svc-connector", scopes="ops", ttl_s=60)
        url = f"{self.entitlements_url}/v1/users/{user_id}/entitlements"
        try:
            response = await self._http.get(url, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            log.warning("entitlements_unreachable", error=type(exc).__name__)
            raise EntitlementsUnavailable(type(exc).__name__) from exc
        if response.status_code != 200:
            log.warning("entitlements_error", status=response.status_code)
            raise EntitlementsUnavailable(f"HTTP {response.status_code}")
        return rights_of(response.json())


def rights_of(data: dict[str, Any]) -> Rights:
    """The entitlements API's answer (the fields of `entitlement.changed`) as the rights the gate holds."""
    return Rights(
        allowed=bool(data["auto_sync_allowed"]),
        code=str(data.get("code") or ""),
        reason=data.get("reason"),
        version=int(data.get("version", 0)),
        plan=data.get("plan"),
    )
