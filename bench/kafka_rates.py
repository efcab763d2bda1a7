"""Raw Kafka limits with aiokafka: producing and consuming ~300-byte CloudEvents on a 6-partition topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.registry import Context, Measurement, benchmark
from shared.contract.envelope import CloudEvent, account_key
from shared.kafka import cloudevent_headers

EVENT_BYTES = 300
PARTITIONS = 6
USERS = 2_000
ACCOUNTS_PER_USER = 3  # 6,000 keys `<user>:<account>`
LINGER_MS = 5  # as the services' producer (shared.kafka.make_broker)
SEND_CHUNK = 5_000  # futures awaited together
MAX_CHUNKS_IN_FLIGHT = 4
MAX_RECORDS = 10_000  # consumer getmany

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers


def build_events(n: int, correlation_id: str) -> list[Record]:
    """n real CloudEvents, `data` padded so that each JSON value is ~EVENT_BYTES.

    The envelope alone (UUID id and correlation id, type, source, time, datacontenttype, userid) is
    about 300 bytes already, so the events are kept compact: a short type and user id, whole-second
    times; `data` is padded only up to EVENT_BYTES. The sizes are recorded in the parameters.
    """
    base_time = datetime(2025, 1, 1, tzinfo=UTC)

    def event(i: int, pad: str) -> tuple[str, CloudEvent]:
        user, account = f"u{i % USERS:04d}", f"a{(i // USERS) % ACCOUNTS_PER_USER}"
        data = {"seq": f"{i:09d}", "pad": pad} if pad else {"seq": f"{i:09d}"}
        ev = CloudEvent.new(
            service="bench", name="bench.record", data=data, user_id=user,
            correlation_id=correlation_id, time=base_time + timedelta(seconds=i),
        )  # fmt: skip
        return account_key(user, account), ev

    bare = len(event(0, "")[1].to_json_bytes())
    padding = ',"pad":""'
    pad = "x" * (EVENT_BYTES - bare - len(padding)) if bare + len(padding) < EVENT_BYTES else ""
    records: list[Record] = []
    for i in range(n):
        key, ev = event(i, pad)
        headers = [(k, v.encode()) for k, v in cloudevent_headers(ev).items()]
        records.append((key.encode(), ev.to_json_bytes(), headers))
    return records


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    await admin.start()
    try:
        response: Any = await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs={"retention.ms": "86400000"})]
        )
        for topic, error_code, *_ in response.topic_errors:
            if error_code != 0:
                raise RuntimeError(f"could not create topic {topic}: error code {error_code}")
    finally:
        await admin.close()


async def delete_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


@benchmark("kafka_produce", timeout_s=300)
async def kafka_produce(ctx: Context) -> Measurement:
    """aiokafka producer (acks=all, idempotent) to a fresh 6-partition topic, ~300-byte CloudEvents."""
    n = ctx.size(full=200_000, quick=20_000)
    bootstrap = ctx.engines.kafka_bootstrap
    topic = f"bench.produce.{ctx.run_id}"

    started = time.perf_counter()
    records = build_events(n, correlation_id=str(uuid.uuid4()))
    build_s = time.perf_counter() - started
    sizes = [len(value) for _, value, _ in records]

    await create_topic(bootstrap, topic, PARTITIONS)
    ctx.defer(lambda: delete_topic(bootstrap, topic))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, client_id="bench-producer", acks="all", enable_idempotence=True,
        linger_ms=LINGER_MS,
    )  # fmt: skip
    await producer.start()
    per_partition: Counter[int] = Counter()
    try:
        in_flight: deque[asyncio.Future[list[Any]]] = deque()

        async def settle(chunk: asyncio.Future[list[Any]]) -> None:
            for metadata in await chunk:
                per_partition[metadata.partition] += 1

        started = time.perf_counter()
        chunk: list[asyncio.Future[Any]] = []
        for key, value, headers in records:
            chunk.append(await producer.send(topic, value=value, key=key, headers=headers))
            if len(chunk) >= SEND_CHUNK:
                in_flight.append(asyncio.gather(*chunk))
                chunk = []
                if len(in_flight) > MAX_CHUNKS_IN_FLIGHT:
                    await settle(in_flight.popleft())
        if chunk:
            in_flight.append(asyncio.gather(*chunk))
        while in_flight:
            await settle(in_flight.popleft())
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()

    acknowledged = sum(per_partition.values())
    if acknowledged != n:
        raise RuntimeError(f"{acknowledged} of {n} records acknowledged")
    return Measurement(
        metric="records produced per second (acknowledged)",
        unit="records/s",
        value=round(n / elapsed, 1),
        parameters={
            "n": n,
            "topic": topic,
            "partitions": PARTITIONS,
            "keys": USERS * ACCOUNTS_PER_USER,
            "value_bytes_mean": round(sum(sizes) / n, 1),
            "value_bytes_min": min(sizes),
            "value_bytes_max": max(sizes),
            "headers": ["content-type", "ce_type", "ce_id"],
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": LINGER_MS,
            "send": f"send() futures awaited {SEND_CHUNK} at a time, {MAX_CHUNKS_IN_FLIGHT} chunks in flight",
            "elapsed_s": round(elapsed, 3),
            "mb_per_s": round(sum(sizes) / elapsed / 1e6, 2),
            "per_partition": dict(sorted(per_partition.items())),
            "cloudevents_built_per_s": round(n / build_s, 1),
        },
    )


class JoinedGroup(ConsumerRebalanceListener):  # type: ignore[misc]
    """Sets `event` when the consumer group assigns partitions."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            self.event.set()


