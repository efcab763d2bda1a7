"""The sync status of a user's accounts, as it truly is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

from services.connector.domain.states import AccountStatus, account_status
from services.connector.ports import ConnectorStore


class Status:
    def __init__(self, store: ConnectorStore, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    async def sync_status(self, user_id: str) -> list[AccountStatus]:
        """Each selected account's state: `syncing` while a run is queued or running, `never_synced`
        before its first success, `closed` once the bank closed it; each with the action the user can
        take and the last balance check (`balance_gap` not zero: something is missing)."""
        connections, states = await asyncio.gather(
            self.store.user_connections(user_id), self.store.account_states(user_id)
        )
        by_account = {s.aggregator_account_id: s for s in states}
        actives = await asyncio.gather(
            *(self.store.active_run(conn.key, self.clock()) for conn in connections)
        )
        return [
            account_status(conn, account, by_account.get(account.aggregator_account_id), active is not None)
            for conn, active in zip(connections, actives, strict=True)
            for account in conn.accounts
            if account.selected
        ]
