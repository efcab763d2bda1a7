"""The categorizer on Kafka: `operation.categorized` announced (the `Categorizations` port, on
shared.batch_publisher.BatchPublisher or shared.kafka.EventPublisher), and the operations topic's
records turned into the handlers' messages (`operations_messages`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from services.categorizer.ports import AccountRemoved, Categorized, OperationChanged, OperationsMessage
from shared.consumer import Incoming, PoisonRecord
from shared.contract.envelope import (
    HAS_CATEGORY,
    CloudEvent,
    account_key,
    content_hash,
    deterministic_event_id,
)
from shared.contract.payloads import OperationEvent
from shared.contract.topics import CATEGORIZATIONS

SERVICE = "categorizer"
# events per call of the publisher: thousands at once after a rule change, sent a slice at a time
PUBLISH_CHUNK = 2000


class Publisher(Protocol):
    """shared.batch_publisher.BatchPublisher (or shared.kafka.EventPublisher)."""

    async def publish_many(self, topic: str, items: list[tuple[str, CloudEvent]]) -> None: ...


def categorized_event(item: Categorized) -> CloudEvent:
    """The CloudEvent of one categorisation: its id is a function of the fact (the same result of the
    same rules for the same operation is the same event), and whether it names a category is in clear
    beside the sealed data (the dashboard's categorised share needs no user's key)."""
    payload = item.payload
    data = payload.model_dump(mode="json")
    # the month only files the result (the importer's categorisation sheets): not part of the fact
    fact = {k: v for k, v in data.items() if k != "month"}
    return CloudEvent.new(
        service=SERVICE,
        name="operation.categorized",
        data=data,
        user_id=payload.user_id,
        correlation_id=item.correlation_id,
        subject=payload.operation_id,
        event_id=deterministic_event_id(
            "operation.categorized",
            payload.user_id,
            payload.operation_id,
            str(payload.rules_version),
            content_hash(fact),
        ),
        extensions={HAS_CATEGORY: "true" if payload.category is not None else "false"},
    )


class CategorizationPublisher:
    """The `Categorizations` port on Kafka: banksync.categorizations.v1, keyed by user and account."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def announce(self, items: Sequence[Categorized]) -> None:
        for start in range(0, len(items), PUBLISH_CHUNK):
            await self.publisher.publish_many(
                CATEGORIZATIONS,
                [
                    (account_key(item.payload.user_id, item.payload.account_id), categorized_event(item))
                    for item in items[start : start + PUBLISH_CHUNK]
                ],
            )


def operations_messages(batch: Sequence[Incoming]) -> list[OperationsMessage]:
    """The records of banksync.operations.v1 the categorizer reads (shared.contract.catalog:
    CATEGORIZER_OPERATION_READS), as the handlers' messages, in order."""
    found: list[OperationsMessage] = []
    for incoming in batch:
        if isinstance(incoming.data, OperationEvent):
            found.append(OperationChanged(incoming.event.name, incoming.data, incoming.event.correlationid))
        elif incoming.event.name == "account.deleted":
            user_id, account_id = account_of(incoming)
            found.append(AccountRemoved(user_id, account_id, incoming.event.correlationid))
    return found


def account_of(incoming: Incoming) -> tuple[str, str]:
    """The user and account of an `account.*` event: from its data when it says, else from its key."""
    data = incoming.data.model_dump()
    found = data.get("account")
    account: dict[str, Any] = found if isinstance(found, dict) else {}
    user_id = data.get("user_id") or incoming.event.userid
    account_id = data.get("account_id") or account.get("account_id") or account.get("id")
    if not account_id and ":" in incoming.key:
        account_id = incoming.key.split(":", 1)[1]
    if not account_id:
        raise PoisonRecord("account event without an account id (in its data or its key)")
    return str(user_id), str(account_id)