@benchmark("kafka_consume", timeout_s=300, needs=("kafka_produce",))
async def kafka_consume(ctx: Context) -> Measurement:
    """aiokafka consumer in a fresh group reading back every record kafka_produce wrote."""
    produced = ctx.result("kafka_produce").parameters
    n: int = produced["n"]
    topic: str = produced["topic"]
    group = f"bench-consume-{ctx.run_id}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=ctx.engines.kafka_bootstrap, client_id="bench-consumer", group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    joined = JoinedGroup()
    started = time.perf_counter()
    await consumer.start()
    try:
        consumer.subscribe([topic], listener=joined)
        # the timing starts once the group has assigned the partitions: from there on it is only reading
        await joined.event.wait()  # the group coordinator joins in the background
        assigned = time.perf_counter()
        count = 0
        value_bytes = 0
        per_partition: Counter[int] = Counter()
        first: bytes | None = None
        last: bytes | None = None
        while count < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=MAX_RECORDS)
            for tp, messages in batches.items():
                count += len(messages)
                per_partition[tp.partition] += len(messages)
                value_bytes += sum(len(m.value) for m in messages)
                first = first or messages[0].value
                last = messages[-1].value
        elapsed = time.perf_counter() - assigned
        # verification (not timed): nothing more on the topic, the ends add up, the records parse
        extra = await consumer.getmany(timeout_ms=500)
        count += sum(len(m) for m in extra.values())
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.commit()
    finally:
        await consumer.stop()
    if count != n or sum(ends.values()) != n:
        raise RuntimeError(f"read {count} records, topic end offsets sum {sum(ends.values())}, expected {n}")
    sample = [v for v in (first, last) if v is not None]
    parse_started = time.perf_counter()
    for value in sample * 5_000:
        CloudEvent.from_json_bytes(value)
    parse_per_s = len(sample) * 5_000 / (time.perf_counter() - parse_started)
    return Measurement(
        metric="records consumed per second (after the group join)",
        unit="records/s",
        value=round(n / elapsed, 1),
        parameters={
            "n": n,
            "topic": topic,
            "group_id": group,
            "max_records": MAX_RECORDS,
            "verified_count": count,
            "join_s": round(assigned - started, 3),
            "elapsed_s": round(elapsed, 3),
            "mb_per_s": round(value_bytes / elapsed / 1e6, 2),
            "per_partition": dict(sorted(per_partition.items())),
            "cloudevents_parsed_per_s": round(parse_per_s, 1),
        },
    )
