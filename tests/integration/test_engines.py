"""The real engines: a CloudEvent through faststream and Kafka, and MongoDB's unique-index semantics."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaMessage
from pymongo import ASCENDING, InsertOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shared.contract.envelope import CLOUDEVENTS_CONTENT_TYPE, CloudEvent
from shared.contract.topics import TOPICS, TopicSpec
from shared.kafka import EventPublisher, ensure_topics, make_broker
from shared.mongo import is_duplicate_key_error, make_client

pytestmark = pytest.mark.engines


async def test_contract_topics_exist_with_partitions_and_retention(engines):
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=engines.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([spec.name for spec in TOPICS])
        partitions = {t["topic"]: len(t["partitions"]) for t in described}
        assert partitions == {spec.name: 6 for spec in TOPICS}
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, "banksync.transactions.raw.v1")]
        )
        entries = {c[0]: c[1] for c in configs[0].resources[0][4]}
        assert int(entries["retention.ms"]) >= 400 * 24 * 3600 * 1000
    finally:
        await admin.close()
    # idempotent: a second start-up creates nothing
    assert await ensure_topics(engines.kafka_bootstrap, 6) == []


async def test_cloudevent_published_with_faststream_is_read_by_two_consumer_groups(engines):
    topic = f"test.roundtrip.{uuid.uuid4().hex[:8]}"
    await ensure_topics(engines.kafka_bootstrap, 3, specs=(TopicSpec(topic, retention_ms=3_600_000),))
    broker = make_broker(engines.kafka_bootstrap, client_id="test-roundtrip")
    received: asyncio.Queue[KafkaMessage] = asyncio.Queue()

    @broker.subscriber(topic, group_id="test-group-a", auto_offset_reset="earliest")
    async def on_event(body: bytes, message: KafkaMessage) -> None:
        await received.put(message)

    event = CloudEvent.new(
        service="connector",
        name="transaction.observed",
        data={"transaction": {"id": 42, "value": -12.5}},
        user_id="u1",
        correlation_id="run-7",
    )
    await broker.start()
    try:
        await EventPublisher(broker).publish(topic, "u1:acc-1", event)
        got = await asyncio.wait_for(received.get(), 30)
        assert got.raw_message.key == b"u1:acc-1"
        assert CloudEvent.from_json_bytes(got.body) == event
        assert got.headers["content-type"] == CLOUDEVENTS_CONTENT_TYPE
    finally:
        await broker.stop()

    second = AIOKafkaConsumer(
        topic,
        bootstrap_servers=engines.kafka_bootstrap,
        group_id="test-group-b",
        auto_offset_reset="earliest",
    )
    await second.start()
    try:
        record = await asyncio.wait_for(second.getone(), 30)
    finally:
        await second.stop()
    assert record.key == b"u1:acc-1"
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["content-type"] == CLOUDEVENTS_CONTENT_TYPE
    assert headers["ce_id"] == event.id
    assert CloudEvent.from_json_bytes(record.value) == event


async def test_unique_index_violation_is_recognised_as_already_there(engines):
    client = make_client(engines.mongodb_url)
    try:
        collection = client["banksync_test"][f"ops_{uuid.uuid4().hex[:8]}"]
        await collection.create_index(
            [("account_key", ASCENDING), ("aggregator_transaction_id", ASCENDING)], unique=True
        )
        doc = {"account_key": "u1:a1", "aggregator_transaction_id": "t1", "amount": "-42.50"}
        await collection.insert_one(dict(doc))
        with pytest.raises(DuplicateKeyError) as single:
            await collection.insert_one(dict(doc))
        assert is_duplicate_key_error(single.value)

        with pytest.raises(BulkWriteError) as bulk:
            await collection.bulk_write(
                [InsertOne(dict(doc)), InsertOne({**doc, "aggregator_transaction_id": "t2"})], ordered=False
            )
        assert is_duplicate_key_error(bulk.value)
        assert await collection.count_documents({}) == 2
        assert not is_duplicate_key_error(ValueError("other"))
    finally:
        await client.close()
