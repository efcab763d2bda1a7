"""Kafka helpers: the broker every service uses, publishing CloudEvents, and the contract's topics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream.kafka import KafkaBroker

from shared.contract.envelope import CLOUDEVENTS_CONTENT_TYPE, CloudEvent
from shared.contract.topics import TOPICS, TopicSpec
from shared.logging import get_logger
from shared.metrics import EVENTS_PUBLISHED

if TYPE_CHECKING:
    from shared.vault import EventSealer

log = get_logger(__name__)


def make_broker(bootstrap_servers: str, client_id: str) -> KafkaBroker:
    """The producer waits for all in-sync replicas and is idempotent: a retried send is not a new record."""
    return KafkaBroker(
        bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        allow_auto_create_topics=False,
        logger=None,
    )


def cloudevent_headers(event: CloudEvent) -> dict[str, str]:
    return {"content-type": CLOUDEVENTS_CONTENT_TYPE, "ce_type": event.type, "ce_id": event.id}


async def record_values(
    sealer: EventSealer | None, topic: str, items: list[tuple[str, CloudEvent]]
) -> list[tuple[str, CloudEvent, bytes]]:
    """What to write for each event: sealed where the topic carries bank data (with a sealer); the events
    of erased users are left out (shared.vault)."""
    if sealer is None:
        return [(key, event, event.to_json_bytes()) for key, event in items]
    values = await sealer.encode_many(topic, [event for _, event in items])
    return [
        (key, event, value) for (key, event), value in zip(items, values, strict=True) if value is not None
    ]


class EventPublisher:
    """Publishes CloudEvents in structured mode, keyed by the topic's partition key."""

    def __init__(self, broker: KafkaBroker, service: str = "", sealer: EventSealer | None = None) -> None:
        self._broker = broker
        self.service = service
        self.sealer = sealer

    async def publish(self, topic: str, key: str, event: CloudEvent) -> None:
        await self.publish_many(topic, [(key, event)])

    async def publish_many(self, topic: str, items: list[tuple[str, CloudEvent]]) -> None:
        """Send a batch concurrently; the producer batches them and keeps per-partition order per key."""
        await asyncio.gather(
            *(
                self._send(topic, key, event, value)
                for key, event, value in await record_values(self.sealer, topic, items)
            )
        )

    async def _send(self, topic: str, key: str, event: CloudEvent, value: bytes) -> None:
        await self._broker.publish(
            value,
            topic=topic,
            key=key.encode(),
            headers=cloudevent_headers(event),
            correlation_id=event.correlationid,
        )
        EVENTS_PUBLISHED.labels(self.service, topic).inc()


async def ensure_topics(
    bootstrap_servers: str,
    partitions: int,
    replication_factor: int = 1,
    specs: tuple[TopicSpec, ...] = TOPICS,
) -> list[str]:
    """Create the contract's topics that are missing; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="banksync-topics")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            try:
                response: Any = await admin.create_topics(
                    [
                        NewTopic(
                            name=spec.name,
                            num_partitions=partitions,
                            replication_factor=replication_factor,
                            topic_configs=spec.config(),
                        )
                        for spec in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass
            else:
                for name, error_code, *_ in response.topic_errors:
                    # 36: TOPIC_ALREADY_EXISTS (another process raced us)
                    if error_code not in (0, 36):
                        raise RuntimeError(f"could not create topic {name}: error code {error_code}")
        created = [spec.name for spec in missing]
        if created:
            log.info("topics_created", topics=created, partitions=partitions)
        return created
    finally:
        await admin.close()


async def topic_partitions(bootstrap_servers: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="banksync-partitions")
    await admin.start()
    try:
        described: Any = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [p["partition"] for t in described if t["topic"] == topic for p in t["partitions"]]
    if not partitions:
        raise LookupError(f"topic {topic} has no partitions")
    return sorted(partitions)


async def start_group_at_end(bootstrap_servers: str, group: str, topics: Iterable[str]) -> None:
    """Commits a new consumer group's offsets at the topics' current ends.

    A consumer that later joins the group reads only what is produced from now on, not what earlier
    runs left on shared topics (tests and benchmarks share one Kafka).
    """
    partitions = [
        TopicPartition(topic, p) for topic in topics for p in await topic_partitions(bootstrap_servers, topic)
    ]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit(dict(ends.items()))
    finally:
        await consumer.stop()
