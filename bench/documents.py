"""Realistic documents of the importer's and the categorizer's collections, built without the pipeline.

What a user's first sync leaves behind, shaped as the services write it (checked against
`services.importer.adapters.mongo.BankOperationFactory`, `categorization_fields` and
`services.categorizer.adapters.mongo.seen_entry`): one `operations` document per bank line (about 500 bytes of
BSON, with the categorisation the built-in dictionary gives it, as stored by the importer's write-back),
the categorizer's projection of the same operations (`categorizer_sheets`, month sheets), and the app
accounts.
Used to fill a store fast (`insert_many`, ~14,000 documents/s on the local engine against ~300/s for an
upsert of a new document) where a benchmark needs one that already holds many users.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from services.categorizer.adapters.mongo import OperationsRepository, projection_sheet, seen_entry
from services.categorizer.domain.dictionary import builtin_dictionary
from services.categorizer.domain.matching import EMPTY_MATCHER, Categorization, categorize_memo, memo_text
from services.categorizer.domain.normalise import analyse
from services.categorizer.ports import Seen
from services.importer.adapters.mongo import AccountStore, OperationStore
from services.importer.domain.identities import auto_account_id, operation_id
from shared.contract.envelope import account_key
from shared.mongo import make_client
from shared.periods import month_of
from shared.sheets import packed

Doc = dict[str, Any]
# (memo shape, merchant, amount range in cents): {m} the merchant, {d} dd/mm, {D} ddmmyy
SPENDING = (
    ("CARTE X4974 {d} {m}", "CARREFOUR MARKET", (800, 14_000)),
    ("CARTE X4974 {d} {m}", "BOULANGERIE PAUL", (120, 1_800)),
    ("CB {m} {d}", "MONOPRIX", (500, 9_000)),
    ("CB {m} {d}", "TOTALENERGIES", (3_000, 9_500)),
    ("FACTURE CARTE DU {D} {m} CARTE 4974XXXXXXXX1234", "AMAZON EU SARL", (900, 12_000)),
    ("FACTURE CARTE DU {D} {m} CARTE 4974XXXXXXXX1234", "SNCF CONNECT", (1_500, 18_000)),
    ("PRLV SEPA {m} ECH/{D} ID EMETTEUR/FR19ZZZ000002 MDT/A1B2C3", "EDF CLIENTS", (4_000, 16_000)),
    ("PRLV SEPA {m} ECH/{D} ID EMETTEUR/FR11ZZZ123456 MDT/F9E8D7", "FREE MOBILE", (1_999, 1_999)),
    ("CB {m} {d}", "PHARMACIE DU CENTRE", (400, 4_500)),
    ("CARTE X4974 {d} {m}", "LE PETIT ZINC", (1_200, 6_500)),
    ("CARTE X4974 {d} {m}", "CHEZ GEGENE", (900, 4_000)),
    ("RETRAIT DAB {d} {m}", "PARIS 11", (2_000, 10_000)),
)


@dataclass(frozen=True)
class PastOperation:
    """One bank line of a user's history, and the dictionary's categorisation of it."""

    user_id: str
    aggregator_account_id: str
    txid: str
    day: date
    cents: int
    memo: str
    label: str
    result: Categorization

    @property
    def akey(self) -> str:
        return account_key(self.user_id, self.aggregator_account_id)

    @property
    def account_id(self) -> str:
        return auto_account_id(self.akey)

    @property
    def op_id(self) -> str:
        return operation_id(self.akey, self.txid)


@cache
def dictionary_result(memo: str, label: str) -> Categorization:
    """What the built-in dictionary (no user payee) says of a memo; cached by shape (see `history`)."""
    return categorize_memo(analyse(memo_text(memo, label)), EMPTY_MATCHER, builtin_dictionary())


def history(
    user_id: str,
    aggregator_account_ids: Sequence[str],
    per_account: int,
    seed: int,
    merchants: Callable[[random.Random], tuple[str, str, tuple[int, int]]] | None = None,
    end: date = date(2026, 11, 20),
) -> Iterator[PastOperation]:
    """`per_account` lines per account over 13 months; `merchants` picks (shape, merchant, range)."""
    rng = random.Random(seed)
    pick = merchants or (lambda r: r.choice(SPENDING))
    for account in aggregator_account_ids:
        for i in range(per_account):
            day = end - timedelta(days=395 - i * 395 // per_account)
            shape, merchant, (low, high) = pick(rng)
            memo = shape.format(m=merchant, d=f"{day:%d/%m}", D=f"{day:%d%m%y}")
            # the result depends on the merchant, not on the date: computed once per shape and merchant
            result = dictionary_result(shape.format(m=merchant, d="01/01", D="010126"), merchant)
            cents = -rng.randint(low, high)
            yield PastOperation(user_id, account, f"{seed}-{account}-{i}", day, cents, memo, merchant, result)


def importer_operation(op: PastOperation, at: datetime) -> Doc:
    """The importer's `operations` document once its first categorisation is stored (rules version 0)."""
    amount = Decimal(op.cents) / 100
    result = op.result
    return {
        "_id": op.op_id,
        "user_id": op.user_id,
        "account_id": op.account_id,
        "akey": op.akey,
        "aggregator_account_id": op.aggregator_account_id,
        "currency": "EUR",
        "source": "bank",
        "reconciled": False,
        "reconciled_by": None,
        "date": op.day.isoformat(),
        "month": month_of(op.day),
        "amount": str(amount),
        "cents": op.cents,
        "memo": op.memo,
        "label": op.label,
        "status": "booked",
        "aggregator_transaction_id": op.txid,
        "payee": {"id": result.payee_id, "name": result.payee_name or ""} if result.payee_id else None,
        "category": result.category,
        "categorized_by": (
            {"source": result.source, "payee_id": result.payee_id, "keyword": result.keyword}
            if result.source is not None
            else None
        ),
        "cat_src": result.source,
        "cat_rv": 0,
        "created_at": at,
        "updated_at": at,
        "categorized_at": at,
    }


