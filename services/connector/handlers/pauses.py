"""Entitlement changes: the projection the gate reads, and the user's connections paused or resumed."""

from __future__ import annotations

from services.connector.domain.rights import Rights
from services.connector.handlers.common import event_of, log
from services.connector.ports import Announcer, ConnectorStore
from shared.contract.payloads import ConnectionStateChanged, EntitlementChanged
from shared.contract.topics import CONNECTIONS


class Pauses:
    def __init__(self, store: ConnectorStore, announcer: Announcer) -> None:
        self.store = store
        self.announcer = announcer

    async def on_entitlement_changed(self, change: EntitlementChanged, correlation_id: str) -> None:
        await self.store.project_rights(change.user_id, Rights.of(change))
        # act on the newest rights held, whichever path (this event, an HTTP check) brought them
        current = await self.store.projected_rights(change.user_id)
        if current is not None:
            await self.pause(change.user_id, not current.allowed, correlation_id)

    async def pause(self, user_id: str, paused: bool, correlation_id: str) -> None:
        """Paused connections fetch nothing; what was imported stays. Resuming needs no new bank setup."""
        changed = await self.store.set_paused(user_id, paused)
        for connection_id in changed:
            log.info(
                "connection_paused" if paused else "connection_resumed",
                user_id=user_id,
                connection_id=connection_id,
            )
            await self.announcer.publish(
                CONNECTIONS,
                user_id,
                event_of(
                    "connection.state_changed",
                    ConnectionStateChanged(
                        user_id=user_id,
                        connection_id=connection_id,
                        state="paused" if paused else "active",
                        paused=paused,
                    ),
                    correlation_id,
                ),
            )
