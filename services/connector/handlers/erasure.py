"""Erasing a user from the connector (see shared.erasure): at the aggregator first, then here.

The aggregator is asked to delete the user (Powens `DELETE /users/me`: connections, accounts and
transactions). While it cannot answer, the erasure waits and is retried (nothing is deleted here before
it answered, so the aggregator token needed to ask again is kept); a user it no longer knows is done.
Then every document of the user goes (ConnectorStore.erase_user).
"""

from __future__ import annotations

from services.connector.domain.failures import AggregatorError
from services.connector.domain.secrets import TokenCipher
from services.connector.handlers.common import log
from services.connector.ports import Aggregator, ConnectorStore


class AggregatorUnreachable(ConnectionError):
    """The aggregator could not delete the user now (the consumer retries until it can)."""


class ConnectorEraser:
    def __init__(self, store: ConnectorStore, aggregator: Aggregator, cipher: TokenCipher) -> None:
        self.store = store
        self.aggregator = aggregator
        self.cipher = cipher

    async def erase_user(self, user_id: str) -> int:
        """Deletes the user at the aggregator, then every document of theirs here; returns how many."""
        await self._erase_at_aggregator(user_id)
        return await self.store.erase_user(user_id)

    async def _erase_at_aggregator(self, user_id: str) -> None:
        found = await self.store.aggregator_user(user_id)
        if found is None:
            return
        try:
            await self.aggregator.delete_user(self.cipher.decrypt(found.token_enc, user_id))
        except AggregatorError as exc:
            if exc.failure.retryable:
                raise AggregatorUnreachable(str(exc)) from exc
            # the aggregator no longer knows this user or token (an earlier erasure got that far)
            log.info("aggregator_user_already_gone", user_id=user_id, code=exc.failure.code)
