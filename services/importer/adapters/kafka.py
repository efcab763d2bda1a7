"""The publishing side of the importer's announcements (the Announcements port), on shared.kafka."""

from __future__ import annotations

from collections.abc import Sequence

from services.importer.domain.events import Keyed
from shared.contract.topics import OPERATIONS
from shared.kafka import EventPublisher


class KafkaAnnouncements:
    """Publishes on banksync.operations.v1, a batch at a time (one send per event, concurrently)."""

    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher

    async def publish(self, events: Sequence[Keyed]) -> None:
        if events:
            await self.publisher.publish_many(OPERATIONS, list(events))
