"""MongoDB storage of entitlements, with an outbox in the same document.

FerretDB (and this design) has no multi-document transactions, so the state, its version and the
change to announce are written in ONE document update. The relay later turns each outbox entry into
a history record (idempotent `_id`) and an `entitlement.changed` event (deterministic id), then
removes it. A crash between the two only delays the event: the relay retries it.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.entitlements.domain import Entitlements, Option, Plan

Doc = dict[str, Any]


def to_entitlements(doc: Doc | None, user_id: str) -> Entitlements:
    if doc is None:
        return Entitlements.unknown_user(user_id)
    return Entitlements(
        user_id=user_id,
        plan=Plan(doc["plan"]),
        options=frozenset(Option(o) for o in doc["options"]),
        version=int(doc["version"]),
    )


class EntitlementsRepository:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.current: AsyncCollection[Doc] = db["entitlements"]
        self.history: AsyncCollection[Doc] = db["entitlement_history"]

    async def create_indexes(self) -> None:
        await self.current.create_index([("has_outbox", ASCENDING)])
        await self.history.create_index([("user_id", ASCENDING), ("version", ASCENDING)], unique=True)

    async def get(self, user_id: str) -> Entitlements:
        return to_entitlements(await self.current.find_one({"_id": user_id}), user_id)

    async def save(self, after: Entitlements, expected_version: int, outbox_entry: Doc) -> bool:
        """Compare-and-set on the version; False when another writer got there first."""
        state = {
            "plan": after.plan.value,
            "options": sorted(o.value for o in after.options),
            "version": after.version,
            "updated_at": outbox_entry["at"],
            "has_outbox": True,
        }
        if expected_version == 0:
            try:
                await self.current.insert_one({"_id": after.user_id, **state, "outbox": [outbox_entry]})
            except DuplicateKeyError:
                return False
            return True
        result = await self.current.update_one(
            {"_id": after.user_id, "version": expected_version},
            {"$set": state, "$push": {"outbox": outbox_entry}},
        )
        return result.modified_count == 1

    async def pending(self, limit: int = 100) -> list[Doc]:
        return await self.current.find({"has_outbox": True}).limit(limit).to_list()

    async def record_history(self, user_id: str, entry: Doc) -> None:
        """Idempotent: the `_id` names the version, so a retried relay finds it already there.

        (An upsert with `$setOnInsert` would read better, but FerretDB v1 drops empty arrays there.)
        """
        record = {"_id": f"{user_id}:{entry['version']}", "user_id": user_id, **entry}
        with contextlib.suppress(DuplicateKeyError):
            await self.history.insert_one(record)

    async def mark_sent(self, user_id: str, version: int) -> None:
        """Removes one announced entry; guarded by the state version, so an entry pushed meanwhile stays.

        (FerretDB v1 ignores `$pull` with a condition, hence the read and the guarded `$set`.)
        """
        while True:
            doc = await self.current.find_one({"_id": user_id})
            if doc is None:
                return
            remaining = [e for e in doc.get("outbox", []) if e["version"] != version]
            result = await self.current.update_one(
                {"_id": user_id, "version": doc["version"]},
                {"$set": {"outbox": remaining, "has_outbox": bool(remaining)}},
            )
            if result.matched_count == 1:
                return

    async def list_history(self, user_id: str, limit: int) -> list[Doc]:
        cursor = self.history.find({"user_id": user_id}, {"_id": 0}).sort("version", -1).limit(limit)
        return await cursor.to_list()


def history_entry(
    *,
    version: int,
    action: str,
    plan: str,
    options: list[str],
    detail: dict[str, str],
    at: datetime,
    request_id: str,
    actor: dict[str, str],
) -> Doc:
    return {
        "version": version,
        "action": action,
        "plan": plan,
        "options": options,
        "detail": detail,
        "at": at,
        "request_id": request_id,
        "actor": actor,
    }
