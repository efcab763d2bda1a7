"""MongoDB storage of the categorizer: one rule-set document per user, and its projection of operations.

FerretDB (and this design) has no multi-document transactions, so everything a user's recognition
depends on (payees, their keywords, user categories) lives in ONE document with a `version`, written
with compare-and-set on that version. The same write marks a re-examination of past operations as
pending, which a crash cannot lose (a background scan picks it up), and keeps a snapshot of the
payees of every version since the last completed re-examination (`examined_version`): the
re-examination compares what those rules and today's rules say of each operation, so it never
writes per operation (the local engine does a few hundred single-document updates a second; an
`insert_many` of thousands of documents takes a fraction of a second).

The projection is what this service knows of each operation: memo, label, account, the rules version
it was categorised with (`seen_version`) and that result, and the user's manual choice when there is
one. It is kept in month sheets (`categorizer_sheets`, shared.sheets: one per user, account and month,
a few documents of entries) because the local engine pays per document: a batch of operation events
is one insert per month it touches, and a re-examination reads a user's 20,000 operations as a few
dozen documents (one document each read about 6,000 a second). Entries are never rewritten: each says
what one write set, and they apply in the order written (`projection_state`). Every read is an
equality on `_id` or on an indexed field (FerretDB serves those from an index and scans the collection
for `$in`: see shared.mongo.find_by_ids). Rule sets are written with compare-and-set on their version;
FerretDB v1 applies an update to the document as its query read it, so the handlers never run two
updates of one rule set at once in a process: `RuleSetRepository` serialises its own writes per user,
and `OperationsRepository` its writes of the projection (the handlers know nothing of it).

The documents stay here: the handlers and the ports speak the typed records of ports.py, which this
module turns into documents and back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from pymongo import ASCENDING, DeleteOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.categorizer.domain.matching import Categorization
from services.categorizer.domain.rules import Payee, RuleSet, UserCategory
from services.categorizer.domain.transfers import TransferLeg
from services.categorizer.ports import (
    ConcurrentUpdate,
    Projected,
    RulesStatus,
    Seen,
    StoredLeg,
    StoredRules,
    operation_key,
)
from shared.bulk import bulk_write_chunked
from shared.contract.payloads import TransferRef
from shared.mongo import find_by_ids
from shared.sheets import Additions, SheetAddition, Sheets, entries_by_item

Doc = dict[str, Any]
T = TypeVar("T")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def payees_doc(payees: Iterable[Payee]) -> list[Doc]:
    return [
        {"id": p.id, "name": p.name, "category": p.category, "keywords": list(p.keywords)} for p in payees
    ]


def payees_of(docs: Iterable[Doc]) -> tuple[Payee, ...]:
    return tuple(Payee(p["id"], p["name"], p["category"], tuple(p.get("keywords") or ())) for p in docs)


def stored_rules_of(doc: Doc | None, user_id: str) -> StoredRules:
    """A user's rule-set document (None: the user has none yet) as a record."""
    if doc is None:
        return StoredRules(RuleSet(user_id))
    ruleset = RuleSet(
        user_id=user_id,
        version=int(doc["version"]),
        payees=payees_of(doc["payees"]),
        categories=tuple(UserCategory(c["id"], c["label"]) for c in doc.get("categories") or ()),
    )
    snapshots = {int(s["version"]): payees_of(s["payees"]) for s in doc.get("snapshots") or ()}
    snapshots[ruleset.version] = ruleset.payees
    return StoredRules(ruleset, int(doc.get("examined_version", 0)), snapshots)


def snapshots_doc(stored: StoredRules, since: int) -> list[Doc]:
    """The snapshots kept from `since` on (`StoredRules.kept`), as stored."""
    return [{"version": v, "payees": payees_doc(p)} for v, p in stored.kept(since).items()]


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


