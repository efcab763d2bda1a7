"""Consuming contract topics with the contract's failure rules, written once for every service.

- A record that is not a valid CloudEvent, or whose `data` does not validate for its type, goes to
  `banksync.dlq.v1` at once, with its original topic, partition, offset and the reason.
- A handler failure is retried a bounded number of times, record by record; what still fails goes to
  the DLQ and the partition moves on.
- A sealed record whose user was erased (its key destroyed, see shared.vault) is skipped and counted
  (`banksync_shredded_records_total`): neither a DLQ entry nor an error.
- The engines being unreachable (MongoDB down, Kafka away) is not a bad record: the batch is retried
  until they answer, and nothing is committed meanwhile, so nothing is lost.
Offsets are committed only after the batch is handled (auto-commit off, the batch acknowledged by
hand once handled, or rewound when it fails), so a killed process re-reads what it had not finished:
handlers are idempotent.

Replicas share a topic's partitions through the consumer group. When partitions move (a replica
joins, leaves or is presumed dead), `HandOver` holds the rebalance until the batch in hand is done:
Kafka lets no member take a partition before every member has given its partitions up, so the new
owner never starts on records the old one is still writing. A replica paused past the session timeout
is not waited for (the group goes on without it); what it writes after it wakes is refused by the
fencing of the writes themselves (see the importer's `src_rev`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.message import StreamMessage
from pydantic import BaseModel, ValidationError
from pymongo.errors import AutoReconnect, ConnectionFailure, NetworkTimeout, ServerSelectionTimeoutError

from shared.contract.envelope import CloudEvent, event_type
from shared.contract.topics import DLQ
from shared.logging import bind_context, clear_context, get_logger
from shared.metrics import ERRORS, EVENTS_CONSUMED, HANDLER_LATENCY
from shared.vault import EventSealer, KeyDoesNotUnwrap, NotOpened, Shredded

log = get_logger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    KafkaConnectionError,
    KafkaTimeoutError,
    ConnectionError,
    TimeoutError,
)

DLQ_HEADER_PREFIX = "dlq."


@dataclass(frozen=True)
class Incoming:
    """One consumed record, parsed: the event, its validated data, and where it came from."""

    event: CloudEvent
    data: BaseModel
    key: str
    topic: str
    partition: int
    offset: int
    record: ConsumerRecord[bytes, bytes]


class PoisonRecord(Exception):
    """Raise from a handler for a record that can never succeed (it goes to the DLQ at once)."""


BatchHandler = Callable[[list[Incoming]], Awaitable[None]]

# how long a rebalance may wait for the batch in hand: a batch stuck on an engine that does not answer
# must not hold every member of the group (Kafka's own bound is the rebalance timeout, 5 minutes)
HAND_OVER_WAIT_S = 30.0


class HandOver(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions given up only once the batch in hand is handled; each change of ownership logged."""

    def __init__(self, service: str, topic: str, group_id: str, wait_s: float = HAND_OVER_WAIT_S) -> None:
        self.service = service
        self.topic = topic
        self.group_id = group_id
        self.wait_s = wait_s
        self.idle = asyncio.Event()
        self.idle.set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.idle.wait(), self.wait_s)
        except TimeoutError:
            log.warning(
                "partitions_handed_over_mid_batch",
                topic=self.topic,
                group=self.group_id,
                partitions=sorted(tp.partition for tp in revoked),
                waited_s=self.wait_s,
            )
            return
        log.info(
            "partitions_revoked",
            topic=self.topic,
            group=self.group_id,
            partitions=sorted(tp.partition for tp in revoked),
            waited_s=round(time.perf_counter() - started, 3),
        )

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions_assigned",
            topic=self.topic,
            group=self.group_id,
            partitions=sorted(tp.partition for tp in assigned),
        )


def dlq_headers(record: ConsumerRecord[bytes, bytes], service: str, error: str) -> dict[str, str]:
    original = {k: v.decode(errors="replace") for k, v in (record.headers or ()) if not k.startswith("dlq.")}
    return {
        **original,
        f"{DLQ_HEADER_PREFIX}original_topic": record.topic,
        f"{DLQ_HEADER_PREFIX}original_partition": str(record.partition),
        f"{DLQ_HEADER_PREFIX}original_offset": str(record.offset),
        f"{DLQ_HEADER_PREFIX}error": error[:2000],
        f"{DLQ_HEADER_PREFIX}service": service,
        f"{DLQ_HEADER_PREFIX}failed_at": datetime.now(UTC).isoformat(),
    }


