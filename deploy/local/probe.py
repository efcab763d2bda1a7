"""Readiness probes for the local engines, and topic creation. Run with the project's venv.

probe.py kafka 127.0.0.1:9092 [--timeout S]      a produce/consume round trip answers
probe.py mongodb mongodb://127.0.0.1:27017        a ping answers
probe.py topics 127.0.0.1:9092 --partitions 6     the contract's topics exist
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

PROBE_TOPIC = "banksync.probe"


async def kafka_round_trip(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        if PROBE_TOPIC not in await admin.list_topics():
            await admin.create_topics(
                [NewTopic(PROBE_TOPIC, 1, 1, topic_configs={"retention.ms": "3600000"})]
            )
    finally:
        await admin.close()
    marker = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000)
    await producer.start()
    try:
        sent = await producer.send_and_wait(PROBE_TOPIC, marker)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(PROBE_TOPIC, 0)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        record = await asyncio.wait_for(consumer.getone(), 10)
        if record.value != marker:
            raise RuntimeError("probe record came back different")
    finally:
        await consumer.stop()


async def mongodb_ping(url: str) -> None:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url, serverSelectionTimeoutMS=2000)
    try:
        await client.admin.command("ping")
    finally:
        await client.close()


async def retry(make_check: Callable[[], Awaitable[None]], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(make_check(), max(1.0, deadline - time.monotonic()))
            return True
        except Exception as exc:
            last_error = exc
            await asyncio.sleep(0.5)
    print(f"probe: not ready after {within_s:.0f} s: {last_error!r}", file=sys.stderr)
    return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["kafka", "mongodb", "topics"])
    parser.add_argument("address")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--replication-factor", type=int, default=1)
    args = parser.parse_args()
    # until the engine is up every attempt fails by design: aiokafka would log each one; the probe
    # says the last error itself when it gives up
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.what == "kafka":
        return 0 if asyncio.run(retry(lambda: kafka_round_trip(args.address), args.timeout)) else 1
    if args.what == "mongodb":
        return 0 if asyncio.run(retry(lambda: mongodb_ping(args.address), args.timeout)) else 1
    from shared.kafka import ensure_topics

    created = asyncio.run(ensure_topics(args.address, args.partitions, args.replication_factor))
    print(f"topics: {len(created)} created" + (f" ({', '.join(created)})" if created else ", all present"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
