"""The one consumer wrapper on real Kafka: poison records of any shape go to the DLQ, good ones pass."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from shared.consumer import Incoming, TopicConsumer
from shared.contract.envelope import CloudEvent
from shared.contract.topics import DLQ, TopicSpec
from shared.kafka import EventPublisher, ensure_topics, make_broker
from tests.kafka_helpers import read_raw

pytestmark = pytest.mark.engines


class Ping(BaseModel):
    n: int


async def test_poison_records_are_dead_lettered_and_the_stream_goes_on(engines):
    topic = f"test.consumer.{uuid.uuid4().hex[:8]}"
    await ensure_topics(engines.kafka_bootstrap, 1, specs=(TopicSpec(topic, retention_ms=3_600_000),))
    broker = make_broker(engines.kafka_bootstrap, client_id="test-consumer")
    handled: list[int] = []
    done = asyncio.Event()

    async def handle(batch: list[Incoming]) -> None:
        for incoming in batch:
            assert isinstance(incoming.data, Ping)
            handled.append(incoming.data.n)
        if 2 in handled:
            done.set()

    TopicConsumer(broker, "test", topic, {"ping": Ping}, handle).subscribe(f"g-{topic}")
    good = [
        CloudEvent.new(service="t", name="ping", data={"n": n}, user_id="u", correlation_id="c")
        for n in (1, 2)
    ]
    wrong_schema = CloudEvent.new(
        service="t", name="ping", data={"n": "many"}, user_id="u", correlation_id="c"
    )
    producer = AIOKafkaProducer(bootstrap_servers=engines.kafka_bootstrap)
    await producer.start()
    await broker.start()
    try:
        publisher = EventPublisher(broker)
        await publisher.publish(topic, "k", good[0])
        await producer.send_and_wait(topic, b"{not json", key=b"k")  # no headers at all
        await producer.send_and_wait(
            topic, b"\xff\xfe binary", key=b"k", headers=[("content-type", b"text/plain")]
        )
        await publisher.publish(topic, "k", wrong_schema)
        await publisher.publish(topic, "k", good[1])
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await broker.stop()
        await producer.stop()
    assert handled == [1, 2]
    dead = [
        r for r in await read_raw(engines.kafka_bootstrap, DLQ) if r[2].get("dlq.original_topic") == topic
    ]
    assert [int(headers["dlq.original_offset"]) for _, _, headers, _, _ in dead] == [1, 2, 3]
    assert all(
        headers["dlq.original_partition"] == "0" and headers["dlq.error"] for _, _, headers, _, _ in dead
    )
    assert dead[0][1] == b"{not json"
    assert "invalid record" in dead[2][2]["dlq.error"]
