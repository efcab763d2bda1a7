"""Erasing a user from the categorizer's collections (see shared.erasure): rules, payees, projection."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from services.categorizer.adapters import OperationsRepository, RuleSetRepository, TransferRepository

Doc = dict[str, Any]


class CategorizerEraser:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.rulesets = RuleSetRepository(db)
        self.operations = OperationsRepository(db)
        self.transfers = TransferRepository(db)

    async def erase_user(self, user_id: str) -> int:
        """Deletes every document of the user; returns how many."""
        mine = {"user_id": user_id}
        deleted = (await self.rulesets.rulesets.delete_many({"_id": user_id})).deleted_count
        deleted += (await self.operations.sheets.coll.delete_many(mine)).deleted_count
        deleted += (await self.operations.legacy.delete_many(mine)).deleted_count
        deleted += (await self.transfers.coll.delete_many(mine)).deleted_count  # transfer legs (by_user)
        return deleted
