"""MongoDB-wire limits: bulk writes of bank operations into a collection with a unique compound index.

The local engine is FerretDB v1.24.2 on PostgreSQL 15 (deploy/local/ferretdb.sh), with a GIN
`jsonb_path_ops` twin of every index FerretDB creates (deploy/local/ferretdb-gin.sql). What that means
here, measured by these benchmarks (figures in bench/results/):
- FerretDB pushes a filter down to PostgreSQL only as top-level scalar equalities
  (`{"f": v}` → `_jsonb->'f' @> v`), which the GIN twins serve; `$in`, `$or` and ranges are evaluated
  by FerretDB over a sequential scan. The upserts here filter on the two fields of the unique key,
  both equalities, so each is an index lookup: the rate no longer falls with the documents already
  stored (`first_half_docs_per_s` and `second_half_docs_per_s` of each pass show it; on the SQLite
  backend each upsert read the whole collection and a bulk upsert of n documents cost O(n²)).
  `engine_limit` measures the same on the importer's own document shape and indexes, into a
  collection that already holds 50,000 documents.
- One `update` command must not carry more than about 50 statements: FerretDB holds a pooled
  PostgreSQL connection per statement until the command ends (shared/bulk.py chunks). The re-upsert
  pass, whose statements all match existing documents, sends REUPSERT_BATCH_FERRETDB per command;
  the first pass inserts only, and goes UPSERT_BATCH per command.
- `insert_many` stays the fast path for new documents (`mongo_insert_many`), an order of magnitude
  above an upsert; re-inserting documents that are all already there (`mongo_reinsert_many`, every one a
  duplicate-key error) is much slower than a first insert: the "insert, and a duplicate key means
  already there" path is cheap only when duplicates are rare.

Measured on this machine (2 shared cores, run of 2026-12-02, load average 4-9): 5,000 first upserts
449 docs/s, re-upserts 555 docs/s, insert_many 5,950 docs/s, re-inserting the same 50,000 702 docs/s;
`engine_limit` 329 docs/s (1,000 in a quick run into 10,000 documents: 395 docs/s).
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bson import encode as bson_encode
from pymongo import ASCENDING, AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from bench.documents import history, importer_operation, insert_all, now
from bench.registry import Context, Measurement, benchmark, load_average
from services.importer.adapters.mongo import OperationStore
from shared.bulk import DEFAULT_CHUNK, bulk_write_chunked
from shared.contract.envelope import account_key, content_hash
from shared.mongo import is_duplicate_key_error, make_client

DATABASE = "banksync_bench"
UPSERT_BATCH = 500
REUPSERT_BATCH_FERRETDB = 50  # statements per update command on FerretDB (see the module's docstring)
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


async def bulk_upsert(coll: Coll, batches: list[list[UpdateOne]]) -> tuple[float, dict[str, Any]]:
    """Seconds to write every batch, one bulk_write after the other, the summed counts, and the rate
    of each half (whether the cost grows with the documents stored)."""
    totals: dict[str, Any] = {"upserted": 0, "matched": 0, "modified": 0}
    half = len(batches) // 2
    started = time.perf_counter()
    halfway = started
    for i, batch in enumerate(batches):
        if i == half:
            halfway = time.perf_counter()
        result = await coll.bulk_write(batch, ordered=False)
        totals["upserted"] += result.upserted_count
        totals["matched"] += result.matched_count
        totals["modified"] += result.modified_count
    elapsed = time.perf_counter() - started
    first, second = sum(map(len, batches[:half])), sum(map(len, batches[half:]))
    if half:
        totals["first_half_docs_per_s"] = round(first / (halfway - started), 1)
        totals["second_half_docs_per_s"] = round(second / (elapsed - (halfway - started)), 1)
    return elapsed, totals


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
    n: int, coll: Coll, batch: int, elapsed: float, totals: dict[str, Any], count: int, ferretdb: bool
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
        # FerretDB: a few hundred upserts per second (see the module's docstring)
        n = ctx.size(full=5_000, quick=1_000) if ferretdb else ctx.size(full=50_000, quick=10_000)
        batches = upserts(n, UPSERT_BATCH)
        coll = await fresh_collection(ctx, client, collection_name(ctx, "upserts"))
        elapsed, totals = await bulk_upsert(coll, batches)
        count = await coll.count_documents({})
    finally:
        await client.close()
    if totals["upserted"] != n or count != n:
        raise RuntimeError(f"first pass: {totals} and {count} documents, expected {n} upserted")
    params = parameters(n, coll, UPSERT_BATCH, elapsed, totals, count, ferretdb)
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


# ---- engine_limit: what the importer's store can take, on a collection that is not empty ---------------

ENGINE_ACCOUNTS = ("11", "12", "13", "14", "15")  # a user of 5 accounts x 288 lines: 1,440 operations
ENGINE_LINES_PER_ACCOUNT = 288


def engine_documents(first_user: int, count: int, seed: int) -> list[Doc]:
    """`count` importer operation documents of users `engine-<first_user>`, `engine-<first_user + 1>`..."""
    at, user = now(), first_user
    docs: list[Doc] = []
    while len(docs) < count:
        for op in history(f"engine-{user:06d}", ENGINE_ACCOUNTS, ENGINE_LINES_PER_ACCOUNT, seed + user):
            docs.append(importer_operation(op, at))
        user += 1
    return docs[:count]


def importer_upsert(doc: Doc) -> UpdateOne:
    """As the importer writes a bank line's operation (BankOperationFactory.update): by `_id`, the
    bank's fields set, the rest only on insert."""
    bank = ("date", "amount", "cents", "memo", "label", "status", "aggregator_transaction_id")
    changed = {k: doc[k] for k in (*bank, "account_id", "updated_at")}
    rest = {k: v for k, v in doc.items() if k not in changed and k != "_id"}
    return UpdateOne({"_id": doc["_id"]}, {"$set": changed, "$setOnInsert": rest}, upsert=True)


