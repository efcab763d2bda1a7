"""Importer: raw bank events to stored operations, through real Kafka, the importer process and FerretDB.

- `importer`: first syncs of several accounts (about 1,500 lines each, 13 months) published on the raw
  topic as fast as the connector would; operations stored per second, from the first raw event sent to
  the last operation stored. Compared with `engine_limit` (the local engine's own bulk-upsert rate of
  operation documents into a collection of 50,000: at least half of it); the ratio to
  `mongo_insert_many`, the write path the importer uses for new operations, is in the parameters.
- `importer_first_sync`: one account's first sync of about 1,500 lines; seconds from the last raw event
  acknowledged by Kafka to the last of its operations stored.

"Stored" is observed as the `operation.imported` event, which the importer publishes only after the
operation's document is written: the figures are upper bounds of the storing time, and observing
costs the database nothing. The stored count is then checked in MongoDB.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.registry import Context, Limit, Measurement, benchmark
from harness.devstack import ROOT, ServiceProcess, ensure_dir, free_port
from harness.waiting import wait_for_async
from shared.contract.envelope import CloudEvent, account_key, event_type
from shared.contract.topics import OPERATIONS, TRANSACTIONS_RAW
from shared.kafka import cloudevent_headers, topic_partitions
from shared.mongo import make_client

LINES_PER_ACCOUNT = 1_500
MERCHANTS = ("CARREFOUR MARKET", "BOULANGERIE PAUL", "SNCF INTERNET", "AMAZON EU SARL", "TOTAL ENERGIES")
IMPORTED = event_type("operation.imported")


def first_sync(
    user: str, account: str, n: int, seed: int
) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """`transaction.observed` records (key, value, headers) of one account's 13-month first sync."""
    rng = random.Random(seed)
    end = date(2026, 11, 20)
    records = []
    for i in range(n):
        day = end - timedelta(days=395 - i * 395 // n)
        merchant = rng.choice(MERCHANTS)
        transaction = {
            "id": seed * 1_000_000 + i,
            "id_account": int(account),
            "date": day.isoformat(),
            "value": -rng.randint(150, 9000) / 100,
            "original_wording": f"CARTE X4974 {day:%d/%m} {merchant}",
            "simplified_wording": merchant,
            "wording": merchant,
            "type": "card",
            "coming": False,
            "active": True,
            "deleted": None,
            "last_update": datetime(2026, 11, 20, 3, tzinfo=UTC).isoformat(),
        }
        event = CloudEvent.new(
            service="connector",
            name="transaction.observed",
            data={
                "user_id": user,
                "connection_id": f"conn-{user}",
                "aggregator_account_id": account,
                "bank": {"id": "bnp", "name": "BNP Paribas"},
                "sync_run_id": f"run-{user}",
                "initial": True,
                "transaction": transaction,
            },
            user_id=user,
            correlation_id=f"run-{user}",
            subject=account,
        )
        headers = [(k, v.encode()) for k, v in cloudevent_headers(event).items()]
        records.append((account_key(user, account).encode(), event.to_json_bytes(), headers))
    return records


class ImportedWatcher:
    """Counts `operation.imported` events of some users from the operations topic's current end."""

    def __init__(self, bootstrap: str, users: set[str]) -> None:
        self.bootstrap = bootstrap
        self.prefixes = tuple(f"{u}:".encode() for u in users)
        self.count = 0
        self.last_at = 0.0
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        partitions = [
            TopicPartition(OPERATIONS, p) for p in await topic_partitions(self.bootstrap, OPERATIONS)
        ]
        await self.consumer.start()
        self.consumer.assign(partitions)
        for tp, end in (await self.consumer.end_offsets(partitions)).items():
            self.consumer.seek(tp, end)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=5_000)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    if (
                        record.key
                        and record.key.startswith(self.prefixes)
                        and IMPORTED.encode() in record.value
                    ):
                        self.count += 1
                        self.last_at = now

    async def wait_for(self, count: int, timeout_s: float) -> None:
        await wait_for_async(
            lambda: self.count, timeout_s, f"{count} operations stored", 0.02, until=lambda n: n >= count
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()


async def commit_at_end(bootstrap: str, group: str) -> None:
    """The importer's group starts at the raw topic's end: it imports only this benchmark's records."""
    partitions = [
        TopicPartition(TRANSACTIONS_RAW, p) for p in await topic_partitions(bootstrap, TRANSACTIONS_RAW)
    ]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.commit(dict((await consumer.end_offsets(partitions)).items()))
    finally:
        await consumer.stop()


async def with_importer(
    ctx: Context, name: str, work: Callable[[ServiceProcess, str], Awaitable[Any]]
) -> Any:
    database = f"banksync_bench_{name}_{ctx.run_id.replace('-', '_')}"
    group = f"bench-{name}-{ctx.run_id}"
    await commit_at_end(ctx.engines.kafka_bootstrap, group)
    port = free_port()
    process = ServiceProcess(
        "services.importer",
        port,
        ctx.engines.service_env(MONGODB_DATABASE=database, IMPORTER_GROUP_ID=group, LOG_LEVEL="WARNING"),
        ensure_dir(ROOT / ".run" / "bench-logs") / f"{name}-{port}.log",
    )

    async def drop() -> None:
        client = make_client(ctx.engines.mongodb_url)
        try:
            await client.drop_database(database)
        finally:
            await client.close()

    ctx.defer(drop)
    await asyncio.to_thread(process.start)
    try:
        return await work(process, database)
    finally:
        await asyncio.to_thread(process.stop)


async def produce(bootstrap: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> float:
    """Sends like the connector's producer (acks=all, idempotent); returns when the last is acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(TRANSACTIONS_RAW, value=v, key=k, headers=h) for k, v, h in records]
        await asyncio.gather(*futures)
        return time.perf_counter()
    finally:
        await producer.stop()


async def stored_count(mongodb_url: str, database: str, users: list[str]) -> int:
    client = make_client(mongodb_url)
    try:
        return await client[database]["operations"].count_documents({"user_id": {"$in": users}})
    finally:
        await client.close()


@benchmark("importer", timeout_s=600, limit=Limit("engine_limit", target=0.5))
async def importer_throughput(ctx: Context) -> Measurement:
    """First syncs (~1,500 lines per account): raw events to stored operations per second, end to end."""
    accounts = ctx.size(full=10, quick=3)
    users = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(accounts)]
    records = [
        r for i, u in enumerate(users) for r in first_sync(u, str(8000 + i), LINES_PER_ACCOUNT, seed=i + 1)
    ]
    n = len(records)

    async def run(process: ServiceProcess, database: str) -> Measurement:
        watcher = ImportedWatcher(ctx.engines.kafka_bootstrap, set(users))
        await watcher.start()
        try:
            started = time.perf_counter()
            produced_at = await produce(ctx.engines.kafka_bootstrap, records)
            await watcher.wait_for(n, timeout_s=500)
            elapsed = watcher.last_at - started
        finally:
            await watcher.stop()
        stored = await stored_count(ctx.engines.mongodb_url, database, users)
        if stored != n:
            raise RuntimeError(f"{stored} operations stored for {n} raw events")
        rate = n / elapsed
        insert_many = ctx.results.get("mongo_insert_many")
        return Measurement(
            metric="raw events to stored operations per second (first syncs, end to end)",
            unit="ops/s",
            value=round(rate, 1),
            parameters={
                "n": n,
                "accounts": accounts,
                "lines_per_account": LINES_PER_ACCOUNT,
                "produce_s": round(produced_at - started, 3),
                "elapsed_s": round(elapsed, 3),
                "stored_checked": stored,
                "importer": "one process, consumer batches of 500, accounts of a batch 8 at a time",
                "ratio_to_mongo_insert_many": (
                    round(rate / insert_many.value, 4)
                    if insert_many is not None and insert_many.status == "ok" and insert_many.value
                    else None
                ),
            },
        )

    result: Measurement = await with_importer(ctx, "importer", run)
    return result


@benchmark("importer_first_sync", timeout_s=300)
async def importer_first_sync(ctx: Context) -> Measurement:
    """Seconds from the last raw event of a 13-month first sync (1,500 lines) to its last operation stored."""
    user = f"bench-{uuid.uuid4().hex[:8]}"
    records = first_sync(user, "8100", LINES_PER_ACCOUNT, seed=100)

    async def run(process: ServiceProcess, database: str) -> Measurement:
        watcher = ImportedWatcher(ctx.engines.kafka_bootstrap, {user})
        await watcher.start()
        try:
            started = time.perf_counter()
            last_raw_at = await produce(ctx.engines.kafka_bootstrap, records)
            await watcher.wait_for(len(records), timeout_s=250)
            last_stored_at = watcher.last_at
        finally:
            await watcher.stop()
        stored = await stored_count(ctx.engines.mongodb_url, database, [user])
        if stored != len(records):
            raise RuntimeError(f"{stored} operations stored for {len(records)} raw events")
        return Measurement(
            metric="seconds from the last raw event of a first sync to its last operation stored",
            unit="s",
            value=round(last_stored_at - last_raw_at, 3),
            parameters={
                "lines": len(records),
                "produce_s": round(last_raw_at - started, 3),
                "first_raw_to_last_stored_s": round(last_stored_at - started, 3),
                "stored_checked": stored,
            },
        )

    result: Measurement = await with_importer(ctx, "importer_first_sync", run)
    return result