def legacy_projected(doc: Doc) -> Projected:
    """An operation of the projection kept one document each (before the sheets)."""
    return Projected(
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


class RuleSetRepository:
    """`categorizer_rulesets`: one document per user (`_id`), written with compare-and-set on its version.
    This process never runs two writes of one user's document at once (see the module's docstring)."""

    ATTEMPTS = 10

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.rulesets: AsyncCollection[Doc] = db["categorizer_rulesets"]
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    async def create_indexes(self) -> None:
        await self.rulesets.create_index([("retro_pending", ASCENDING)])

    async def stored(self, user_id: str) -> StoredRules:
        return stored_rules_of(await self.rulesets.find_one({"_id": user_id}), user_id)

    async def get(self, user_id: str) -> RuleSet:
        return (await self.stored(user_id)).ruleset

    async def versions(self, user_ids: Iterable[str]) -> dict[str, int]:
        """The current version of each user's rules (0 for a user without any)."""
        wanted = list(set(user_ids))
        found = await find_by_ids(self.rulesets, wanted)
        return {user: int(found[user]["version"]) if user in found else 0 for user in wanted}

    async def update(
        self,
        user_id: str,
        command: Callable[[RuleSet], tuple[RuleSet, T]],
        at: datetime,
        correlation_id: str,
        *,
        reexamine: bool,
    ) -> tuple[RuleSet, T]:
        """Reads, applies `command`, saves with compare-and-set; again when another writer got there
        first (another replica: this process's own writers wait for each other)."""
        async with self._lock(user_id):
            for _ in range(self.ATTEMPTS):
                current = await self.stored(user_id)
                after, answer = command(current.ruleset)
                if await self.save(current, after, at, correlation_id, reexamine=reexamine):
                    return after, answer
        raise ConcurrentUpdate(user_id)

    async def save(
        self, before: StoredRules, after: RuleSet, at: datetime, correlation_id: str, *, reexamine: bool
    ) -> bool:
        """Compare-and-set on the version; False when another writer got there first."""
        state: Doc = {
            "version": after.version,
            "payees": payees_doc(after.payees),
            "categories": [{"id": c.id, "label": c.label} for c in after.categories],
            "snapshots": [
                *snapshots_doc(before, since=before.examined_version),
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
        async with self._lock(user_id):
            await self.rulesets.update_one(
                {"_id": user_id, "examined_version": {"$lt": version}},
                {"$set": {"examined_version": version}},
            )
            doc = await self.rulesets.find_one({"_id": user_id})
            if doc is None:
                return
            stored = stored_rules_of(doc, user_id)
            since = max(stored.examined_version, version)
            # guarded by the version: a change saved meanwhile keeps its own snapshots and pending flag
            await self.rulesets.update_one(
                {"_id": user_id, "version": stored.ruleset.version},
                {
                    "$set": {
                        "snapshots": snapshots_doc(stored, since=since),
                        "retro_pending": stored.ruleset.version > since,
                    }
                },
            )

    async def pending_since(self, before: datetime, limit: int = 100) -> list[str]:
        cursor = self.rulesets.find(
            {"retro_pending": True, "retro_requested_at": {"$lt": before}}, {"_id": 1}
        ).limit(limit)
        return [doc["_id"] async for doc in cursor]

    async def status(self, user_id: str) -> RulesStatus:
        doc = await self.rulesets.find_one({"_id": user_id}, {"version": 1, "retro_pending": 1})
        if doc is None:
            return RulesStatus(rules_version=0, reexamination_pending=False)
        return RulesStatus(
            rules_version=int(doc["version"]), reexamination_pending=bool(doc.get("retro_pending"))
        )

    async def correlation_id(self, user_id: str) -> str | None:
        doc = await self.rulesets.find_one({"_id": user_id}, {"correlation_id": 1})
        return None if doc is None else doc.get("correlation_id")


def seen_entry(seen: Seen, at: datetime) -> Doc:
    """An operation's entry in its projection sheet (what it sets; the rest stays as it was)."""
    found: Doc = {"memo": seen.memo, "label": seen.label, "at": at}
    if seen.seen_version is not None and seen.result is not None:
        found |= {"seen_version": seen.seen_version, "result": result_doc(seen.result)}
    if seen.manual is not None:
        found["manual"] = result_doc(seen.manual)
    return found


NO_MONTH = "-"  # the sheet of operations projected before months were kept


def projection_sheet(user_id: str, account_id: str, month: str | None) -> str:
    return f"{user_id}:{account_id}:{month or NO_MONTH}"


def month_of_sheet(sheet: str) -> str | None:
    month = sheet.rsplit(":", 1)[1]
    return None if month == NO_MONTH else month


def projection_state(entries: Iterable[Doc]) -> Doc | None:
    """What an operation's entries leave, applied in the order they were written (`at`): each sets
    the fields it has; a deletion (`gone`) forgets what came before. The state names an operation
    only with a memo (see `projected_of`)."""
    state: Doc = {}
    for entry in sorted(entries, key=lambda entry: entry["at"]):
        if entry.get("gone"):
            state = {"gone": True, "at": entry["at"]}
        else:
            state = {**({} if state.get("gone") else state), **entry}
    return state or None


def projected_of(user_id: str, operation_id: str, part: Doc, state: Doc | None) -> Projected | None:
    """The operation a state of the sheet document `part` describes (None: deleted or never seen)."""
    if state is None or state.get("gone") or "memo" not in state:
        return None
    return Projected(
        user_id=user_id,
        operation_id=operation_id,
        account_id=str(part["account_id"]),
        memo=state.get("memo") or "",
        label=state.get("label") or "",
        seen_version=int(state.get("seen_version", 0)),
        result=result_of(state.get("result")),
        manual=result_of(state.get("manual")),
        month=month_of_sheet(str(part["sheet"])),
        choice=int(state.get("choice", 0)),
    )


class ProjectionSheets(Sheets):
    """`categorizer_sheets` (see shared.sheets): one sheet per user, account and month; an entry is what
    one write said of an operation, and what a sheet holds is `projection_state` of its entries."""

    INDEXES = (("by_user", "user_id"),)

    def merge(self, entries: list[Doc]) -> Doc | None:
        return projection_state(entries)


class OperationsRepository:
    """The projection: what this service knows of each operation (memo, label, account and month, the
    rules version it was categorised with and that result, the user's manual choice), kept in month
    sheets (`ProjectionSheets`): a batch of operation events is one insert per sheet it touches, and a
    re-examination reads a user's thousands of operations as a few dozen documents. The operations
    of an account are written by the consumer of its partition (corrections add entries; nothing is
    rewritten, so concurrent writers lose nothing)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.sheets = ProjectionSheets(db["categorizer_sheets"])
        # where operations were kept, one document each, before the sheets (`adopt_legacy` moves them)
        self.legacy: AsyncCollection[Doc] = db["categorizer_operations"]
        self._last_stamp = EPOCH
        # FerretDB v1: never two writes of the projection at once in this process
        self._writing = asyncio.Lock()

    def _stamp(self, at: datetime) -> datetime:
        """`at` as stored (milliseconds), after every earlier write of this process: the entries of one
        operation apply in the order they were written."""
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        self._last_stamp = max(at, self._last_stamp + timedelta(milliseconds=1))
        return self._last_stamp

    async def create_indexes(self) -> None:
        await self.sheets.create_indexes()
        # what is left of the older projection: an erasure finds it by user
        await self.legacy.create_index([("user_id", ASCENDING)], name="by_user")

    async def adopt_legacy(self, batch: int = 5_000) -> int:
        """Moves the operations kept one document each (before the sheets) into the sheets, a batch at
        a time (appended first, deleted after: a crash in between leaves entries twice, which merge).
        Returns how many moved. Run at start-up; a store that never had them reads one empty batch."""
        moved = 0
        while docs := await self.legacy.find({}).limit(batch).to_list():
            additions = Additions()
            for doc in docs:
                op = legacy_projected(doc)
                sid = projection_sheet(op.user_id, op.account_id, op.month)
                seen = Seen(
                    op.user_id,
                    op.operation_id,
                    op.account_id,
                    op.memo,
                    op.label,
                    op.seen_version,
                    op.result or Categorization(),
                    op.manual,
                )
                additions.entries(sid, op.user_id, op.account_id)[op.operation_id] = seen_entry(
                    seen, doc.get("seen_at") or EPOCH
                )
            await self.sheets.append(additions.all())
            await bulk_write_chunked(self.legacy, [DeleteOne({"_id": doc["_id"]}) for doc in docs])
            moved += len(docs)
        return moved

    async def get(self, user_id: str, operation_id: str) -> Projected | None:
        """One operation of the user, by id (the HTTP routes: it reads the user's sheets)."""
        return (await self._of_user(user_id)).get(operation_id)

    async def get_many(self, operations: Iterable[tuple[str, str, str, str | None]]) -> dict[str, Projected]:
        """(user, account, operation, month) → the projected operation, by key; one read per sheet."""
        wanted = {
            operation_key(user_id, op_id): (user_id, op_id, projection_sheet(user_id, account_id, month))
            for user_id, account_id, op_id, month in operations
        }
        sheets = await self.sheets.read({sid for _, _, sid in wanted.values()})
        found: dict[str, Projected] = {}
        for key, (user_id, op_id, sid) in wanted.items():
            parts = [part for part in sheets.get(sid, ()) if op_id in part["ops"]]
            if not parts:
                continue
            state = projection_state(part["ops"][op_id] for part in parts)
            if (projected := projected_of(user_id, op_id, parts[0], state)) is not None:
                found[key] = projected
        return found

    async def write_seen(self, seen: Sequence[Seen], at: datetime) -> None:
        """One entry per operation (what the batch says of it, in order) in its month's sheet."""
        async with self._writing:
            at = self._stamp(at)
            additions = Additions()
            for item in seen:
                sid = projection_sheet(item.user_id, item.account_id, item.month)
                entries = additions.entries(sid, item.user_id, item.account_id)
                entries[item.operation_id] = {**entries.get(item.operation_id, {}), **seen_entry(item, at)}
            await self.sheets.append(additions.all())

    async def set_seen_version(self, items: Sequence[tuple[Seen, int, Categorization]], at: datetime) -> None:
        """(operation, version, result): after a rule change raced with a categorisation."""
        async with self._writing:
            at = self._stamp(at)
            additions = Additions()
            for item, version, result in items:
                sid = projection_sheet(item.user_id, item.account_id, item.month)
                additions.entries(sid, item.user_id, item.account_id)[item.operation_id] = {
                    "seen_version": version,
                    "result": result_doc(result),
                    "at": at,
                }
            await self.sheets.append(additions.all())

    async def set_manual(self, op: Projected, result: Categorization, at: datetime) -> None:
        """The user's choice for an operation (the next `choice`)."""
        await self.set_choice(op, result, op.choice + 1, at)

    async def set_choice(
        self,
        op: Projected,
        manual: Categorization | None,
        choice: int,
        at: datetime,
        seen: tuple[int, Categorization] | None = None,
    ) -> None:
        """The user's choice for an operation (`manual`), or none any more (None: the rules apply again,
        and `seen` is the rules version and result then published), numbered `choice`."""
        sid = projection_sheet(op.user_id, op.account_id, op.month)
        async with self._writing:
            entry: Doc = {
                "manual": None if manual is None else result_doc(manual),
                "choice": choice,
                "at": self._stamp(at),
            }
            if seen is not None:
                entry |= {"seen_version": seen[0], "result": result_doc(seen[1])}
            addition = SheetAddition(sid, op.user_id, op.account_id, {op.operation_id: entry})
            await self.sheets.append([addition])

    async def set_results(self, items: Sequence[tuple[Projected, int, Categorization]], at: datetime) -> None:
        """(operation, version, result) just published for operations outside a batch (a transfer's
        other leg linked or unlinked): what a re-examination compares with."""
        async with self._writing:
            at = self._stamp(at)
            additions = Additions()
            for op, version, result in items:
                sid = projection_sheet(op.user_id, op.account_id, op.month)
                additions.entries(sid, op.user_id, op.account_id)[op.operation_id] = {
                    "seen_version": version,
                    "result": result_doc(result),
                    "at": at,
                }
            await self.sheets.append(additions.all())

    async def of_user(self, user_id: str) -> AsyncIterator[Projected]:
        """The user's operations (their stored result too; a re-examination recomputes it)."""
        for projected in (await self._of_user(user_id)).values():
            yield projected

    async def _of_user(self, user_id: str) -> dict[str, Projected]:
        """Operation id → the user's operation, from all the user's sheets; one that moved to another
        month (its date changed) is where it was written last."""
        parts = await self.sheets.find({"user_id": user_id})
        by_sheet: dict[str, list[Doc]] = {}
        for part in parts:
            by_sheet.setdefault(str(part["sheet"]), []).append(part)
        latest: dict[str, tuple[datetime, Projected | None]] = {}
        for own in by_sheet.values():
            for op_id, entries in entries_by_item(own).items():
                state = projection_state(entries)
                if state is None:
                    continue
                earlier = latest.get(op_id)
                if earlier is None or state["at"] > earlier[0]:
                    latest[op_id] = (state["at"], projected_of(user_id, op_id, own[0], state))
        return {op_id: projected for op_id, (_, projected) in latest.items() if projected is not None}

    async def delete(
        self, user_id: str, account_id: str, month: str | None, operation_ids: Sequence[str], at: datetime
    ) -> None:
        sid = projection_sheet(user_id, account_id, month)
        at = self._stamp(at)
        gone = {op_id: {"gone": True, "at": at} for op_id in operation_ids}
        await self.sheets.append([SheetAddition(sid, user_id, account_id, gone)])

    async def delete_account(self, user_id: str, account_id: str) -> int:
        """Returns how many sheet documents went."""
        result = await self.sheets.coll.delete_many({"user_id": user_id, "account_id": account_id})
        return result.deleted_count


def stored_leg_of(doc: Doc) -> StoredLeg:
    partner = doc.get("partner")
    return StoredLeg(
        user_id=doc["user_id"],
        leg=TransferLeg(
            operation_id=doc["operation_id"],
            account_id=doc["account_id"],
            currency=doc["currency"],
            cents=int(doc["cents"]),
            date=date.fromisoformat(doc["date"]),
        ),
        month=doc["month"],
        partner=TransferRef.model_validate(partner) if partner else None,
    )


def leg_id(user_id: str, operation_id: str) -> str:
    return f"{user_id}:{operation_id}"


class TransferRepository:
    """`categorizer_transfers`: one small document per operation whose wording is a transfer's
    (`_id` = `<user>:<operation>`), with its account, currency, signed cents, date and month, and the
    other leg it is linked to (`partner`). A user's documents are read at once by `user_id` (an index):
    transfers are a few a month, so the read is small and its cost is the user's, never the
    collection's. The pairing (`domain.transfers.match_transfers`) is a function of the user's legs;
    each batch writes its legs first and reads after, so of two batches racing with the two legs of one
    transfer the later reader sees both; in this process, one pairing of a user's legs at a time
    (`pairing`)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.coll: AsyncCollection[Doc] = db["categorizer_transfers"]
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def pairing(self, user_ids: Sequence[str]) -> AsyncIterator[None]:
        """Held while the users' legs are paired (read, pair, publish, write): one lock per user, taken
        in the order of the users' ids."""
        async with contextlib.AsyncExitStack() as held:
            for user_id in sorted(set(user_ids)):
                lock = self._locks.get(user_id)
                if lock is None:
                    lock = self._locks[user_id] = asyncio.Lock()
                await held.enter_async_context(lock)
            yield

    async def create_indexes(self) -> None:
        await self.coll.create_index([("user_id", ASCENDING), ("account_id", ASCENDING)], name="by_user")

    async def put(self, legs: Sequence[tuple[str, TransferLeg, str]], at: datetime) -> None:
        """(user, leg, month): stored or updated (the link they had stays)."""
        await bulk_write_chunked(
            self.coll,
            [
                UpdateOne(
                    {"_id": leg_id(user_id, leg.operation_id)},
                    {
                        "$set": {
                            "user_id": user_id,
                            "operation_id": leg.operation_id,
                            "account_id": leg.account_id,
                            "currency": leg.currency,
                            "cents": leg.cents,
                            "date": leg.date.isoformat(),
                            "month": month,
                            "updated_at": at,
                        },
                        "$setOnInsert": {"partner": None},
                    },
                    upsert=True,
                )
                for user_id, leg, month in legs
            ],
        )

    async def of_user(self, user_id: str) -> dict[str, StoredLeg]:
        """Operation id → the user's leg."""
        return {doc["operation_id"]: stored_leg_of(doc) async for doc in self.coll.find({"user_id": user_id})}

    async def get(self, user_id: str, operation_id: str) -> StoredLeg | None:
        doc = await self.coll.find_one({"_id": leg_id(user_id, operation_id)})
        return None if doc is None else stored_leg_of(doc)

    async def write(
        self, user_id: str, links: dict[str, TransferRef | None], gone: Iterable[str], at: datetime
    ) -> None:
        """Sets the links that changed (operation id → the other leg, or None) and forgets legs that went."""
        writes: list[UpdateOne | DeleteOne] = [
            UpdateOne(
                {"_id": leg_id(user_id, op_id)},
                {"$set": {"partner": None if ref is None else ref.model_dump(), "updated_at": at}},
            )
            for op_id, ref in links.items()
        ]
        writes += [DeleteOne({"_id": leg_id(user_id, op_id)}) for op_id in gone]
        await bulk_write_chunked(self.coll, writes)

    async def delete_account(self, user_id: str, account_id: str) -> int:
        result = await self.coll.delete_many({"user_id": user_id, "account_id": account_id})
        return result.deleted_count


async def drop_all(db: AsyncDatabase[Doc]) -> None:
    """Tests and benchmarks only."""
    names = ("categorizer_rulesets", "categorizer_sheets", "categorizer_operations", "categorizer_transfers")
    for name in names:
        with contextlib.suppress(Exception):
            await db.drop_collection(name)


class CategorizerEraser:
    """Erasing a user from the categorizer's collections (see shared.erasure): rules, payees, projection,
    transfer legs."""

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
