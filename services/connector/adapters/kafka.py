"""The publishing side of the Announcer port: the contract's events through the service's publisher, the
bank's lines (banksync.transactions.raw.v1, by the thousand) through a batch producer."""

from __future__ import annotations

from typing import Protocol

from shared.contract.envelope import CloudEvent
from shared.contract.topics import TRANSACTIONS_RAW


class Publisher(Protocol):
    """shared.kafka.EventPublisher or shared.batch_publisher.BatchPublisher."""

    async def publish(self, topic: str, key: str, event: CloudEvent) -> None: ...

    async def publish_many(self, topic: str, items: list[tuple[str, CloudEvent]]) -> None: ...


class KafkaAnnouncer:
    def __init__(self, events: Publisher, lines: Publisher | None = None) -> None:
        self.events = events
        # bank lines go out by the thousand: a batch producer, not one faststream call per record
        self.lines = lines or events

    def _for(self, topic: str) -> Publisher:
        return self.lines if topic == TRANSACTIONS_RAW else self.events

    async def publish(self, topic: str, key: str, event: CloudEvent) -> None:
        await self._for(topic).publish(topic, key, event)

    async def publish_many(self, topic: str, items: list[tuple[str, CloudEvent]]) -> None:
        await self._for(topic).publish_many(topic, items)
