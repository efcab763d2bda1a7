"""MongoDB storage of the categorizer: one rule-set document per user, and its projection of operations.

FerretDB (and this design) has no multi-document transactions, so everything a user's recognition
depends on (payees, their keywords, user categories) lives in ONE document with a `version`, written
with compare-and-set on that version. The same write sets `retro_pending`: the re-examination of past
operations that the change calls for, which a crash cannot lose (a background scan picks it up).

The projection (`categorizer_operations`) is what this service knows of each operation: memo, label,
account, its current categorisation, the rule-set version that produced it, and whether it is manual.
Operators used here were checked against FerretDB v1 (`$set`/`$setOnInsert` with scalars, `$lte`,
`$ne`, `$in`, unordered bulk upserts).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.categorizer.domain import Categorization, Payee, RuleSet, UserCategory

Doc = dict[str, Any]
NEVER = -1  # rules_version of an operation never categorised yet


def ruleset_of(doc: Doc | None, user_id: str) -> RuleSet:
    if doc is None:
        return RuleSet(user_id)
    return RuleSet(
        user_id=user_id,
        version=int(doc["version"]),
        payees=tuple(
            Payee(p["id"], p["name"], p["category"], tuple(p.get("keywords") or ())) for p in doc["payees"]
        ),
        categories=tuple(UserCategory(c["id"], c["label"]) for c in doc.get("categories") or ()),
    )


def result_doc(result: Categorization) -> Doc:
    return {
        "payee_id": result.payee_id,
        "payee_name": result.payee_name,
        "category": result.category,
        "source": result.source,
        "keyword": result.keyword,
    }


def result_of(doc: Doc | None) -> Categorization | None:
    if doc is None:
        return None
    return Categorization(
        doc.get("payee_id"), doc.get("payee_name"), doc.get("category"), doc.get("source"), doc.get("keyword")
    )


@dataclass(frozen=True)
class Projected:
    """One operation as this service keeps it."""

    user_id: str
    operation_id: str
    account_id: str
    memo: str
    label: str
    manual: bool
    result: Categorization | None
    rules_version: int

    @classmethod
    def of(cls, doc: Doc) -> Projected:
        return cls(
            user_id=doc["user_id"],
            operation_id=doc["operation_id"],
            account_id=doc["account_id"],
            memo=doc.get("memo") or "",
            label=doc.get("label") or "",
            manual=bool(doc.get("manual")),
            result=result_of(doc.get("result")),
            rules_version=int(doc.get("rules_version", NEVER)),
        )


def operation_key(user_id: str, operation_id: str) -> str:
    return f"{user_id}:{operation_id}"


class RuleSetRepository:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.rulesets: AsyncCollection[Doc] = db["categorizer_rulesets"]

    async def create_indexes(self) -> None:
        await self.rulesets.create_index([("retro_pending", ASCENDING)])

    async def get(self, user_id: str) -> RuleSet:
        return ruleset_of(await self.rulesets.find_one({"_id": user_id}), user_id)

    async def versions(self, user_ids: Iterable[str]) -> dict[str, int]:
        """The current version of each user's rules (0 for a user without any), in one read."""
        wanted = list(set(user_ids))
        found = {
            doc["_id"]: int(doc["version"])
            async for doc in self.rulesets.find({"_id": {"$in": wanted}}, {"version": 1})
        }
        return {user: found.get(user, 0) for user in wanted}

    async def save(self, after: RuleSet, expected_version: int, at: datetime, correlation_id: str) -> bool:
        """Compare-and-set on the version; False when another writer got there first."""
        state: Doc = {
            "version": after.version,
            "payees": [
                {"id": p.id, "name": p.name, "category": p.category, "keywords": list(p.keywords)}
                for p in after.payees
            ],
            "categories": [{"id": c.id, "label": c.label} for c in after.categories],
            "updated_at": at,
            "retro_pending": True,
            "retro_requested_at": at,
            "correlation_id": correlation_id,
        }
        if expected_version == 0:
            try:
                await self.rulesets.insert_one({"_id": after.user_id, **state})
            except DuplicateKeyError:
                return False
            return True
        result = await self.rulesets.update_one(
            {"_id": after.user_id, "version": expected_version}, {"$set": state}
        )
        return result.matched_count == 1

    async def reexamination_done(self, user_id: str, version: int) -> bool:
        """Clears the pending flag, unless the rules changed again meanwhile."""
        result = await self.rulesets.update_one(
            {"_id": user_id, "version": version}, {"$set": {"retro_pending": False, "retro_version": version}}
        )
        return result.matched_count == 1

    async def pending_since(self, before: datetime, limit: int = 100) -> list[str]:
        cursor = self.rulesets.find(
            {"retro_pending": True, "retro_requested_at": {"$lt": before}}, {"_id": 1}
        ).limit(limit)
        return [doc["_id"] async for doc in cursor]

    async def status(self, user_id: str) -> Doc:
        doc = await self.rulesets.find_one({"_id": user_id}, {"version": 1, "retro_pending": 1})
        if doc is None:
            return {"rules_version": 0, "reexamination_pending": False}
        return {"rules_version": int(doc["version"]), "reexamination_pending": bool(doc.get("retro_pending"))}

    async def correlation_id(self, user_id: str) -> str | None:
        doc = await self.rulesets.find_one({"_id": user_id}, {"correlation_id": 1})
        return None if doc is None else doc.get("correlation_id")


