"""Reading topics in tests: everything up to the end offsets at the time of the call."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.events import CloudEvent


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(TopicPartition(topic, p["partition"]) for p in described[0]["partitions"])


async def read_raw(bootstrap: str, topic: str) -> list[tuple[str, bytes, dict[str, str], int, int]]:
    """(key, value, headers, partition, offset) of every record now in `topic`, partition by partition."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[tuple[str, bytes, dict[str, str], int, int]] = []
        pending = {tp for tp in partitions if ends[tp] > 0}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000, max_records=5000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp]:
                        headers = {k: v.decode() for k, v in record.headers}
                        key = record.key.decode() if record.key else ""
                        out.append((key, record.value or b"", headers, record.partition, record.offset))
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return out
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str) -> list[tuple[str, CloudEvent, dict[str, str]]]:
    """(key, event, headers) of every CloudEvent now in `topic` (other tests' poison records skipped)."""
    out: list[tuple[str, CloudEvent, dict[str, str]]] = []
    for key, value, headers, _, _ in await read_raw(bootstrap, topic):
        try:
            out.append((key, CloudEvent.from_json_bytes(value), headers))
        except ValueError:
            continue
    return out


async def events_where(
    bootstrap: str, topic: str, keep: Callable[[str, CloudEvent], bool]
) -> list[tuple[str, CloudEvent]]:
    return [(key, event) for key, event, _ in await read_all(bootstrap, topic) if keep(key, event)]
