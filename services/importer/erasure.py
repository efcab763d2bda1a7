"""Erasing a user from the importer's collections (see shared.erasure).

Every collection is reached through an index: by `user_id` where the documents carry it, else by the
ids the indexed ones name, one at a time (an account's sheets by account id, an aggregator account's
state by its key): FerretDB answers an `$in` with a scan of the whole collection.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.importer.adapters import AccountStore, OperationStore, StateStore

Doc = dict[str, Any]


class ImporterEraser:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.state = StateStore(db)
        self.operations = OperationStore(db)
        self.accounts = AccountStore(db)

    async def erase_user(self, user_id: str) -> int:
        """Deletes every document of the user; returns how many."""
        mine = {"user_id": user_id}
        accounts = await self.accounts.accounts.find(mine, {"_id": 1, "sources": 1}).to_list()
        links = await self.accounts.links.find(mine, {"_id": 1}).to_list()
        account_ids = [doc["_id"] for doc in accounts]
        akeys = sorted(
            {doc["_id"] for doc in links} | {s for doc in accounts for s in doc.get("sources", [])}
        )
        deleted = 0
        deleted += (await self.operations.coll.delete_many(mine)).deleted_count
        for account_id in account_ids:
            sheets = self.operations.sheets.coll
            deleted += (await sheets.delete_many({"account_id": account_id})).deleted_count
        for akey in akeys:
            deleted += (await self.state.coll.delete_many({"_id": akey})).deleted_count
        for collection in (
            self.accounts.details,
            self.accounts.links,
            self.accounts.banks,
            self.accounts.accounts,
        ):
            deleted += (await collection.delete_many(mine)).deleted_count
        return deleted
