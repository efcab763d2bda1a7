"""A user's connections: listed, their accounts chosen, removed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from services.connector.domain.connections import Connection
from services.connector.domain.failures import AggregatorError
from services.connector.domain.secrets import TokenCipher
from services.connector.handlers.common import aggregator_call, event_of, user_token
from services.connector.handlers.linking import Linking
from services.connector.handlers.syncs import Syncs
from services.connector.ports import Aggregator, Announcer, ConnectorStore
from shared.contract.payloads import AccountSelectionChanged, ConnectionRemoved
from shared.contract.topics import CONNECTIONS
from shared.problems import Problem


class Connections:
    def __init__(
        self,
        store: ConnectorStore,
        aggregator: Aggregator,
        announcer: Announcer,
        cipher: TokenCipher,
        linking: Linking,
        syncs: Syncs,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.aggregator = aggregator
        self.announcer = announcer
        self.cipher = cipher
        self.linking = linking
        self.syncs = syncs
        self.clock = clock

    async def list_connections(self, user_id: str) -> list[Connection]:
        return await self.store.user_connections(user_id)

    async def select_accounts(
        self, user_id: str, connection_id: str, selected: list[str], correlation_id: str
    ) -> Connection:
        conn = await self.linking.owned_connection(user_id, connection_id)
        known = {a.aggregator_account_id for a in conn.accounts}
        unknown = sorted(set(selected) - known)
        if unknown:
            raise Problem(422, "unknown_account", f"Not accounts of this connection: {', '.join(unknown)}.")
        token = await user_token(self.store, self.cipher, user_id)
        wanted = set(selected)
        newly_selected: list[str] = []
        accounts = []
        for account in conn.accounts:
            enable = account.aggregator_account_id in wanted
            if account.selected != enable:
                await aggregator_call(
                    self.aggregator.set_account_enabled(token, account.aggregator_account_id, enable)
                )
                account = dataclasses.replace(account, selected=enable)
                if enable:
                    newly_selected.append(account.aggregator_account_id)
            accounts.append(account)
        conn = dataclasses.replace(conn, accounts=tuple(accounts))
        await self.store.update_connection(conn, frozenset({"accounts"}))
        await self.announcer.publish(
            CONNECTIONS,
            user_id,
            event_of(
                "account.selection_changed",
                AccountSelectionChanged(
                    user_id=user_id, connection_id=connection_id, selected=sorted(wanted)
                ),
                correlation_id,
            ),
        )
        if newly_selected and conn.state is None and not conn.paused:
            # the first sync of a newly chosen account starts at once (about a year of history)
            await self.syncs.request_sync(
                user_id,
                "activation",
                correlation_id,
                aggregator_account_ids=newly_selected,
                connection_id=connection_id,
            )
        return conn

    async def delete_connection(self, user_id: str, connection_id: str, correlation_id: str) -> None:
        conn = await self.linking.owned_connection(user_id, connection_id)
        token = await user_token(self.store, self.cipher, user_id)
        try:
            await self.aggregator.delete_connection(token, connection_id)
        except AggregatorError as exc:
            if exc.failure.retryable:
                raise Problem(502, "aggregator_unavailable", exc.failure.message) from None
        removed = dataclasses.replace(conn, removed=True, removed_at=self.clock())
        await self.store.update_connection(removed, frozenset({"removed", "removed_at"}))
        await self.announcer.publish(
            CONNECTIONS,
            user_id,
            event_of(
                "connection.removed",
                ConnectionRemoved(user_id=user_id, connection_id=connection_id),
                correlation_id,
            ),
        )
