"""The sync gate: may this user sync now? Asked before every activation, sync and webhook.

The answer comes from the local projection of banksync.entitlements.v1; a user the projection has
never seen is asked of the entitlements service over HTTP, and the answer is kept. When neither
answers, the gate fails closed: no sync without a yes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from services.connector.repository import ConnectorRepository
from shared.auth import TokenPolicy
from shared.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class GateAnswer:
    allowed: bool
    code: str
    reason: str | None
    version: int


class EntitlementsUnavailable(Exception):
    """Neither the projection nor the entitlements service could answer."""


def rights_document(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "allowed": bool(data["auto_sync_allowed"]),
        "code": str(data.get("code") or ""),
        "reason": data.get("reason"),
        "version": int(data.get("version", 0)),
        "plan": data.get("plan"),
    }


class SyncGate:
    def __init__(
        self,
        repository: ConnectorRepository,
        entitlements_url: str,
        tokens: TokenPolicy,
        *,
        timeout_s: float = 3.0,
    ) -> None:
        self.repository = repository
        self.entitlements_url = entitlements_url.rstrip("/")
        self.tokens = tokens
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def check(self, user_id: str) -> GateAnswer:
        projected = await self.repository.projected_rights(user_id)
        if projected is None:
            projected = await self._ask(user_id)
            await self.repository.project_rights(user_id, projected)
        elif not projected["allowed"]:
            # A "no" may be seconds old (the user just subscribed; the event is on its way): confirm it.
            # A "yes" is trusted: a cancellation reaches the projection by event and pauses the user.
            try:
                fresh = await self._ask(user_id)
            except EntitlementsUnavailable:
                fresh = projected
            if int(fresh["version"]) > int(projected["version"]):
                await self.repository.project_rights(user_id, fresh)
                projected = fresh
        return GateAnswer(
            allowed=bool(projected["allowed"]),
            code=str(projected.get("code") or ""),
            reason=projected.get("reason"),
            version=int(projected.get("version", 0)),
        )

    async def _ask(self, user_id: str) -> dict[str, Any]:
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
        return rights_document(response.json())
