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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING, DeleteOne, InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.importer.domain import (
    AccountLines,
    BalanceCheck,
    BalanceState,
    BankBalance,
    ImportMode,
    Line,
    OperationQuery,
    Searchable,
    amount_of,
    categorization_rank,
)
from shared.bulk import bulk_write_chunked
from shared.contract.payloads import Operation
from shared.money import format_amount
from shared.mongo import DUPLICATE_KEY, find_by_ids
from shared.sheets import Sheets, month_of
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


@dataclass
class StoredState:
    akey: str
    user_id: str = ""
    rev: int = 0
    lines: dict[str, Line] = field(default_factory=dict)
    accounts: set[str] = field(default_factory=set)

    def account_lines(self) -> AccountLines:
        return AccountLines(dict(self.lines))


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


def cents(amount: Decimal) -> int:
    return int(amount * 100)


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


def sheet_id(account_id: str, month: str) -> str:
    return f"{account_id}:{month}"


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
        """In order, in small commands (shared.bulk); returns how many documents matched."""
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


def balance_state_of(doc: Doc) -> BalanceState:
    at = doc.get("bank_balance_at")
    opening = doc.get("opening_cents")
    return BalanceState(
        rev=int(doc.get("balance_rev") or 0),
        opening_cents=int(opening) if opening is not None else None,
        at=at.astimezone(dt.UTC) if isinstance(at, dt.datetime) else None,
        alarm=bool(doc.get("balance_alarm")),
    )


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


@dataclass(frozen=True)
class Link:
    akey: str
    user_id: str
    aggregator_account_id: str
    target_account_id: str | None
    import_mode: ImportMode
    updated_at: dt.datetime | None = None


class AccountStore:
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

    async def get(self, account_id: str) -> Doc | None:
        return await self.accounts.find_one({"_id": account_id})

    async def list_accounts(self, user_id: str) -> list[Doc]:
        cursor = self.accounts.find({"user_id": user_id, "deleted": False}).sort("_id", ASCENDING)
        return await cursor.to_list()

    async def insert(self, doc: Doc) -> Doc:
        """Creates the account, or returns the one a concurrent writer created with this id."""
        try:
            await self.accounts.insert_one(doc)
        except DuplicateKeyError:
            existing = await self.get(doc["_id"])
            assert existing is not None
            return existing
        return doc

    async def revive(self, doc: Doc) -> Doc:
        """A deleted account that a sync or a replay fills again comes back as its next generation,
        without an opening balance: its re-import is a first sync again."""
        generation = int(doc["generation"])
        await self.accounts.update_one(
            {"_id": doc["_id"], "deleted": True, "generation": generation},
            {
                "$set": {
                    "deleted": False,
                    "generation": generation + 1,
                    "revived_at": dt.datetime.now(dt.UTC),
                },
                "$unset": dict.fromkeys(BALANCE_CHECK_FIELDS, ""),
            },
        )
        fresh = await self.get(doc["_id"])
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

    async def store_balance(self, doc: Doc, rev: int, fields: Doc) -> bool:
        """Stores a balance check: compare-and-set on the account's generation and check revision
        (`rev`, 0 when it has none); False when another writer stored one first."""
        guard: Doc = {"_id": doc["_id"], "generation": int(doc["generation"])}
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

    async def set_fields(self, account_id: str, fields: Doc) -> None:
        await self.accounts.update_one({"_id": account_id}, {"$set": fields})

    async def put_details(self, akey: str, details: Doc) -> None:
        await self.details.replace_one({"_id": akey}, details, upsert=True)

    async def get_details(self, akey: str) -> Doc | None:
        return await self.details.find_one({"_id": akey})

    # banks

    async def ensure_bank(self, user_id: str, bank_id: str, name: str) -> None:
        bank_key = f"{user_id}:{bank_id}"
        if await self.banks.find_one({"_id": bank_key}) is None:
            with contextlib.suppress(DuplicateKeyError):
                await self.banks.insert_one(
                    {"_id": bank_key, "user_id": user_id, "id": bank_id, "name": name}
                )

    async def list_banks(self, user_id: str) -> list[Doc]:
        return await self.banks.find({"user_id": user_id}).sort("_id", ASCENDING).to_list()

    # links

    async def get_link(self, akey: str) -> Link | None:
        doc = await self.links.find_one({"_id": akey})
        if doc is None:
            return None
        return Link(
            akey=akey,
            user_id=doc["user_id"],
            aggregator_account_id=doc["aggregator_account_id"],
            target_account_id=doc.get("target_account_id"),
            import_mode=ImportMode(doc.get("import_mode", "create")),
            updated_at=doc.get("updated_at"),
        )

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

    async def list_links(self, user_id: str) -> list[Doc]:
        return await self.links.find({"user_id": user_id}).sort("_id", ASCENDING).to_list()