@benchmark("engine_limit", timeout_s=900)
async def engine_limit(ctx: Context) -> Measurement:
    """Bulk upserts (chunks of 50) of new operation documents into an operations collection of 50,000."""
    prefill = ctx.size(full=50_000, quick=10_000)
    n = ctx.size(full=5_000, quick=1_000)
    database = f"{DATABASE}_engine_{ctx.run_id.replace('-', '_')}"
    client = make_client(ctx.engines.mongodb_url)
    url = ctx.engines.mongodb_url

    async def drop() -> None:
        cleanup_client = make_client(url)
        try:
            await cleanup_client.drop_database(database)
        finally:
            await cleanup_client.close()

    ctx.defer(drop)
    try:
        ferretdb = await is_ferretdb(client)
        store = OperationStore(client[database])
        await store.create_indexes()  # the importer's own indexes (and, on the local engine, their GIN twins)
        stored, prefill_s = await insert_all(store.coll, iter(engine_documents(0, prefill, seed=1)))
        new = engine_documents(10_000, n, seed=2)
        writes = [importer_upsert(d) for d in new]
        half = len(writes) // 2
        started = time.perf_counter()
        touched = await bulk_write_chunked(store.coll, writes[:half], chunk=DEFAULT_CHUNK)
        halfway = time.perf_counter()
        touched += await bulk_write_chunked(store.coll, writes[half:], chunk=DEFAULT_CHUNK)
        elapsed = time.perf_counter() - started
        count = await store.coll.count_documents({})
        indexes = sorted(await store.coll.index_information())
    finally:
        await client.close()
    if touched != n or count != prefill + n:
        raise RuntimeError(f"{touched} upserted, {count} documents; expected {n} and {prefill + n}")
    first_half_s = halfway - started
    return Measurement(
        "new operation documents upserted per second (bulk_write in chunks of 50, 50,000 already stored)",
        "docs/s",
        round(n / elapsed, 1),
        {
            "n": n,
            "prefill": prefill,
            "prefill_quick_mode_smaller": ctx.quick,
            "prefill_insert_many_docs_per_s": round(stored / prefill_s, 1),
            "collection": store.coll.full_name,
            "indexes": indexes,
            "document_bson_bytes": len(bson_encode(new[0])),
            "write": "UpdateOne({_id}, {$set: bank fields, $setOnInsert: the rest}, upsert=True), unordered",
            "chunk": DEFAULT_CHUNK,
            "engine": "FerretDB" if ferretdb else "MongoDB",
            "elapsed_s": round(elapsed, 3),
            "first_half_docs_per_s": round(half / first_half_s, 1),
            "second_half_docs_per_s": round((n - half) / (elapsed - first_half_s), 1),
            "documents_after": count,
            "load_average_1m_after": load_average(),
        },
    )
