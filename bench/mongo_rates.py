"""MongoDB-wire limits: bulk writes of bank operations into a collection with a unique compound index.

FerretDB v1.24 with SQLite (the local engine) behaves very differently from MongoDB here, measured:
- it pushes no filter down to SQLite except `{"_id": <string or ObjectId>}` alone (and that lookup too
  grows with the collection, measured): every `UpdateOne(filter, ..., upsert=True)` reads the whole
  collection, so an upsert costs time proportional to the documents already stored and a bulk
  upsert of n documents costs O(n²). The rate depends on the collection size: `n` is part of the figure,
  and `us_per_op_per_stored_doc` gives the per-document scan cost to extrapolate from.
- an `update` command with more than 100 statements that match existing documents never completes
  (each match holds one of its 100 pooled SQLite connections until the command ends) and wedges that
  database until FerretDB restarts: the re-upsert pass sends at most REUPSERT_BATCH_FERRETDB per command.
- `insert_many` goes through the unique index and stays fast, duplicates included (`mongo_insert_many`,
  `mongo_reinsert_many`): the "insert, and a duplicate key means already there" path.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from bench.registry import Context, Measurement, benchmark
from shared.events import account_key, content_hash
from shared.mongo import is_duplicate_key_error, make_client

DATABASE = "banksync_bench"
UPSERT_BATCH = 500
REUPSERT_BATCH_FERRETDB = 50  # > 100 matching statements in one command wedge FerretDB v1.24 (see above)
INSERT_BATCH = 1_000
USERS = 500
ACCOUNTS_PER_USER = 2
UNIQUE_KEY = ("account_key", "aggregator_transaction_id")
LABELS = (
    ("CB CARREFOUR MARKET", "Carrefour Market", "alimentation"),
    ("PRLV SEPA SNCF VOYAGEURS", "SNCF", "transport"),
    ("PRLV SEPA EDF CLIENTS PARTICULIERS", "EDF", "energie/electricite"),
    ("PRLV SEPA FREE MOBILE", "Free Mobile", "telecom"),
    ("CB PHARMACIE DU CENTRE", "Pharmacie du Centre", "sante"),
    ("PRLV SEPA DGFIP IMPOT", "DGFiP", "impots"),
)

Doc = dict[str, Any]
Coll = AsyncCollection[Doc]
Client = AsyncMongoClient[Doc]


def operation(i: int) -> Doc:
    """A bank operation as the importer stores it (15 fields and `_id`), the same for the same i."""
    user, account = f"user-{i % USERS:04d}", f"acct-{(i // USERS) % ACCOUNTS_PER_USER}"
    day = date(2025, 1, 1) + timedelta(days=i % 365)
    memo, label, category = LABELS[i % len(LABELS)]
    cents = -((i * 7919) % 25_000 + 100)
    doc: Doc = {
        "account_key": account_key(user, account),
        "aggregator_transaction_id": f"tx-{i:09d}",
        "user_id": user,
        "account_id": account,
        "date": day.isoformat(),
        "value_date": (day + timedelta(days=1)).isoformat(),
        "amount": f"{cents / 100:.2f}",
        "currency": "EUR",
        "memo": f"{memo} {day:%d/%m} {i % 10_000:04d}",
        "label": label,
        "status": "booked",
        "source": "bank",
        "reconciled": False,
        "category": category,
        "imported_at": datetime(2025, 6, 1, tzinfo=UTC) + timedelta(seconds=i),
    }
    doc["content_hash"] = content_hash({k: v for k, v in doc.items() if k != "imported_at"})
    return doc


def upserts(n: int, batch: int) -> list[list[UpdateOne]]:
    ops = [
        UpdateOne({k: d[k] for k in UNIQUE_KEY}, {"$set": d}, upsert=True) for d in map(operation, range(n))
    ]
    return [ops[i : i + batch] for i in range(0, n, batch)]


def documents(n: int, batch: int) -> list[list[Doc]]:
    docs = [operation(i) for i in range(n)]
    return [docs[i : i + batch] for i in range(0, n, batch)]


async def is_ferretdb(client: Client) -> bool:
    build: dict[str, Any] = await client.admin.command("buildInfo")
    return "ferretdbVersion" in build


async def fresh_collection(ctx: Context, client: Client, name: str) -> Coll:
    """An empty collection with the unique index, dropped at the end of the run."""
    coll: Coll = client[DATABASE][name]
    await coll.drop()
    await coll.create_index([(k, ASCENDING) for k in UNIQUE_KEY], unique=True, name="account_tx_unique")
    url = ctx.engines.mongodb_url

    async def drop() -> None:
        cleanup_client = make_client(url)
        try:
            await cleanup_client[DATABASE].drop_collection(name)
        finally:
            await cleanup_client.close()

    ctx.defer(drop)
    return coll


async def bulk_upsert(coll: Coll, batches: list[list[UpdateOne]]) -> tuple[float, dict[str, int]]:
    """Seconds to write every batch, one bulk_write after the other, and the summed counts."""
    totals = {"upserted": 0, "matched": 0, "modified": 0}
    started = time.perf_counter()
    for batch in batches:
        result = await coll.bulk_write(batch, ordered=False)
        totals["upserted"] += result.upserted_count
        totals["matched"] += result.matched_count
        totals["modified"] += result.modified_count
    return time.perf_counter() - started, totals


async def insert_batches(coll: Coll, batches: list[list[Doc]]) -> tuple[float, dict[str, int]]:
    """Seconds to insert_many every batch; duplicates (unique index) are counted as already there."""
    totals = {"inserted": 0, "already_there": 0}
    started = time.perf_counter()
    for batch in batches:
        try:
            result = await coll.insert_many(batch, ordered=False)
            totals["inserted"] += len(result.inserted_ids)
        except BulkWriteError as exc:
            if not is_duplicate_key_error(exc):
                raise
            totals["inserted"] += exc.details.get("nInserted", 0)
            totals["already_there"] += len(exc.details["writeErrors"])
    return time.perf_counter() - started, totals


def collection_name(ctx: Context, what: str) -> str:
    return f"{what}_{ctx.run_id.replace('-', '_')}"


def parameters(
    n: int, coll: Coll, batch: int, elapsed: float, totals: dict[str, int], count: int, ferretdb: bool
) -> dict[str, Any]:
    return {
        "n": n,
        "collection": coll.full_name,
        "unique_index": list(UNIQUE_KEY),
        "fields_per_document": len(operation(0)) + 1,  # and _id
        "batch": batch,
        "ordered": False,
        "engine": "FerretDB" if ferretdb else "MongoDB",
        "elapsed_s": round(elapsed, 3),
        "result_counts": totals,
        "documents_after": count,
    }


@benchmark("mongo_bulk_upsert", timeout_s=300)
async def mongo_bulk_upsert(ctx: Context) -> Measurement:
    """bulk_write of UpdateOne(unique key, $set, upsert=True) into a fresh collection with a unique index."""
    client = make_client(ctx.engines.mongodb_url)
    try:
        ferretdb = await is_ferretdb(client)
        # FerretDB: O(n²) (see the module's docstring), 1,000 documents take about a minute here
        n = ctx.size(full=1_000, quick=300) if ferretdb else ctx.size(full=50_000, quick=10_000)
        batches = upserts(n, UPSERT_BATCH)
        coll = await fresh_collection(ctx, client, collection_name(ctx, "upserts"))
        elapsed, totals = await bulk_upsert(coll, batches)
        count = await coll.count_documents({})
    finally:
        await client.close()
    if totals["upserted"] != n or count != n:
        raise RuntimeError(f"first pass: {totals} and {count} documents, expected {n} upserted")
    params = parameters(n, coll, UPSERT_BATCH, elapsed, totals, count, ferretdb)
    if ferretdb:  # each upsert scans the documents stored so far: n²/2 document reads
        params["us_per_op_per_stored_doc"] = round(elapsed / (n * n / 2) * 1e6, 2)
    return Measurement(
        "documents upserted per second (first insert)", "docs/s", round(n / elapsed, 1), params
    )


@benchmark("mongo_bulk_reupsert", timeout_s=420, needs=("mongo_bulk_upsert",))
async def mongo_bulk_reupsert(ctx: Context) -> Measurement:
    """The same upserts again on the same keys: idempotent, nothing new, the count unchanged."""
    n: int = ctx.result("mongo_bulk_upsert").parameters["n"]
    client = make_client(ctx.engines.mongodb_url)
    try:
        ferretdb = await is_ferretdb(client)
        batch = REUPSERT_BATCH_FERRETDB if ferretdb else UPSERT_BATCH
        batches = upserts(n, batch)
        coll: Coll = client[DATABASE][collection_name(ctx, "upserts")]
        elapsed, totals = await bulk_upsert(coll, batches)
        count = await coll.count_documents({})
    finally:
        await client.close()
    if totals["upserted"] != 0 or totals["matched"] != n or count != n:
        raise RuntimeError(
            f"second pass not idempotent: {totals}, {count} documents (expected {n}, none new)"
        )
    params = parameters(n, coll, batch, elapsed, totals, count, ferretdb)
    if ferretdb:  # each upsert scans the n stored documents
        params["us_per_op_per_stored_doc"] = round(elapsed / (n * n) * 1e6, 2)
    return Measurement(
        "documents re-upserted per second (same keys)", "docs/s", round(n / elapsed, 1), params
    )


@benchmark("mongo_insert_many", timeout_s=300)
async def mongo_insert_many(ctx: Context) -> Measurement:
    """insert_many(ordered=False) into a fresh collection with the same unique index (first insert)."""
    n = ctx.size(full=50_000, quick=10_000)
    batches = documents(n, INSERT_BATCH)
    client = make_client(ctx.engines.mongodb_url)
    try:
        ferretdb = await is_ferretdb(client)
        coll = await fresh_collection(ctx, client, collection_name(ctx, "inserts"))
        elapsed, totals = await insert_batches(coll, batches)
        count = await coll.count_documents({})
    finally:
        await client.close()
    if totals != {"inserted": n, "already_there": 0} or count != n:
        raise RuntimeError(f"first insert: {totals} and {count} documents, expected {n} inserted")
    params = parameters(n, coll, INSERT_BATCH, elapsed, totals, count, ferretdb)
    return Measurement(
        "documents inserted per second (first insert)", "docs/s", round(n / elapsed, 1), params
    )


@benchmark("mongo_reinsert_many", timeout_s=300, needs=("mongo_insert_many",))
async def mongo_reinsert_many(ctx: Context) -> Measurement:
    """The same insert_many again: every document rejected by the unique index, seen as already there."""
    n: int = ctx.result("mongo_insert_many").parameters["n"]
    batches = documents(n, INSERT_BATCH)
    client = make_client(ctx.engines.mongodb_url)
    try:
        ferretdb = await is_ferretdb(client)
        coll: Coll = client[DATABASE][collection_name(ctx, "inserts")]
        elapsed, totals = await insert_batches(coll, batches)
        count = await coll.count_documents({})
    finally:
        await client.close()
    if totals != {"inserted": 0, "already_there": n} or count != n:
        raise RuntimeError(f"re-insert not idempotent: {totals}, {count} documents (expected {n}, none new)")
    params = parameters(n, coll, INSERT_BATCH, elapsed, totals, count, ferretdb)
    return Measurement(
        "duplicates recognised per second (same keys)", "docs/s", round(n / elapsed, 1), params
    )
