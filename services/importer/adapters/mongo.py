"""MongoDB storage of the importer, shaped for what the local engine (FerretDB v1 on PostgreSQL) does
fast and safely, which is also what MongoDB does well.

FerretDB serves an equality on `_id` or on an indexed field from an index (deploy/local/ferretdb-gin.sql),
evaluates every other operator (`$in`, `$or`, ranges, sorts) on what that returns, inserts in bulk fast,
applies each update statement by reading the document and writing it back, and cannot take update
commands of many statements (see shared.bulk). So the hot path reads by `_id` or by account, inserts
new documents in bulk and sends updates in small commands:

- `import_state`: one document per aggregator account (`_id` = `<user>:<aggregator account>`): every
  line's identity, version and role, compressed into one binary field, with a revision number. It is
  the dedup state; each batch replaces it with a compare-and-set on `rev` (single-document atomicity,
  no transaction needed), after the operations and events it implies are written.
- `operations`: one document per operation the app shows (`_id` = operation id, deterministic for
  bank lines), its bank fields; categorisations stored before the sheets below existed stay on it.
  A bank operation carries `src_rev`, the state revision that last wrote it: changes and deletions are
  fenced on it in their filter, so a writer that decided on an older state (a replica paused past its
  session timeout, whose partition another replica took) never replaces a later revision's work.
- `categorizations`: the categorizer's payee and category of operations, in "sheets": one per account
  and month (`sheet` = `<account>:<YYYY-MM>`), each a few documents of entries (operation id →
  categorisation) that batches of results added, folded into one now and then. A batch of results is
  one insert per sheet it touches instead of one update per operation: the local engine writes a few
  hundred documents a second, and a new payee can change thousands. What the app reads is the
  operation with the strongest of its own categorisation and its sheets' entries
  (`with_categorization`, `categorization_rank`).
- `accounts` (with the manual operations reconcile mode may match, and the latest balance check:
  the bank's balance, the opening balance fixed at the first check, the computed balance and the gap),
  `banks`, `links`.

A page of operations is read by account (an index) and ordered and cut by the engine after it.

The documents stay in this module: the ports (services/importer/ports.py) speak records. `StateStore`
and `AccountStore` implement theirs directly; `OperationStore` is the `operations` collection as
documents (the tools, benchmarks and store tests read it so), and `MongoOperations` and
`MongoCategorizations` are the Operations and CategorizationFiling ports over it, turning records into
documents and back (`stored_operation`, `BankOperationFactory`, `manual_document`...).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING, DeleteOne, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.importer.domain.accounts import Account, AccountNaming, BankAccountDetails, Link
from services.importer.domain.balances import (
    AccountBalance,
    BalanceCheck,
    BalanceState,
    BalanceStored,
    BankBalance,
    amount_of,
    cents,
)
from services.importer.domain.categorizations import categorization_rank, sheet_id
from services.importer.domain.lines import ImportMode, Line, ManualCandidate, StoredState
from services.importer.domain.operations import (
    BankOrigin,
    BankWrite,
    LineMatch,
    ManualEdit,
    OperationPage,
    OperationQuery,
    Searchable,
    StoredOperation,
)
from shared.bulk import bulk_write_chunked
from shared.contract.payloads import Bank, Operation, OperationCategorized
from shared.money import format_amount
from shared.mongo import DUPLICATE_KEY, find_by_ids
from shared.periods import month_of
from shared.sheets import Additions, SheetAddition, Sheets
from shared.text import search_key, search_keys, words_of

Doc = dict[str, Any]

STATE_FORMAT = 1
_PENDING, _REMOVED, _WAS_PENDING = 1, 2, 4


# ---- the per-account dedup state -----------------------------------------------------------------------


def encode_lines(lines: Iterable[Line]) -> bytes:
    rows = [
        [
            line.txid,
            line.date.isoformat(),
            str(line.amount),
            line.memo,
            line.label,
            (_PENDING if line.pending else 0)
            | (_REMOVED if line.removed else 0)
            | (_WAS_PENDING if line.was_pending else 0),
            line.version,
            line.seen.isoformat(),
            line.account_id,
            line.op_id,
            line.claimed_by,
            line.claims,
            line.reconciles,
            line.removed_in,
            line.since,
        ]
        for line in lines
    ]
    return zlib.compress(json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode(), 6)


def decode_lines(blob: bytes) -> dict[str, Line]:
    lines: dict[str, Line] = {}
    for row in json.loads(zlib.decompress(blob)):
        (txid, date, amount, memo, label, flags, version, seen, account_id) = row[:9]
        (op_id, claimed_by, claims, reconciles, removed_in, since) = row[9:15]
        lines[txid] = Line(
            txid=txid,
            date=dt.date.fromisoformat(date),
            amount=Decimal(amount),
            memo=memo,
            label=label,
            pending=bool(flags & _PENDING),
            removed=bool(flags & _REMOVED),
            version=version,
            seen=dt.date.fromisoformat(seen),
            was_pending=bool(flags & _WAS_PENDING),
            account_id=account_id,
            op_id=op_id,
            claimed_by=claimed_by,
            claims=claims,
            reconciles=reconciles,
            removed_in=removed_in,
            since=since,
        )
    return lines


class StateStore:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.coll: AsyncCollection[Doc] = db["import_state"]

    async def load(self, akey: str) -> StoredState:
        doc = await self.coll.find_one({"_id": akey})
        if doc is None:
            return StoredState(akey)
        return StoredState(
            akey,
            doc.get("user_id", ""),
            int(doc["rev"]),
            decode_lines(bytes(doc["lines"])),
            set(doc.get("accounts", [])),
        )

    async def save(self, state: StoredState, user_id: str, lines: Iterable[Line], accounts: set[str]) -> bool:
        """Compare-and-set on the revision; False when another writer stored a newer state first."""
        line_list = list(lines)
        doc: Doc = {
            "user_id": user_id,
            "format": STATE_FORMAT,
            "rev": state.rev + 1,
            "count": len(line_list),
            "accounts": sorted(accounts),
            "lines": Binary(encode_lines(line_list)),
            "updated_at": dt.datetime.now(dt.UTC),
        }
        if state.rev == 0:
            try:
                await self.coll.insert_one({"_id": state.akey, **doc})
            except DuplicateKeyError:
                return False
            return True
        result = await self.coll.replace_one({"_id": state.akey, "rev": state.rev}, doc)
        return result.matched_count == 1


# ---- operations ----------------------------------------------------------------------------------------


def to_operation(doc: Doc) -> Operation:
    categorized_by = doc.get("categorized_by")
    return Operation(
        id=doc["_id"],
        account_id=doc["account_id"],
        date=dt.date.fromisoformat(doc["date"]),
        amount=doc["amount"],
        currency=doc["currency"],
        memo=doc.get("memo", ""),
        label=doc.get("label", ""),
        status=doc.get("status", "booked"),
        source=doc.get("source", "bank"),
        reconciled=bool(doc.get("reconciled", False)),
        payee=doc.get("payee"),
        category=doc.get("category"),
        categorized_by=categorized_by,
        aggregator_transaction_id=doc.get("aggregator_transaction_id"),
        transfer=doc.get("transfer"),
    )


def previous_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year - 1}-12" if number == 1 else f"{year:04d}-{number - 1:02d}"


def bank_fields(line: Line) -> Doc:
    """What a bank line decides on its operation (never the categorization)."""
    return {
        "date": line.date.isoformat(),
        "month": month_of(line.date),
        "amount": str(line.amount),
        "cents": cents(line.amount),
        "memo": line.memo,
        "label": line.label,
        "words": search_keys(line.memo, line.label),
        "status": line.status,
        "aggregator_transaction_id": line.txid,
    }


def searchable(doc: Doc) -> Searchable:
    """What a search looks at in an operation (as the app shows it, see `with_categorization`). The
    words are stored at every write of the memo or the label (`words`); a document stored before has
    them computed here, from the same fields, by the same function."""
    words = doc.get("words")
    payee = doc.get("payee")
    return Searchable(
        words=words if isinstance(words, list) else words_of(doc.get("memo") or "", doc.get("label") or ""),
        cents=int(doc["cents"]) if doc.get("cents") is not None else cents(Decimal(str(doc["amount"]))),
        status=doc.get("status", "booked"),
        source=doc.get("source", "bank"),
        reconciled=bool(doc.get("reconciled", False)),
        category=doc.get("category"),
        payee_id=payee.get("id") if isinstance(payee, dict) else None,
    )


CATEGORIZATION_DEFAULTS: Doc = {
    "payee": None,
    "category": None,
    "categorized_by": None,
    "cat_src": None,
    "cat_rv": -1,
    "cat_cv": 0,  # the choice number (OperationCategorized.choice_version)
    "transfer": None,  # the other leg of a transfer between the user's accounts
}


@dataclass(frozen=True)
class Page:
    items: list[Doc]
    next_after: tuple[str, str] | None


CATEGORIZATION_FIELDS = (*CATEGORIZATION_DEFAULTS, "categorized_at")
# what names an operation's sheets and whose they are (see `sheets_of`, `with_categorization`)
SHEET_LOCATION_FIELDS = ("user_id", "account_id", "month", "filed")


def filed_under(doc: Doc) -> str:
    """The sheet an operation was filed in when first stored (`filed`), whatever its date or account
    became since; one stored before sheets existed is filed where it is."""
    return str(doc.get("filed") or sheet_id(str(doc.get("account_id")), str(doc.get("month"))))


def sheets_of(doc: Doc) -> set[str]:
    """The sheets that may hold an operation's categorisation: the one it was filed in, and the one of
    its account and month today (a result names the month the operation had when it was decided)."""
    return {filed_under(doc), sheet_id(str(doc.get("account_id")), str(doc.get("month")))}


def categorization_of(doc: Doc) -> Doc:
    """The categorisation fields of an operation document or of a sheet entry."""
    return {k: doc[k] for k in CATEGORIZATION_FIELDS if k in doc}


def stronger(entry: Doc, current: Doc) -> bool:
    """Whether a categorisation `entry` replaces `current` (see `categorization_rank`: at least its rank)."""
    return categorization_rank(
        entry.get("cat_src"), int(entry.get("cat_rv", -1)), int(entry.get("cat_cv") or 0)
    ) >= categorization_rank(
        current.get("cat_src"), int(current.get("cat_rv", -1)), int(current.get("cat_cv") or 0)
    )


def strongest(current: Doc | None, entries: Iterable[Doc]) -> Doc | None:
    """The categorisation that applying `entries` in the order they were written (`categorized_at`)
    over `current` leaves: each replaces the one before when at least as strong."""
    best = current
    for entry in sorted(entries, key=lambda entry: str(entry.get("categorized_at") or "")):
        if best is None or stronger(entry, best):
            best = entry
    return best


def with_categorization(doc: Doc, sheets: dict[str, list[Doc]]) -> Doc:
    """The operation as the app shows it: the strongest of its own categorisation and its entries in
    its sheets (the user's own entries only); among equals, the later one."""
    entries = [
        entry
        for sid in sheets_of(doc)
        for part in sheets.get(sid, ())
        if part.get("user_id") == doc.get("user_id")
        if (entry := part["ops"].get(doc["_id"])) is not None
    ]
    best = strongest(doc, entries)
    return doc if best is doc or best is None else {**doc, **categorization_of(best)}


class CategorizationSheets(Sheets):
    """The `categorizations` collection (see the module's docstring and shared.sheets): an entry is a
    categorisation, and what a sheet holds for an operation is the strongest of its entries.

    Each account's sheets have one writer, the consumer of its partition of the categorizations topic.
    """

    INDEXES = (("by_account", "account_id"),)

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        super().__init__(db["categorizations"])

    def merge(self, entries: list[Doc]) -> Doc | None:
        return strongest(None, entries)

    async def of(self, docs: Iterable[Doc]) -> dict[str, list[Doc]]:
        """The sheets of these operations."""
        return await self.read({sid for doc in docs for sid in sheets_of(doc)})

    async def delete_account(self, account_id: str) -> None:
        await self.coll.delete_many({"account_id": account_id})


class OperationStore:
    # the one-off rewrite of operations stored before their search keys (see `add_search_keys`)
    SEARCH_KEYS_MIGRATION = "operations.search_keys"

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.coll: AsyncCollection[Doc] = db["operations"]
        self.sheets = CategorizationSheets(db)
        self.migrations: AsyncCollection[Doc] = db["migrations"]

    async def add_search_keys(self) -> int:
        """Gives the operations stored before search keys existed their `words` (`shared.text.search_keys`),
        once per database: a marker says it was done, so later starts do not read the collection again.
        Returns how many operations it rewrote."""
        if await self.migrations.find_one({"_id": self.SEARCH_KEYS_MIGRATION}) is not None:
            return 0
        updates = [
            UpdateOne(
                {"_id": doc["_id"]},
                {"$set": {"words": search_keys(str(doc.get("memo") or ""), str(doc.get("label") or ""))}},
            )
            async for doc in self.coll.find({"words": {"$exists": False}}, {"memo": 1, "label": 1})
        ]
        await bulk_write_chunked(self.coll, updates)
        with contextlib.suppress(DuplicateKeyError):
            await self.migrations.insert_one(
                {"_id": self.SEARCH_KEYS_MIGRATION, "at": dt.datetime.now(dt.UTC)}
            )
        return len(updates)

    async def create_indexes(self) -> None:
        await self.coll.create_index(
            [("account_id", ASCENDING), ("date", DESCENDING), ("_id", DESCENDING)], name="account_date"
        )
        await self.coll.create_index([("account_id", ASCENDING), ("month", DESCENDING)], name="account_month")
        # a user's operations of a month, every account at once (the listing of all accounts)
        await self.coll.create_index([("user_id", ASCENDING), ("month", DESCENDING)], name="user_month")
        await self.coll.create_index([("user_id", ASCENDING)], name="by_user")
        # a search by the beginning of a word (`words` holds every word's beginnings, see search_keys)
        await self.coll.create_index([("user_id", ASCENDING), ("words", ASCENDING)], name="user_words")
        await self.sheets.create_indexes()

    async def categorized(self, docs: Sequence[Doc]) -> list[Doc]:
        """The documents with their categorisation as the app shows it (see `with_categorization`)."""
        sheets = await self.sheets.of(docs)
        return [with_categorization(doc, sheets) for doc in docs]

    async def find_shown(self, query: Doc, fields: Iterable[str]) -> list[Doc]:
        """`fields` of the operations `query` finds, with their categorisation as the app shows it
        (benchmarks and tools: the filter is theirs to index)."""
        wanted = dict.fromkeys((*fields, *SHEET_LOCATION_FIELDS, *CATEGORIZATION_FIELDS), 1)
        return await self.categorized(await self.coll.find(query, wanted).to_list())

    async def get_many(self, ids: Iterable[str]) -> dict[str, Doc]:
        """With their categorisation as the app shows it."""
        docs = await find_by_ids(self.coll, ids)
        return {doc["_id"]: doc for doc in await self.categorized(list(docs.values()))}

    async def get(self, op_id: str) -> Doc | None:
        """With its categorisation as the app shows it."""
        doc = await self.coll.find_one({"_id": op_id})
        return None if doc is None else (await self.categorized([doc]))[0]

    async def stored_many(self, ids: Iterable[str], scope: Doc | None = None) -> dict[str, Doc]:
        """Stored documents as they are (without their sheet), by id, within `scope` if given."""
        return await find_by_ids(self.coll, ids, scope)

    async def insert_new(self, docs: Sequence[Doc]) -> int:
        """Inserts in one bulk; documents already there (a batch re-run) are left as they are."""
        if not docs:
            return 0
        try:
            result = await self.coll.bulk_write([InsertOne(d) for d in docs], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            return int(exc.details.get("nInserted", 0))
        return result.inserted_count

    async def write(self, requests: Sequence[UpdateOne | DeleteOne]) -> int:
        """In order, in small commands (shared.bulk); returns how many documents matched or went."""
        return await bulk_write_chunked(self.coll, requests, ordered=True)

    async def guarded_update(self, op_id: str, guard: Doc, update: Doc) -> bool:
        result = await self.coll.update_one({"_id": op_id, **guard}, update)
        return result.matched_count == 1

    async def edit_manual(self, op_id: str, fields: Doc, *, unreconciled: bool) -> bool:
        """Sets fields of a manual operation; with `unreconciled`, only while no bank line reconciles it
        (the guard is in the write's filter). False when no such operation matched."""
        guard: Doc = {"_id": op_id, "source": "manual"}
        if unreconciled:
            guard["reconciled_by"] = None
        result = await self.coll.update_one(guard, {"$set": fields})
        return result.matched_count == 1

    async def delete_manual(self, op_id: str) -> bool:
        """Deletes a manual operation that no bank line reconciles; False when none such matched."""
        result = await self.coll.delete_one({"_id": op_id, "source": "manual", "reconciled_by": None})
        return result.deleted_count == 1

    async def refuse_line(self, op_id: str, ref: str) -> None:
        """The user undid the match of this manual operation with the line `ref` (domain.line_ref):
        reconcile mode never matches them again (`unmatched_lines`, see domain.ManualCandidate)."""
        await self.coll.update_one({"_id": op_id}, {"$addToSet": {"unmatched_lines": ref}})

    async def delete_account(self, account_id: str) -> int:
        result = await self.coll.delete_many({"account_id": account_id})
        await self.sheets.delete_account(account_id)
        return result.deleted_count

    async def insert_one(self, doc: Doc) -> bool:
        try:
            await self.coll.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def page(
        self,
        user_id: str,
        account_id: str,
        *,
        months: Sequence[str] | None,
        date_from: dt.date | None,
        date_to: dt.date | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> Page:
        """One account's operations newest first (see `search`), without other filters."""
        return await self.search(
            user_id,
            [{"_id": account_id, "months": None if months is None else list(months)}],
            OperationQuery(),
            date_from=date_from,
            date_to=date_to,
            after=after,
            limit=limit,
        )

    async def search(
        self,
        user_id: str,
        accounts: Sequence[Doc],
        query: OperationQuery,
        *,
        date_from: dt.date | None,
        date_to: dt.date | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> Page:
        """Operations of these accounts (documents with `_id` and `months`) that `query` takes, newest
        first (date, then id: unique across accounts), `limit` of them after the cursor position.

        `months` is an account's list of months with operations (see AccountStore.add_months): the page
        is read a month at a time, newest first, until it is full, each read an index's range: the
        account and the month (`account_month`), or for several accounts the user and the month
        (`user_month`). The local engine pushes down only equalities, so `query` is applied here, to
        what a month's read returns, and a query that looks at the category or the payee reads that
        month's categorisation sheets too. A page's cost is the months it reads: a query that takes few
        operations reads every month of the window (`date_from`, `date_to`) once. An account from before
        months were kept (None) is read whole, as it was.
        """
        low = date_from.isoformat() if date_from is not None else None
        high = date_to.isoformat() if date_to is not None else None

        def wanted(doc: Doc, ids: set[str]) -> bool:
            date = str(doc["date"])
            if (low is not None and date < low) or (high is not None and date > high):
                return False
            if doc.get("account_id") not in ids or doc.get("user_id") != user_id:
                return False
            if after is not None and (date, str(doc["_id"])) >= after:
                return False
            return query.empty or query.takes_stored(searchable(doc))

        async def read(filter_: Doc, ids: set[str]) -> list[Doc]:
            docs = [doc for doc in await self.coll.find(filter_).to_list() if wanted(doc, ids)]
            if query.needs_categorization:
                docs = [doc for doc in await self.categorized(docs) if query.takes(searchable(doc))]
            return docs

        key = search_key(query.words)
        if key is not None:
            # the user's operations that have the longest wanted word's beginning, whatever their month
            # (index `user_words`): the cost is the matches, never the accounts' history
            found = await read({"user_id": user_id, "words": key}, {str(a["_id"]) for a in accounts})
            return await self._paged(found, limit, query)
        docs: list[Doc] = []
        for account in accounts:
            if account.get("months") is None:
                docs += await read({"account_id": account["_id"], "user_id": user_id}, {str(account["_id"])})
        by_month = [a for a in accounts if a.get("months") is not None]
        ids = {str(a["_id"]) for a in by_month}
        months = {m for a in by_month for m in a["months"]}
        ceilings = [x for x in (high, after[0] if after else None) if x is not None]
        top = min(ceilings)[:7] if ceilings else None
        bottom = low[:7] if low is not None else None
        for month in sorted(months, reverse=True):
            if (top is not None and month > top) or (bottom is not None and month < bottom):
                continue
            # every operation not read yet is older than the months read: enough of them, the page is full
            if sum(1 for doc in docs if str(doc["date"])[:7] > month) > limit:
                break
            if len(by_month) == 1:
                docs += await read(
                    {"account_id": by_month[0]["_id"], "user_id": user_id, "month": month}, ids
                )
            else:
                docs += await read({"user_id": user_id, "month": month}, ids)
        return await self._paged(docs, limit, query)

    async def _paged(self, docs: list[Doc], limit: int, query: OperationQuery) -> Page:
        """The newest `limit` of what a search took, with their categorisation, and where the next starts."""
        docs.sort(key=lambda doc: (str(doc["date"]), str(doc["_id"])), reverse=True)
        more = len(docs) > limit
        docs = docs[:limit]
        if not query.needs_categorization:
            docs = await self.categorized(docs)
        return Page(docs, (docs[-1]["date"], docs[-1]["_id"]) if more and docs else None)

    async def balances(self, user_id: str) -> dict[str, int]:
        """Sum of booked operations per account, in cents."""
        pipeline: list[Doc] = [
            {"$match": {"user_id": user_id, "status": "booked"}},
            {"$group": {"_id": "$account_id", "total": {"$sum": "$cents"}}},
        ]
        rows = await (await self.coll.aggregate(pipeline)).to_list()
        return {row["_id"]: int(row["total"]) for row in rows}

    async def booked_cents(self, account_id: str) -> int:
        """Sum in cents of the account's booked operations the bank backs: its bank lines, and manual
        operations reconciled with a bank line that is booked (one reconciled before `bank_status` was
        kept counts). One aggregation, read by account (an index)."""
        pipeline: list[Doc] = [
            {
                "$match": {
                    "account_id": account_id,
                    "status": "booked",
                    "$or": [{"source": "bank"}, {"reconciled": True, "bank_status": {"$ne": "pending"}}],
                }
            },
            {"$group": {"_id": None, "total": {"$sum": "$cents"}}},
        ]
        rows = await (await self.coll.aggregate(pipeline)).to_list()
        return int(rows[0]["total"]) if rows else 0

    async def count(self, account_id: str) -> int:
        return await self.coll.count_documents({"account_id": account_id})


# ---- operations as records: the Operations and CategorizationFiling ports ----------------------------------


def stored_operation(doc: Doc) -> StoredOperation:
    """An operation document (with its categorisation as the app shows it) as a record."""
    filed = doc.get("filed") or (
        sheet_id(str(doc.get("account_id")), str(doc["month"])) if doc.get("month") else None
    )
    return StoredOperation(
        operation=to_operation(doc),
        user_id=str(doc.get("user_id") or ""),
        aggregator_account_id=doc.get("aggregator_account_id"),
        reconciled_by=doc.get("reconciled_by"),
        edits=int(doc.get("edits") or 0),
        filed=filed,
    )


@dataclass(frozen=True)
class BankOperationFactory:
    """Operation documents of one aggregator account's lines."""

    origin: BankOrigin

    def new(self, line: Line) -> Doc:
        now = dt.datetime.now(dt.UTC)
        origin = self.origin
        return {
            "_id": line.op_id,
            "user_id": origin.user_id,
            "account_id": line.account_id,
            "akey": origin.akey,
            "aggregator_account_id": origin.aggregator_account_id,
            "currency": origin.currency,
            "source": "bank",
            "reconciled": False,
            "reconciled_by": None,
            **bank_fields(line),
            "filed": sheet_id(line.account_id, month_of(line.date)),
            **CATEGORIZATION_DEFAULTS,
            "src_rev": origin.rev,
            "created_at": now,
            "updated_at": now,
        }

    def update(self, line: Line, before: StoredOperation | None) -> UpdateOne:
        """The bank's side of an existing operation (its categorization and its sheet stay), fenced. One
        stored before sheets existed is filed where it was (`before`, as stored)."""
        changed = {
            **bank_fields(line),
            "account_id": line.account_id,
            "src_rev": self.origin.rev,
            "updated_at": dt.datetime.now(dt.UTC),
        }
        if before is not None and before.filed is not None:
            changed["filed"] = before.filed
        return UpdateOne(self.fenced(line.op_id), {"$set": changed})

    def fenced(self, op_id: str | None) -> Doc:
        """The operation, unless a revision of its account's state at or after this one wrote it (`src_rev`:
        the revision that last wrote a bank operation; one stored before it existed has none)."""
        return {"_id": op_id, "src_rev": {"$not": {"$gte": self.origin.rev}}}


def reconciled_fields(match: LineMatch, label: str) -> Doc:
    """What a manual operation is once the line `match` reconciles it (`label`: its own)."""
    return {
        "reconciled": True,
        "reconciled_by": match.ref,
        "aggregator_transaction_id": match.txid,
        "memo": match.memo,
        "words": search_keys(match.memo, label),
        # it backs the bank's balance once its line is booked (OperationStore.booked_cents)
        "bank_status": match.status,
    }


def released_fields(label: str) -> Doc:
    """What a manual operation is once no bank line reconciles it (`label`: its own)."""
    return {
        "reconciled": False,
        "reconciled_by": None,
        "aggregator_transaction_id": None,
        "memo": "",
        "words": search_keys(label),
        "bank_status": None,
    }


def manual_document(op: StoredOperation, now: dt.datetime) -> Doc:
    """The document of a manual operation the user adds."""
    shown = op.operation
    month = month_of(shown.date)
    return {
        "_id": shown.id,
        "user_id": op.user_id,
        "account_id": shown.account_id,
        "akey": None,
        "aggregator_account_id": None,
        "date": shown.date.isoformat(),
        "month": month,
        "amount": shown.amount,
        "cents": cents(Decimal(shown.amount)),
        "currency": shown.currency,
        "memo": "",
        "label": shown.label,
        "words": search_keys(shown.label),
        "status": "booked",
        "source": "manual",
        "reconciled": False,
        "reconciled_by": None,
        "aggregator_transaction_id": None,
        "filed": sheet_id(shown.account_id, month),
        **CATEGORIZATION_DEFAULTS,
        "created_at": now,
        "updated_at": now,
    }


def edit_fields(edit: ManualEdit) -> Doc:
    """What a change of a manual operation sets."""
    fields: Doc = {}
    if edit.date is not None:
        fields |= {"date": edit.date.isoformat(), "month": month_of(edit.date)}
    if edit.amount is not None:
        fields |= {"amount": format_amount(edit.amount), "cents": cents(edit.amount)}
    if edit.currency is not None:
        fields["currency"] = edit.currency
    if edit.label is not None:
        fields |= {"label": edit.label, "words": search_keys(edit.memo, edit.label)}
    fields["edits"] = edit.edits
    return fields


def months_document(account: Account) -> Doc:
    """How `OperationStore.search` takes an account: its id and its months (None: read it whole)."""
    return {"_id": account.id, "months": None if account.months is None else list(account.months)}


class MongoOperations:
    """The Operations port on the `operations` collection and its categorisation sheets."""

    def __init__(self, store: OperationStore) -> None:
        self.store = store

    async def shown(self, op_id: str) -> StoredOperation | None:
        doc = await self.store.get(op_id)
        return None if doc is None else stored_operation(doc)

    async def shown_many(self, ids: Iterable[str]) -> dict[str, StoredOperation]:
        return {op_id: stored_operation(doc) for op_id, doc in (await self.store.get_many(ids)).items()}

    async def manual_candidates(self, account_id: str, ids: Iterable[str]) -> dict[str, ManualCandidate]:
        docs = await self.store.stored_many(ids)  # the bank side only: no sheet to read
        return {
            op_id: ManualCandidate(
                op_id=op_id,
                date=dt.date.fromisoformat(doc["date"]),
                amount=Decimal(doc["amount"]),
                reconciled_by=doc.get("reconciled_by"),
                refused=frozenset(doc.get("unmatched_lines") or ()),
            )
            for op_id, doc in docs.items()
            if doc.get("source") == "manual" and doc.get("account_id") == account_id
        }

    async def insert_bank(self, origin: BankOrigin, lines: Sequence[Line]) -> None:
        factory = BankOperationFactory(origin)
        await self.store.insert_new([factory.new(line) for line in lines])

    async def write_bank(
        self,
        origin: BankOrigin,
        updated: Sequence[Line],
        before: Mapping[str, StoredOperation],
        deleted: Sequence[str],
    ) -> BankWrite:
        factory = BankOperationFactory(origin)
        touched = await self.store.write(
            [factory.update(line, before.get(line.op_id or "")) for line in updated]
            + [DeleteOne(factory.fenced(op_id)) for op_id in deleted]
        )
        if touched == len(updated) + len(deleted):
            return BankWrite()
        # some write was refused or found nothing (rare): which, and why, from what is stored now
        wanted = {line.op_id: bank_fields(line) for line in updated if line.op_id}
        found = await self.store.stored_many([*wanted, *deleted])

        def kept_by_another(op_id: str) -> bool:
            doc = found[op_id]
            rev = int(doc.get("src_rev") or 0)
            # the same revision is another writer's decision on the same state, unless it wrote the same
            return rev > origin.rev or (
                rev == origin.rev and any(doc.get(k) != v for k, v in wanted[op_id].items())
            )

        return BankWrite(
            superseded=tuple(
                [op_id for op_id in wanted if op_id in found and kept_by_another(op_id)]
                + [op_id for op_id in deleted if op_id in found]
            ),
            missing=tuple(op_id for op_id in wanted if op_id not in found),
        )

    async def reconcile(self, manual_id: str, match: LineMatch, label: str) -> bool:
        fields = {**reconciled_fields(match, label), "updated_at": dt.datetime.now(dt.UTC)}
        guard = {"reconciled_by": {"$in": [None, match.ref]}}
        return await self.store.guarded_update(manual_id, guard, {"$set": fields})

    async def rereconcile(self, manual_id: str, match: LineMatch, label: str) -> None:
        fields = {**reconciled_fields(match, label), "updated_at": dt.datetime.now(dt.UTC)}
        await self.store.guarded_update(manual_id, {}, {"$set": fields})

    async def release(self, manual_id: str, ref: str, label: str) -> bool:
        fields = {**released_fields(label), "updated_at": dt.datetime.now(dt.UTC)}
        return await self.store.guarded_update(manual_id, {"reconciled_by": ref}, {"$set": fields})

    async def refuse_line(self, op_id: str, ref: str) -> None:
        await self.store.refuse_line(op_id, ref)

    async def insert_manual(self, op: StoredOperation) -> bool:
        return await self.store.insert_one(manual_document(op, dt.datetime.now(dt.UTC)))

    async def edit_manual(self, op_id: str, edit: ManualEdit, *, unreconciled: bool) -> bool:
        fields = {**edit_fields(edit), "updated_at": dt.datetime.now(dt.UTC)}
        return await self.store.edit_manual(op_id, fields, unreconciled=unreconciled)

    async def delete_manual(self, op_id: str) -> bool:
        return await self.store.delete_manual(op_id)

    async def delete_account(self, account_id: str) -> int:
        return await self.store.delete_account(account_id)

    async def search(
        self,
        user_id: str,
        accounts: Sequence[Account],
        query: OperationQuery,
        *,
        date_from: dt.date | None,
        date_to: dt.date | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> OperationPage:
        page = await self.store.search(
            user_id,
            [months_document(account) for account in accounts],
            query,
            date_from=date_from,
            date_to=date_to,
            after=after,
            limit=limit,
        )
        return OperationPage([to_operation(doc) for doc in page.items], page.next_after)

    async def balances(self, user_id: str) -> dict[str, int]:
        return await self.store.balances(user_id)

    async def booked_cents(self, account_id: str) -> int:
        return await self.store.booked_cents(account_id)


def categorization_fields(item: OperationCategorized) -> Doc:
    """What one `operation.categorized` sets on its operation (besides when)."""
    categorized_by = (
        {
            "source": item.source,
            "payee_id": item.payee.id if item.payee else None,
            "keyword": item.keyword,
        }
        if item.source is not None
        else None
    )
    return {
        "payee": item.payee.model_dump() if item.payee else None,
        "category": item.category,
        "categorized_by": categorized_by,
        "cat_src": item.source,
        "cat_rv": item.rules_version,
        "cat_cv": item.choice_version,
        "transfer": item.transfer.model_dump() if item.transfer else None,
    }


def sheet_additions(
    items: Sequence[OperationCategorized], filed: Mapping[str, str], at: dt.datetime
) -> list[SheetAddition]:
    """The entries each sheet gets (an operation without a sheet gets none)."""
    additions = Additions()
    for item in items:
        sid = filed.get(item.operation_id)
        if sid is None:
            continue
        entries = additions.entries(sid, item.user_id, sid.rsplit(":", 1)[0])
        entries[item.operation_id] = {**categorization_fields(item), "categorized_at": at}
    return additions.all()


class MongoCategorizations:
    """The CategorizationFiling port on the `categorizations` sheets (see `CategorizationSheets`)."""

    def __init__(self, store: OperationStore) -> None:
        self.store = store

    async def filed_in(self, user_id: str, account_id: str, op_ids: Sequence[str]) -> dict[str, str]:
        stored = await self.store.stored_many(op_ids, {"user_id": user_id, "account_id": account_id})
        return {op_id: filed_under(doc) for op_id, doc in stored.items()}

    async def file(
        self, items: Sequence[OperationCategorized], sheets: Mapping[str, str], at: dt.datetime
    ) -> int:
        additions = sheet_additions(items, sheets, at)
        await self.store.sheets.append(additions)
        return sum(len(addition.entries) for addition in additions)


# ---- accounts, banks, links ----------------------------------------------------------------------------

# what an account keeps of its balance checks (`bank_balance`, also set from what the connector says of
# the account before any check, stays when a deletion clears these)
BALANCE_CHECK_FIELDS = (
    "bank_coming",
    "bank_balance_at",
    "opening_cents",
    "computed_balance",
    "balance_gap",
    "balance_alarm",
    "balance_checked_at",
    "balance_sync_run_id",
    "balance_rev",
    "balance_lines_rev",
)


def _utc(value: object) -> dt.datetime | None:
    return value.astimezone(dt.UTC) if isinstance(value, dt.datetime) else None


def account_of(doc: Doc) -> Account:
    """An account document as a record."""
    opening, lines_rev = doc.get("opening_cents"), doc.get("balance_lines_rev")
    months = doc.get("months")
    manual: dict[str, Doc] = doc.get("manual") or {}
    return Account(
        id=str(doc["_id"]),
        user_id=str(doc.get("user_id") or ""),
        name=str(doc.get("name") or ""),
        currency=str(doc.get("currency") or "EUR"),
        bank_id=doc.get("bank_id"),
        iban=doc.get("iban"),
        aggregator_account_id=doc.get("aggregator_account_id"),
        deleted=bool(doc.get("deleted")),
        generation=int(doc.get("generation") or 1),
        announced=int(doc.get("announced") or 0),
        manual={op_id: Decimal(str(entry["amount"])) for op_id, entry in manual.items()},
        months=None if months is None else tuple(months),
        sources=tuple(doc.get("sources") or ()),
        balance=AccountBalance(
            bank_balance=doc.get("bank_balance"),
            bank_coming=doc.get("bank_coming"),
            bank_balance_at=_utc(doc.get("bank_balance_at")),
            checked_at=_utc(doc.get("balance_checked_at")),
            computed_balance=doc.get("computed_balance"),
            balance_gap=doc.get("balance_gap"),
            opening_cents=int(opening) if opening is not None else None,
            sync_run_id=doc.get("balance_sync_run_id"),
            rev=int(doc.get("balance_rev") or 0),
            lines_rev=int(lines_rev) if lines_rev is not None else None,
            alarm=bool(doc.get("balance_alarm")),
        ),
    )


def account_document(account: Account, now: dt.datetime) -> Doc:
    """The document of a new account (the importer's for a bank account, or one the user creates)."""
    return {
        "_id": account.id,
        "user_id": account.user_id,
        "bank_id": account.bank_id,
        "name": account.name,
        "iban": account.iban,
        "bank_balance": account.balance.bank_balance,
        "currency": account.currency,
        "aggregator_account_id": account.aggregator_account_id,
        "deleted": False,
        "generation": account.generation,
        "announced": account.announced,
        "manual": {},
        "months": [],
        "sources": list(account.sources),
        "created_at": now,
    }


def balance_fields(
    state: BalanceState, latest: BankBalance, check: BalanceCheck | None, at: dt.datetime
) -> Doc:
    """What an account stores after balance reports: the bank's figures of the latest one, and the check
    of it (`check`; None when the account is not checked: `computed_balance` and `balance_gap` are then
    null). `state` is the account's after them."""
    assert latest.balance_cents is not None
    coming = latest.coming_cents
    fields: Doc = {
        "bank_balance": format_amount(amount_of(latest.balance_cents)),
        "bank_coming": format_amount(amount_of(coming)) if coming is not None else None,
        "bank_balance_at": latest.at,
        "balance_sync_run_id": latest.sync,
        "balance_rev": state.rev,
        "balance_alarm": state.alarm,
        "computed_balance": None,
        "balance_gap": None,
        "balance_checked_at": None,
    }
    if state.opening_cents is not None:
        fields["opening_cents"] = state.opening_cents
    if check is not None:
        fields["computed_balance"] = format_amount(amount_of(check.computed_cents))
        fields["balance_gap"] = format_amount(amount_of(check.gap_cents))
        fields["balance_checked_at"] = at
    return fields


def details_document(details: BankAccountDetails, now: dt.datetime) -> Doc:
    return {
        "user_id": details.user_id,
        "aggregator_account_id": details.aggregator_account_id,
        "bank": details.bank.model_dump(),
        "name": details.name,
        "iban": details.iban,
        "balance": details.balance,
        "currency": details.currency,
        "type": details.type,
        "updated_at": now,
    }


def details_of_document(akey: str, doc: Doc) -> BankAccountDetails:
    bank = doc.get("bank") or {}
    return BankAccountDetails(
        akey=akey,
        user_id=str(doc.get("user_id") or ""),
        aggregator_account_id=str(doc.get("aggregator_account_id") or ""),
        bank=Bank(id=str(bank.get("id") or ""), name=str(bank.get("name") or "")),
        name=doc.get("name"),
        iban=doc.get("iban"),
        balance=doc.get("balance"),
        currency=doc.get("currency"),
        type=doc.get("type"),
    )


def link_of(doc: Doc) -> Link:
    return Link(
        akey=str(doc["_id"]),
        user_id=doc["user_id"],
        aggregator_account_id=doc["aggregator_account_id"],
        target_account_id=doc.get("target_account_id"),
        import_mode=ImportMode(doc.get("import_mode", "create")),
        updated_at=doc.get("updated_at"),
    )


class AccountStore:
    """The Accounts port: `accounts`, `banks`, `links` and `aggregator_accounts`."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.accounts: AsyncCollection[Doc] = db["accounts"]
        self.banks: AsyncCollection[Doc] = db["banks"]
        self.links: AsyncCollection[Doc] = db["links"]
        # what the connector said of each aggregator account (name, IBAN, balance), by `<user>:<account>`
        self.details: AsyncCollection[Doc] = db["aggregator_accounts"]

    async def create_indexes(self) -> None:
        await self.accounts.create_index([("user_id", ASCENDING)], name="by_user")
        await self.banks.create_index([("user_id", ASCENDING)], name="by_user")
        await self.links.create_index([("user_id", ASCENDING)], name="by_user")
        # what the bank says of each aggregator account (an erasure finds them by user)
        await self.details.create_index([("user_id", ASCENDING)], name="by_user")
        # the accounts whose latest balance check found a gap (the gauge counts them)
        await self.accounts.create_index([("balance_alarm", ASCENDING)], name="by_balance_alarm")

    # accounts

    async def get(self, account_id: str) -> Account | None:
        doc = await self.accounts.find_one({"_id": account_id})
        return None if doc is None else account_of(doc)

    async def list_accounts(self, user_id: str) -> list[Account]:
        cursor = self.accounts.find({"user_id": user_id, "deleted": False}).sort("_id", ASCENDING)
        return [account_of(doc) for doc in await cursor.to_list()]

    async def insert(self, account: Account) -> Account:
        """Creates the account, or returns the one a concurrent writer created with this id."""
        doc = account_document(account, dt.datetime.now(dt.UTC))
        try:
            await self.accounts.insert_one(doc)
        except DuplicateKeyError:
            existing = await self.get(account.id)
            assert existing is not None
            return existing
        return account_of(doc)

    async def revive(self, account: Account) -> Account:
        """A deleted account that a sync or a replay fills again comes back as its next generation,
        without an opening balance: its re-import is a first sync again."""
        generation = account.generation
        await self.accounts.update_one(
            {"_id": account.id, "deleted": True, "generation": generation},
            {
                "$set": {
                    "deleted": False,
                    "generation": generation + 1,
                    "revived_at": dt.datetime.now(dt.UTC),
                },
                "$unset": dict.fromkeys(BALANCE_CHECK_FIELDS, ""),
            },
        )
        fresh = await self.get(account.id)
        assert fresh is not None
        return fresh

    async def mark_deleted(self, account_id: str) -> bool:
        """Its operations go too: the account starts again with no months and no balance checks."""
        result = await self.accounts.update_one(
            {"_id": account_id, "deleted": False},
            {
                "$set": {"deleted": True, "deleted_at": dt.datetime.now(dt.UTC), "manual": {}, "months": []},
                "$unset": dict.fromkeys(BALANCE_CHECK_FIELDS, ""),
            },
        )
        return result.modified_count == 1

    async def store_balance(self, account: Account, rev: int, stored: BalanceStored) -> bool:
        """Stores a balance check: compare-and-set on the account's generation and check revision
        (`rev`, 0 when it has none); False when another writer stored one first."""
        fields = balance_fields(stored.state, stored.latest, stored.check, stored.at)
        fields["balance_lines_rev"] = stored.lines_rev
        guard: Doc = {"_id": account.id, "generation": account.generation}
        guard["balance_rev"] = rev if rev else {"$exists": False}
        result = await self.accounts.update_one(guard, {"$set": fields})
        return result.matched_count == 1

    async def count_balance_gaps(self) -> int:
        """Accounts whose latest balance check found a gap (an index: there are few)."""
        return await self.accounts.count_documents({"balance_alarm": True})

    async def add_months(self, account_id: str, months: Iterable[str]) -> None:
        """Lists months the account now has operations in, before those operations are written (a
        month listed with none costs a page one empty read; a month missing would hide operations).
        An account from before months were kept (no `months`) gets none: its pages read it whole."""
        await self.accounts.update_one(
            {"_id": account_id, "months": {"$exists": True}},
            {"$addToSet": {"months": {"$each": sorted(set(months))}}},
        )

    async def mark_announced(self, account_id: str, generation: int) -> None:
        await self.accounts.update_one({"_id": account_id}, {"$set": {"announced": generation}})

    async def add_sources(self, account_id: str, akeys: Iterable[str]) -> None:
        for akey in akeys:
            await self.accounts.update_one({"_id": account_id}, {"$addToSet": {"sources": akey}})

    async def add_manual(self, account_id: str, op_id: str, date: dt.date, amount: Decimal) -> None:
        await self.accounts.update_one(
            {"_id": account_id},
            {"$set": {f"manual.{op_id}": {"date": date.isoformat(), "amount": str(amount)}}},
        )

    async def remove_manual(self, account_id: str, op_id: str) -> None:
        await self.accounts.update_one({"_id": account_id}, {"$unset": {f"manual.{op_id}": ""}})

    async def rename(self, account_id: str, naming: AccountNaming) -> None:
        fields = {
            k: v
            for k, v in (("name", naming.name), ("iban", naming.iban), ("bank_balance", naming.bank_balance))
            if v is not None
        }
        if fields:
            await self.accounts.update_one({"_id": account_id}, {"$set": fields})

    async def put_details(self, details: BankAccountDetails) -> None:
        doc = details_document(details, dt.datetime.now(dt.UTC))
        await self.details.replace_one({"_id": details.akey}, doc, upsert=True)

    async def get_details(self, akey: str) -> BankAccountDetails | None:
        doc = await self.details.find_one({"_id": akey})
        return None if doc is None else details_of_document(akey, doc)

    # banks

    async def ensure_bank(self, user_id: str, bank_id: str, name: str) -> None:
        bank_key = f"{user_id}:{bank_id}"
        if await self.banks.find_one({"_id": bank_key}) is None:
            with contextlib.suppress(DuplicateKeyError):
                await self.banks.insert_one(
                    {"_id": bank_key, "user_id": user_id, "id": bank_id, "name": name}
                )

    async def list_banks(self, user_id: str) -> list[Bank]:
        docs = await self.banks.find({"user_id": user_id}).sort("_id", ASCENDING).to_list()
        return [Bank(id=doc["id"], name=doc["name"]) for doc in docs]

    # links

    async def get_link(self, akey: str) -> Link | None:
        doc = await self.links.find_one({"_id": akey})
        return None if doc is None else link_of(doc)

    async def put_link(self, link: Link) -> None:
        await self.links.replace_one(
            {"_id": link.akey},
            {
                "user_id": link.user_id,
                "aggregator_account_id": link.aggregator_account_id,
                "target_account_id": link.target_account_id,
                "import_mode": link.import_mode.value,
                "updated_at": link.updated_at,
            },
            upsert=True,
        )

    async def list_links(self, user_id: str) -> list[Link]:
        docs = await self.links.find({"user_id": user_id}).sort("_id", ASCENDING).to_list()
        return [link_of(doc) for doc in docs]


# ---- erasure ------------------------------------------------------------------------------------------


class ImporterEraser:
    """Erasing a user from the importer's collections (see shared.erasure).

    Every collection is reached through an index: by `user_id` where the documents carry it, else by the
    ids the indexed ones name, one at a time (an account's sheets by account id, an aggregator account's
    state by its key): FerretDB answers an `$in` with a scan of the whole collection.
    """

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
