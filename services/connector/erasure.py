"""Erasing a user from the connector (see shared.erasure): at the aggregator first, then here.

The aggregator is asked to delete the user (Powens `DELETE /users/me`: connections, accounts and
transactions). While it cannot answer, the erasure waits and is retried (nothing is deleted here before
it answered, so the aggregator token needed to ask again is kept); a user it no longer knows is done.
Then every document of the user goes, each collection reached through an index.
"""

from __future__ import annotations

from services.connector.powens import AggregatorError, PowensClient
from services.connector.repository import ConnectorRepository
from services.connector.security import TokenCipher
from shared.logging import get_logger

log = get_logger(__name__)


class AggregatorUnreachable(ConnectionError):
    """The aggregator could not delete the user now (the consumer retries until it can)."""


class ConnectorEraser:
    def __init__(self, repository: ConnectorRepository, powens: PowensClient, cipher: TokenCipher) -> None:
        self.repository = repository
        self.powens = powens
        self.cipher = cipher

    async def erase_user(self, user_id: str) -> int:
        """Deletes the user at the aggregator, then every document of theirs here; returns how many."""
        await self._erase_at_aggregator(user_id)
        repo = self.repository
        mine = {"user_id": user_id}
        connections = await repo.connections.find(mine, {"_id": 1}).to_list()
        accounts = await repo.account_sync.find(mine, {"_id": 1}).to_list()
        deleted = 0
        # one account, one connection at a time: FerretDB answers an `$in` with a scan of the collection
        for account in accounts:
            deleted += (await repo.seen.delete_many({"account": account["_id"]})).deleted_count
        for connection in connections:
            deleted += (await repo.active_runs.delete_many({"_id": connection["_id"]})).deleted_count
        for collection in (repo.account_sync, repo.connections, repo.activations):
            deleted += (await collection.delete_many(mine)).deleted_count
        for collection in (repo.projection, repo.users):
            deleted += (await collection.delete_many({"_id": user_id})).deleted_count
        return deleted

    async def _erase_at_aggregator(self, user_id: str) -> None:
        doc = await self.repository.aggregator_user(user_id)
        if doc is None:
            return
        try:
            await self.powens.delete_user(self.cipher.decrypt(doc["token_enc"], user_id))
        except AggregatorError as exc:
            if exc.failure.retryable:
                raise AggregatorUnreachable(str(exc)) from exc
            # the aggregator no longer knows this user or token (an earlier erasure got that far)
            log.info("aggregator_user_already_gone", user_id=user_id, code=exc.failure.code)