# consumer group -> topics, of every TopicConsumer subscribed in this process (for the lag gauge)
SUBSCRIPTIONS: dict[str, set[str]] = {}


class TopicConsumer:
    """Parses, validates and dispatches batches from one topic; see the module docstring."""

    def __init__(
        self,
        broker: KafkaBroker,
        service: str,
        topic: str,
        models: dict[str, type[BaseModel]],
        handle: BatchHandler,
        *,
        max_attempts: int = 3,
        retry_base_s: float = 0.2,
        transient_backoff_cap_s: float = 5.0,
        sealer: EventSealer | None = None,
    ) -> None:
        self.broker = broker
        # opens sealed payloads; without one (tests of plain records), a sealed record is not valid
        self.sealer = sealer
        self.service = service
        self.topic = topic
        self.models = models
        self.handle = handle
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.transient_backoff_cap_s = transient_backoff_cap_s

    def subscribe(
        self,
        group_id: str,
        *,
        max_records: int = 500,
        auto_offset_reset: Literal["latest", "earliest", "none"] = "earliest",
        max_poll_interval_s: float = 300,
    ) -> None:
        """`max_poll_interval_s`: how long one batch may take before Kafka gives the partitions to another
        member (a process that stops answering at all is noticed sooner, by the session timeout)."""
        SUBSCRIPTIONS.setdefault(group_id, set()).add(self.topic)
        hand_over = HandOver(self.service, self.topic, group_id)

        async def on_batch(body: Any, message: KafkaMessage) -> None:
            hand_over.idle.clear()
            try:
                await self.process(_records_of(message.raw_message))
                # committed before the partitions can be handed over: the next owner starts after it
                await message.ack()
            except Exception:
                await message.nack()  # back to the batch's first records: read again, never skipped
                raise
            finally:
                hand_over.idle.set()

        self.broker.subscriber(
            self.topic,
            group_id=group_id,
            batch=True,
            max_records=max_records,
            batch_timeout_ms=200,
            auto_offset_reset=auto_offset_reset,
            max_poll_interval_ms=int(max_poll_interval_s * 1000),
            ack_policy=AckPolicy.MANUAL,
            # raw values through: faststream's own decoding (by content-type) would raise on a poison
            # record before this wrapper sees it, and the batch would be redelivered forever
            decoder=_raw_values,
            listener=hand_over,
            title=f"{self.service}:{self.topic}",
        )(on_batch)

    async def process(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        started = time.perf_counter()
        parsed: list[Incoming] = []
        events = await self._until_keys_answer(records)
        for record, event in zip(records, events, strict=True):
            incoming = await self._parse(record, event)
            if incoming is not None:
                parsed.append(incoming)
        if parsed:
            await self._handle_batch(parsed)
        HANDLER_LATENCY.labels(self.service, self.topic).observe(time.perf_counter() - started)

    async def _until_keys_answer(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> list[CloudEvent | Shredded | NotOpened | Exception]:
        delay = 0.5
        while True:
            try:
                return await self._events_of(records)
            except KeyDoesNotUnwrap as exc:
                # a configuration error, not a bad record: loud, and nothing is committed until it is fixed
                ERRORS.labels(self.service, "consumer", "key_does_not_unwrap").inc()
                log.error("vault_key_does_not_unwrap", topic=self.topic, error=str(exc), retry_in_s=delay)
            except TRANSIENT_ERRORS as exc:
                log.warning(
                    "vault_unreachable_waiting", topic=self.topic, error=_short(exc), retry_in_s=delay
                )
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.transient_backoff_cap_s)

    async def _events_of(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> list[CloudEvent | Shredded | NotOpened | Exception]:
        """Each record's event (one key lookup for the batch's sealed records), or why it is none."""
        if self.sealer is not None:
            wanted = {event_type(name) for name in self.models}
            return await self.sealer.open_many(self.topic, [record.value for record in records], wanted)
        events: list[CloudEvent | Shredded | NotOpened | Exception] = []
        for record in records:
            try:
                if record.value is None:
                    raise ValueError("empty record value")
                events.append(CloudEvent.from_json_bytes(record.value))
            except ValueError as exc:
                events.append(exc)
        return events

    async def _parse(
        self, record: ConsumerRecord[bytes, bytes], opened: CloudEvent | Shredded | NotOpened | Exception
    ) -> Incoming | None:
        if isinstance(opened, Shredded):
            # an erased user's record: unreadable by design, not an error
            EVENTS_CONSUMED.labels(self.service, self.topic, "shredded").inc()
            return None
        if isinstance(opened, NotOpened):
            # another producer's event type on a shared topic: not ours to handle (nor to decrypt)
            EVENTS_CONSUMED.labels(self.service, self.topic, "skipped").inc()
            return None
        try:
            if isinstance(opened, Exception):
                raise opened
            event = opened
            model = self.models.get(event.name)
            if model is None:
                # another producer's event type on a shared topic: not ours to handle, not an error
                EVENTS_CONSUMED.labels(self.service, self.topic, "skipped").inc()
                return None
            data = model.model_validate(event.data)
        except (ValidationError, ValueError) as exc:
            await self.dead_letter(record, f"invalid record: {_short(exc)}", "invalid_record")
            return None
        key = record.key.decode(errors="replace") if record.key else ""
        return Incoming(event, data, key, record.topic, record.partition, record.offset, record)

    async def _handle_batch(self, batch: list[Incoming]) -> None:
        try:
            await self._until_engines_answer(batch)
            EVENTS_CONSUMED.labels(self.service, self.topic, "ok").inc(len(batch))
            return
        except PoisonRecord:
            pass
        except Exception as exc:
            log.warning(
                "batch_failed_retrying_one_by_one", topic=self.topic, size=len(batch), error=_short(exc)
            )
        for incoming in batch:
            await self._handle_one(incoming)

    async def _handle_one(self, incoming: Incoming) -> None:
        error, code = "", "handler_failed"
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._until_engines_answer([incoming])
                EVENTS_CONSUMED.labels(self.service, self.topic, "ok").inc()
                return
            except PoisonRecord as exc:
                error, code = f"rejected: {_short(exc)}", "rejected"
                break
            except Exception as exc:
                error, code = f"failed after {attempt} attempts: {_short(exc)}", "handler_failed"
                await asyncio.sleep(self.retry_base_s * 2 ** (attempt - 1))
        await self.dead_letter(incoming.record, error, code)

    async def _until_engines_answer(self, batch: list[Incoming]) -> None:
        delay = 0.5
        while True:
            try:
                clear_context()
                first = batch[0].event
                bind_context(user_id=first.userid, correlation_id=first.correlationid)
                await self.handle(batch)
                return
            except TRANSIENT_ERRORS as exc:
                ERRORS.labels(self.service, "consumer", "engine_unreachable").inc()
                log.warning(
                    "engine_unreachable_waiting", topic=self.topic, error=_short(exc), retry_in_s=delay
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.transient_backoff_cap_s)
            finally:
                clear_context()

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: str, code: str) -> None:
        log.error(
            "record_dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=error,
            code=code,
        )
        EVENTS_CONSUMED.labels(self.service, self.topic, "dead_lettered").inc()
        ERRORS.labels(self.service, "dead_letter", code).inc()
        while True:
            try:
                await self.broker.publish(
                    record.value or b"",
                    topic=DLQ,
                    key=record.key,
                    headers=dlq_headers(record, self.service, error),
                )
                return
            except TRANSIENT_ERRORS as exc:
                log.warning("dlq_unreachable_waiting", error=_short(exc))
                await asyncio.sleep(1)


def _records_of(raw: Any) -> list[ConsumerRecord[bytes, bytes]]:
    return list(raw) if isinstance(raw, tuple | list) else [raw]


async def _raw_values(message: StreamMessage[Any]) -> Any:
    return [record.value for record in _records_of(message.raw_message)]


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        # never the input: it may be a user's memo or amount, and this text goes to logs and DLQ headers
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        text = f"{type(exc).__name__}: {problems}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


def data_of(incoming: Incoming, model: type[Any]) -> Any:
    assert isinstance(incoming.data, model)
    return incoming.data
