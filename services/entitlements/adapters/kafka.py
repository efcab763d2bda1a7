"""The events this service announces, as CloudEvents on banksync.entitlements.v1 (keyed by the user)."""

from __future__ import annotations

from datetime import datetime

from shared.contract.envelope import CloudEvent, deterministic_event_id
from shared.contract.payloads import EntitlementChanged, UserErasureRequested
from shared.contract.topics import ENTITLEMENTS
from shared.kafka import EventPublisher

SERVICE = "entitlements"


def changed_event(change: EntitlementChanged, *, correlation_id: str, at: datetime) -> CloudEvent:
    """The id names the user and the version: a repeated relay writes the same event again."""
    return CloudEvent.new(
        service=SERVICE,
        name="entitlement.changed",
        # absent rather than null: no actor on changes older than the billing scope
        data=change.model_dump(mode="json", exclude_none=True),
        user_id=change.user_id,
        correlation_id=correlation_id,
        subject=change.user_id,
        event_id=deterministic_event_id("entitlement.changed", change.user_id, str(change.version)),
        time=at,
    )


def erasure_requested_event(request: UserErasureRequested, *, correlation_id: str) -> CloudEvent:
    return CloudEvent.new(
        service=SERVICE,
        name="user.erasure_requested",
        data=request.model_dump(mode="json"),
        user_id=request.user_id,
        correlation_id=correlation_id,
        subject=request.user_id,
    )


class KafkaAnnouncer:
    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher

    async def entitlement_changed(
        self, change: EntitlementChanged, *, correlation_id: str, at: datetime
    ) -> None:
        event = changed_event(change, correlation_id=correlation_id, at=at)
        await self.publisher.publish(ENTITLEMENTS, change.user_id, event)

    async def erasure_requested(self, request: UserErasureRequested, *, correlation_id: str) -> None:
        event = erasure_requested_event(request, correlation_id=correlation_id)
        await self.publisher.publish(ENTITLEMENTS, request.user_id, event)
