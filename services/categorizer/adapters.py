"""MongoDB storage of the categorizer: one rule-set document per user, and its projection of operations.

FerretDB (and this design) has no multi-document transactions, so everything a user's recognition
depends on (payees, their keywords, user categories) lives in ONE document with a `version`, written
with compare-and-set on that version. The same write marks a re-examination of past operations as
pending, which a crash cannot lose (a background scan picks it up), and keeps a snapshot of the
payees of every version since the last completed re-examination (`examined_version`): the
re-examination compares what those rules and today's rules say of each operation, so it never
writes per operation (the local engine does a few hundred single-document updates a second; an
`insert_many` of thousands of documents takes a fraction of a second).

The projection (`categorizer_operations`) is what this service knows of each operation: memo,
label, account, the rules version it was categorised with (`seen_version`) and that result, and the
user's manual choice when there is one. Every read is an equality on `_id` or on indexed fields
(FerretDB serves those from an index and scans the collection for `$in`: see shared.mongo.find_by_ids);
writes are unordered `insert_many` and bulk updates in small commands (see shared.bulk). FerretDB
v1 also loses one of two concurrent updates of the same document (it applies each to the document
as its query read it): the handlers never run two at once on one document in a process (see
CategorizerHandlers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DeleteOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.categorizer.domain import Categorization, Payee, RuleSet, UserCategory
from shared.bulk import bulk_write_chunked
from shared.mongo import DUPLICATE_KEY, find_by_ids

Doc = dict[str, Any]


def payees_doc(payees: Iterable[Payee]) -> list[Doc]:
    return [
        {"id": p.id, "name": p.name, "category": p.category, "keywords": list(p.keywords)} for p in payees
    ]


def payees_of(docs: Iterable[Doc]) -> tuple[Payee, ...]:
    return tuple(Payee(p["id"], p["name"], p["category"], tuple(p.get("keywords") or ())) for p in docs)


@dataclass(frozen=True)
class StoredRules:
    """A user's rule set, the version its past operations were last re-examined at, and the payees
    of every version since then (to tell what an operation was categorised as)."""

    ruleset: RuleSet
    examined_version: int = 0
    snapshots: dict[int, tuple[Payee, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, doc: Doc | None, user_id: str) -> StoredRules:
        if doc is None:
            return cls(RuleSet(user_id))
        ruleset = RuleSet(
            user_id=user_id,
            version=int(doc["version"]),
            payees=payees_of(doc["payees"]),
            categories=tuple(UserCategory(c["id"], c["label"]) for c in doc.get("categories") or ()),
        )
        snapshots = {int(s["version"]): payees_of(s["payees"]) for s in doc.get("snapshots") or ()}
        snapshots[ruleset.version] = ruleset.payees
        return cls(ruleset, int(doc.get("examined_version", 0)), snapshots)

    def payees_at(self, version: int) -> tuple[Payee, ...] | None:
        if version == 0:
            return ()
        return self.snapshots.get(version)

    def kept_snapshots(self, since: int) -> list[Doc]:
        return [
            {"version": v, "payees": payees_doc(p)}
            for v, p in sorted(self.snapshots.items())
            if since <= v < self.ruleset.version
        ]


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
    seen_version: int
    result: Categorization | None
    manual: Categorization | None
    month: str | None = None  # `YYYY-MM`; None for an operation projected before months were kept

    @classmethod
    def of(cls, doc: Doc) -> Projected:
        return cls(
            user_id=doc["user_id"],
            operation_id=doc["operation_id"],
            account_id=doc["account_id"],
            memo=doc.get("memo") or "",
            label=doc.get("label") or "",
            seen_version=int(doc.get("seen_version", 0)),
            result=result_of(doc.get("result")),
            manual=result_of(doc.get("manual")),
            month=doc.get("month"),
        )


def operation_key(user_id: str, operation_id: str) -> str:
    return f"{user_id}:{operation_id}"


class RuleSetRepository:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.rulesets: AsyncCollection[Doc] = db["categorizer_rulesets"]

    async def create_indexes(self) -> None:
        await self.rulesets.create_index([("retro_pending", ASCENDING)])

    async def stored(self, user_id: str) -> StoredRules:
        return StoredRules.of(await self.rulesets.find_one({"_id": user_id}), user_id)

    async def get(self, user_id: str) -> RuleSet:
        return (await self.stored(user_id)).ruleset

    async def versions(self, user_ids: Iterable[str]) -> dict[str, int]:
        """The current version of each user's rules (0 for a user without any)."""
        wanted = list(set(user_ids))
        found = await find_by_ids(self.rulesets, wanted)
        return {user: int(found[user]["version"]) if user in found else 0 for user in wanted}

    async def save(
        self, before: StoredRules, after: RuleSet, at: datetime, correlation_id: str, *, reexamine: bool
    ) -> bool:
        """Compare-and-set on the version; False when another writer got there first."""
        state: Doc = {
            "version": after.version,
            "payees": payees_doc(after.payees),
            "categories": [{"id": c.id, "label": c.label} for c in after.categories],
            "snapshots": [
                *before.kept_snapshots(since=before.examined_version),
                {"version": before.ruleset.version, "payees": payees_doc(before.ruleset.payees)},
            ],
            "updated_at": at,
            "correlation_id": correlation_id,
        }
        if reexamine:
            state |= {"retro_pending": True, "retro_requested_at": at}
        if before.ruleset.version == 0:
            try:
                await self.rulesets.insert_one(
                    {"_id": after.user_id, "examined_version": 0, "retro_pending": reexamine, **state}
                )
            except DuplicateKeyError:
                return False
            return True
        result = await self.rulesets.update_one(
            {"_id": after.user_id, "version": before.ruleset.version}, {"$set": state}
        )
        return result.matched_count == 1

    async def reexamination_done(self, user_id: str, version: int) -> None:
        """Records that past operations now reflect `version` (never going back), clears the pending
        flag unless the rules changed again meanwhile, and drops the snapshots no longer needed."""
        await self.rulesets.update_one(
            {"_id": user_id, "examined_version": {"$lt": version}}, {"$set": {"examined_version": version}}
        )
        doc = await self.rulesets.find_one({"_id": user_id})
        if doc is None:
            return
        stored = StoredRules.of(doc, user_id)
        since = max(stored.examined_version, version)
        # guarded by the version: a change saved meanwhile keeps its own snapshots and pending flag
        await self.rulesets.update_one(
            {"_id": user_id, "version": stored.ruleset.version},
            {
                "$set": {
                    "snapshots": stored.kept_snapshots(since=since),
                    "retro_pending": stored.ruleset.version > since,
                }
            },
        )

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
    """What an operation event says about one operation, and what it was categorised as."""

    user_id: str
    operation_id: str
    account_id: str
    memo: str
    label: str
    # the rules version and result just published for it; None when nothing was (they stay as they were)
    seen_version: int | None
    result: Categorization | None
    manual: Categorization | None = None  # a manual choice the importer already holds
    month: str | None = None  # the operation's `YYYY-MM`

    def fields(self, at: datetime) -> Doc:
        found: Doc = {
            "user_id": self.user_id,
            "operation_id": self.operation_id,
            "account_id": self.account_id,
            "memo": self.memo,
            "label": self.label,
            "seen_at": at,
        }
        if self.seen_version is not None and self.result is not None:
            found |= {"seen_version": self.seen_version, "result": result_doc(self.result)}
        if self.manual is not None:
            found["manual"] = result_doc(self.manual)
        if self.month is not None:
            found["month"] = self.month
        return found