@dataclass(frozen=True)
class Seen:
    """What an operation event says about one operation, for the projection."""

    user_id: str
    operation_id: str
    account_id: str
    memo: str
    label: str
    manual: Categorization | None  # the importer already holds a manual choice for it


class OperationsRepository:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.operations: AsyncCollection[Doc] = db["categorizer_operations"]

    async def create_indexes(self) -> None:
        await self.operations.create_index([("user_id", ASCENDING), ("account_id", ASCENDING)])

    async def get(self, user_id: str, operation_id: str) -> Projected | None:
        doc = await self.operations.find_one({"_id": operation_key(user_id, operation_id)})
        return None if doc is None else Projected.of(doc)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Projected]:
        if not keys:
            return {}
        cursor = self.operations.find({"_id": {"$in": list(set(keys))}})
        return {doc["_id"]: Projected.of(doc) async for doc in cursor}

    async def upsert_seen(self, seen: Sequence[Seen], at: datetime) -> None:
        if not seen:
            return
        writes = []
        for item in seen:
            fields: Doc = {
                "user_id": item.user_id,
                "operation_id": item.operation_id,
                "account_id": item.account_id,
                "memo": item.memo,
                "label": item.label,
                "seen_at": at,
            }
            on_insert: Doc = {"rules_version": NEVER}
            if item.manual is not None:
                fields |= {"manual": True, "result": result_doc(item.manual)}
            else:
                on_insert["manual"] = False
            writes.append(
                UpdateOne(
                    {"_id": operation_key(item.user_id, item.operation_id)},
                    {"$set": fields, "$setOnInsert": on_insert},
                    upsert=True,
                )
            )
        await self.operations.bulk_write(writes, ordered=False)

    async def store_results(self, results: Sequence[tuple[str, str, Categorization, int]]) -> None:
        """(user, operation, result, rules version): kept unless a newer version's result is there,
        and never over a manual choice."""
        if not results:
            return
        writes = [
            UpdateOne(
                {
                    "_id": operation_key(user_id, operation_id),
                    "rules_version": {"$lte": version},
                    "manual": {"$ne": True},
                },
                {"$set": {"result": result_doc(result), "rules_version": version}},
            )
            for user_id, operation_id, result, version in results
        ]
        await self.operations.bulk_write(writes, ordered=False)

    async def set_manual(self, user_id: str, operation_id: str, result: Categorization, version: int) -> None:
        await self.operations.update_one(
            {"_id": operation_key(user_id, operation_id)},
            {"$set": {"manual": True, "result": result_doc(result), "rules_version": version}},
        )

    async def of_user(self, user_id: str, batch_size: int = 2000) -> AsyncIterator[Projected]:
        cursor = self.operations.find({"user_id": user_id}).batch_size(batch_size)
        async for doc in cursor:
            yield Projected.of(doc)

    async def delete(self, user_id: str, operation_ids: Sequence[str]) -> None:
        if operation_ids:
            await self.operations.delete_many(
                {"_id": {"$in": [operation_key(user_id, op) for op in operation_ids]}}
            )

    async def delete_account(self, user_id: str, account_id: str) -> int:
        result = await self.operations.delete_many({"user_id": user_id, "account_id": account_id})
        return result.deleted_count


async def drop_all(db: AsyncDatabase[Doc]) -> None:
    """Tests and benchmarks only."""
    for name in ("categorizer_rulesets", "categorizer_operations"):
        with contextlib.suppress(Exception):
            await db.drop_collection(name)