def projection_sheets(past: Iterable[PastOperation], at: datetime) -> Iterator[Doc]:
    """The categorizer's `categorizer_sheets` documents of these operations (seen at version 0): one
    per user, account and month, as one batch would add them (shared.sheets.Sheets.append)."""
    sheets: dict[str, Doc] = {}
    for op in past:
        sid = projection_sheet(op.user_id, op.account_id, month_of(op.day))
        sheet = sheets.get(sid)
        if sheet is None:
            sheet = sheets[sid] = {
                "_id": f"{sid}:{uuid.uuid4().hex}",
                "sheet": sid,
                "user_id": op.user_id,
                "account_id": op.account_id,
                "ops": {},
            }
        seen = Seen(op.user_id, op.op_id, op.account_id, op.memo, op.label, 0, op.result)
        sheet["ops"][op.op_id] = seen_entry(seen, at)
    return ({**sheet, "ops": packed(sheet["ops"])} for sheet in sheets.values())


def app_account(user_id: str, aggregator_account_id: str, at: datetime) -> Doc:
    """The importer's `accounts` document of an aggregator account imported in `create` mode."""
    akey = account_key(user_id, aggregator_account_id)
    return {
        "_id": auto_account_id(akey),
        "user_id": user_id,
        "bank_id": "bnp",
        "name": f"BNP Paribas {aggregator_account_id}",
        "iban": None,
        "bank_balance": None,
        "currency": "EUR",
        "aggregator_account_id": aggregator_account_id,
        "deleted": False,
        "generation": 1,
        "announced": 1,
        "manual": {},
        "sources": [akey],
        "created_at": at,
    }


async def insert_all(
    coll: AsyncCollection[Doc], docs: Iterator[Doc], batch: int = 2_000
) -> tuple[int, float]:
    """insert_many in batches of `batch` (ordered=False); returns (documents, seconds)."""
    started = time.perf_counter()
    count = 0
    chunk: list[Doc] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) >= batch:
            await coll.insert_many(chunk, ordered=False)
            count += len(chunk)
            chunk = []
            await asyncio.sleep(0)
    if chunk:
        await coll.insert_many(chunk, ordered=False)
        count += len(chunk)
    return count, time.perf_counter() - started


def now() -> datetime:
    return datetime.now(UTC)


async def seed_stores(
    mongodb_url: str, database: str, rounds: Iterable[list[PastOperation]]
) -> dict[str, Any]:
    """Past operations (and their app accounts) straight into the importer's (`<database>_imp`) and the
    categorizer's (`<database>_cat`) stores, as a pipeline_stack(database) names them, BEFORE its
    services start: `insert_many` into collections without secondary indexes, then the services' own
    `create_indexes` (the engine builds each index, and its GIN twin, once over the data instead of
    maintaining it document by document; the services find them there when they start)."""
    client = make_client(mongodb_url)
    importer, categorizer = client[f"{database}_imp"], client[f"{database}_cat"]
    at = now()
    totals = {"operations": 0, "projection": 0, "sheets": 0, "accounts": 0}
    accounts_seen: set[tuple[str, str]] = set()
    try:
        started = time.perf_counter()
        for past in rounds:
            accounts = {(op.user_id, op.aggregator_account_id) for op in past} - accounts_seen
            accounts_seen |= accounts
            (ops, _), (sheets, _), (made, _) = await asyncio.gather(
                insert_all(importer["operations"], (importer_operation(op, at) for op in past)),
                insert_all(categorizer["categorizer_sheets"], projection_sheets(past, at)),
                insert_all(importer["accounts"], (app_account(u, a, at) for u, a in sorted(accounts))),
            )
            totals["operations"] += ops
            totals["projection"] += len(past)
            totals["sheets"] += sheets
            totals["accounts"] += made
        inserted_s = time.perf_counter() - started
        await OperationStore(importer).create_indexes()
        await AccountStore(importer).create_indexes()
        await OperationsRepository(categorizer).create_indexes()
        indexed_s = time.perf_counter() - started - inserted_s
    finally:
        await client.close()
    return {
        "seeded_with": "insert_many straight into the importer's operations and accounts and the "
        "categorizer's projection before the services start (bench.documents: the services' document "
        "shapes, dictionary categories at rules version 0), then the services' create_indexes; the "
        "connector's collections and the categorizer's rule sets are not seeded",
        "seeded_importer_operations": totals["operations"],
        "seeded_importer_accounts": totals["accounts"],
        "seeded_categorizer_operations": totals["projection"],
        "seeded_categorizer_sheet_documents": totals["sheets"],
        "seed_insert_s": round(inserted_s, 1),
        "seed_insert_docs_per_s": round(
            (totals["operations"] + totals["sheets"] + totals["accounts"]) / max(inserted_s, 1e-3), 1
        ),
        "seed_create_indexes_s": round(indexed_s, 1),
    }


async def drop_stack_databases(mongodb_url: str, database: str) -> None:
    """The databases of pipeline_stack(database)."""
    client = make_client(mongodb_url)
    try:
        for suffix in ("imp", "cat", "conn", "ent"):
            await client.drop_database(f"{database}_{suffix}")
    finally:
        await client.close()