class OperationsRepository:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.operations: AsyncCollection[Doc] = db["categorizer_operations"]

    async def create_indexes(self) -> None:
        await self.operations.create_index([("user_id", ASCENDING), ("account_id", ASCENDING)])

    async def get(self, user_id: str, operation_id: str) -> Projected | None:
        doc = await self.operations.find_one({"_id": operation_key(user_id, operation_id)})
        return None if doc is None else Projected.of(doc)

    async def get_many(self, operations: Iterable[tuple[str, str, str]]) -> dict[str, Projected]:
        """(user, account, operation) → the projected operation, by key; one read per account."""
        by_account: dict[tuple[str, str], list[str]] = {}
        for user_id, account_id, operation_id in operations:
            by_account.setdefault((user_id, account_id), []).append(operation_key(user_id, operation_id))
        found: dict[str, Projected] = {}
        for (user_id, account_id), keys in by_account.items():
            docs = await find_by_ids(self.operations, keys, {"user_id": user_id, "account_id": account_id})
            found.update((key, Projected.of(doc)) for key, doc in docs.items())
        return found

    async def write_seen(self, seen: Sequence[Seen], known: set[str], at: datetime) -> None:
        """New operations in one `insert_many`; known ones (or ones another writer inserted meanwhile)
        as upserts. The last word on one operation wins (events of one account come in order)."""
        latest: dict[str, Seen] = {}
        for item in seen:
            key = operation_key(item.user_id, item.operation_id)
            earlier = latest.get(key)
            if item.seen_version is None and earlier is not None and earlier.seen_version is not None:
                item = replace(item, seen_version=earlier.seen_version, result=earlier.result)
            latest[key] = item
        fresh = [{"_id": key, **item.fields(at)} for key, item in latest.items() if key not in known]
        again = [key for key in latest if key in known]
        if fresh:
            try:
                await self.operations.insert_many(fresh, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
                again += [fresh[e["index"]]["_id"] for e in errors]
        if again:
            await bulk_write_chunked(
                self.operations,
                [UpdateOne({"_id": key}, {"$set": latest[key].fields(at)}, upsert=True) for key in again],
            )

    async def set_seen_version(self, items: Sequence[tuple[str, str, int, Categorization]]) -> None:
        """(user, operation, version, result): after a rule change raced with a categorisation."""
        await bulk_write_chunked(
            self.operations,
            [
                UpdateOne(
                    {"_id": operation_key(user_id, op_id)},
                    {"$set": {"seen_version": version, "result": result_doc(result)}},
                )
                for user_id, op_id, version, result in items
            ],
        )

    async def set_manual(self, user_id: str, operation_id: str, result: Categorization) -> None:
        await self.operations.update_one(
            {"_id": operation_key(user_id, operation_id)}, {"$set": {"manual": result_doc(result)}}
        )

    async def of_user(self, user_id: str, batch_size: int = 5000) -> AsyncIterator[Projected]:
        """The user's operations, without their stored result (a re-examination recomputes it)."""
        fields = ("user_id", "operation_id", "account_id", "memo", "label", "seen_version", "manual", "month")
        cursor = self.operations.find({"user_id": user_id}, dict.fromkeys(fields, 1)).batch_size(batch_size)
        # the next batch is asked for as soon as one arrives: the engine reads it while this one is used
        batches: asyncio.Queue[list[Doc] | BaseException] = asyncio.Queue(maxsize=1)

        async def fetch() -> None:
            try:
                while True:
                    docs = await cursor.to_list(batch_size)
                    await batches.put(docs)
                    if not docs:
                        return
            except Exception as exc:
                await batches.put(exc)

        reader = asyncio.create_task(fetch())
        try:
            while True:
                batch = await batches.get()
                if isinstance(batch, BaseException):
                    raise batch
                if not batch:
                    return
                for doc in batch:
                    yield Projected.of(doc)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await cursor.close()

    async def delete(self, user_id: str, operation_ids: Sequence[str]) -> None:
        await bulk_write_chunked(
            self.operations, [DeleteOne({"_id": operation_key(user_id, op)}) for op in operation_ids]
        )

    async def delete_account(self, user_id: str, account_id: str) -> int:
        result = await self.operations.delete_many({"user_id": user_id, "account_id": account_id})
        return result.deleted_count


async def drop_all(db: AsyncDatabase[Doc]) -> None:
    """Tests and benchmarks only."""
    for name in ("categorizer_rulesets", "categorizer_operations"):
        with contextlib.suppress(Exception):
            await db.drop_collection(name)
