"""The sync gate: may this user sync now? Asked before every activation, sync and webhook.

The answer comes from the local projection of banksync.entitlements.v1; a user the projection has
never seen is asked of the entitlements service over HTTP, and the answer is kept. When neither
answers, the gate fails closed: no sync without a yes.
"""

from __future__ import annotations

from services.connector.domain.rights import EntitlementsUnavailable, Rights
from services.connector.handlers.common import NotEntitled, entitlements_unavailable
from services.connector.ports import Entitlements, RightsProjection


class SyncGate:
    def __init__(self, projection: RightsProjection, entitlements: Entitlements) -> None:
        self.projection = projection
        self.entitlements = entitlements

    async def check(self, user_id: str) -> Rights:
        projected = await self.projection.projected_rights(user_id)
        if projected is None:
            projected = await self.entitlements.rights(user_id)
            await self.projection.project_rights(user_id, projected)
        elif not projected.allowed:
            # A "no" may be seconds old (the user just subscribed; the event is on its way): confirm it.
            # A "yes" is trusted: a cancellation reaches the projection by event and pauses the user.
            try:
                fresh = await self.entitlements.rights(user_id)
            except EntitlementsUnavailable:
                fresh = projected
            if fresh.version > projected.version:
                await self.projection.project_rights(user_id, fresh)
                projected = fresh
        return projected

    async def require_entitled(self, user_id: str) -> Rights:
        """The rights of a user who may sync; 503 when nobody can say, 403 when they may not."""
        try:
            answer = await self.check(user_id)
        except EntitlementsUnavailable:
            raise entitlements_unavailable() from None
        if not answer.allowed:
            raise NotEntitled(answer)
        return answer
