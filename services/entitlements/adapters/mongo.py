"""MongoDB storage of entitlements, with an outbox in the same document, and of the erasures.

FerretDB (and this design) has no multi-document transactions, so the state, its version and the
change to announce are written in ONE document update. The relay later turns each outbox entry into
a history record (idempotent `_id`) and an `entitlement.changed` event (deterministic id), then
removes it. A crash between the two only delays the event: the relay retries it.

Documents live here only: the handlers speak `Entitlements`, `ChangeRecord` and `Erasure`.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.entitlements.domain.commands import Action
from services.entitlements.domain.erasure import Erasure, ServiceErased
from services.entitlements.domain.history import Actor, ChangeRecord
from services.entitlements.domain.rights import Entitlements, Option, Plan

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


def entry_doc(record: ChangeRecord) -> Doc:
    """An outbox entry (and, with `_id` and `user_id`, a history document)."""
    return {
        "version": record.version,
        "action": record.action.value,
        "plan": record.after.plan.value,
        "options": record.after.option_names,
        "detail": record.detail,
        "at": record.at,
        "request_id": record.request_id,
        "actor": record.actor.as_dict() if record.actor else None,
    }


def to_record(user_id: str, entry: Doc) -> ChangeRecord:
    detail: dict[str, str] = entry.get("detail") or {}
    actor = entry.get("actor")
    return ChangeRecord(
        after=Entitlements(
            user_id=user_id,
            plan=Plan(entry["plan"]),
            options=frozenset(Option(o) for o in entry["options"]),
            version=int(entry["version"]),
        ),
        action=Action(entry["action"]),
        at=entry["at"],
        request_id=entry["request_id"],
        actor=Actor.of(actor) if actor else None,
        plan=Plan(detail["plan"]) if "plan" in detail else None,
        option=Option(detail["option"]) if "option" in detail else None,
    )


def outbox_of(doc: Doc) -> list[ChangeRecord]:
    user_id: str = doc["_id"]
    entries = sorted(doc.get("outbox", []), key=lambda e: e["version"])
    return [to_record(user_id, entry) for entry in entries]


class EntitlementsRepository:
    """`entitlements` (one document per user: the state, its version, the outbox) and
    `entitlement_history` (one document per announced change, `_id` `<user>:<version>`)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.current: AsyncCollection[Doc] = db["entitlements"]
        self.history: AsyncCollection[Doc] = db["entitlement_history"]

    async def create_indexes(self) -> None:
        await self.current.create_index([("has_outbox", ASCENDING)])
        await self.history.create_index([("user_id", ASCENDING), ("version", ASCENDING)], unique=True)

    async def get(self, user_id: str) -> Entitlements:
        return to_entitlements(await self.current.find_one({"_id": user_id}), user_id)

    async def save(self, after: Entitlements, expected_version: int, record: ChangeRecord) -> bool:
        """Compare-and-set on the version; False when another writer got there first."""
        entry = entry_doc(record)
        state = {
            "plan": after.plan.value,
            "options": after.option_names,
            "version": after.version,
            "updated_at": record.at,
            "has_outbox": True,
        }
        if expected_version == 0:
            try:
                await self.current.insert_one({"_id": after.user_id, **state, "outbox": [entry]})
            except DuplicateKeyError:
                return False
            return True
        result = await self.current.update_one(
            {"_id": after.user_id, "version": expected_version},
            {"$set": state, "$push": {"outbox": entry}},
        )
        return result.modified_count == 1

    async def outbox(self, user_id: str) -> list[ChangeRecord]:
        doc = await self.current.find_one({"_id": user_id})
        return [] if doc is None else outbox_of(doc)

    async def pending(self, limit: int = 100) -> list[ChangeRecord]:
        docs = await self.current.find({"has_outbox": True}).limit(limit).to_list()
        return [record for doc in docs for record in outbox_of(doc)]

    async def record_history(self, record: ChangeRecord) -> None:
        """Idempotent: the `_id` names the version, so a retried relay finds it already there.

        (An upsert with `$setOnInsert` would read better, but FerretDB v1 drops empty arrays there.)
        """
        doc = {"_id": f"{record.user_id}:{record.version}", "user_id": record.user_id, **entry_doc(record)}
        with contextlib.suppress(DuplicateKeyError):
            await self.history.insert_one(doc)

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

    async def list_history(self, user_id: str, limit: int) -> list[ChangeRecord]:
        cursor = self.history.find({"user_id": user_id}, {"_id": 0}).sort("version", -1).limit(limit)
        return [to_record(user_id, doc) for doc in await cursor.to_list()]

    async def erase(self, user_id: str) -> int:
        deleted = (await self.current.delete_many({"_id": user_id})).deleted_count
        deleted += (await self.history.delete_many({"user_id": user_id})).deleted_count
        return deleted


def to_erasure(doc: Doc) -> Erasure:
    return Erasure(
        erase_id=doc["_id"],
        user_id=doc["user_id"],
        requested_at=doc["requested_at"],
        answers={
            service: ServiceErased(
                erased_at=answer["erased_at"], documents_deleted=answer["documents_deleted"]
            )
            for service, answer in (doc.get("services") or {}).items()
            if answer
        },
    )


class ErasureRegistry:
    """The `erasures` collection: one document per erased user, with each service's answer."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.coll: AsyncCollection[Doc] = db["erasures"]

    async def requested(self, erase_id: str, user_id: str, at: datetime) -> Erasure:
        """The erasure, recorded on its first request (a later one keeps the first date and answers)."""
        found = await self.coll.find_one({"_id": erase_id})
        if found is not None:
            return to_erasure(found)
        doc: Doc = {"_id": erase_id, "user_id": user_id, "requested_at": at}
        try:
            await self.coll.insert_one(doc)
        except DuplicateKeyError:  # asked twice at once: the first one's record
            return to_erasure(await self.coll.find_one({"_id": erase_id}) or doc)
        return to_erasure(doc)

    async def answered(self, erase_id: str, service: str, answer: ServiceErased) -> None:
        await self.coll.update_one(
            {"_id": erase_id},
            {
                "$set": {
                    f"services.{service}": {
                        "erased_at": answer.erased_at,
                        "documents_deleted": answer.documents_deleted,
                    }
                }
            },
        )

    async def get(self, erase_id: str) -> Erasure | None:
        doc = await self.coll.find_one({"_id": erase_id})
        return None if doc is None else to_erasure(doc)
