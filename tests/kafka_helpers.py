"""Reading topics in tests: everything up to the end offsets at the time of the call."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.contract.envelope import CloudEvent
from shared.kafka import EventPublisher, make_broker
from shared.settings import DEV_TOKEN_KEY
from shared.vault import BlockingOpener, Shredded, is_sealed


@dataclass
class _Vault:
    """The users' keys of one set of engines (and one BANKSYNC_TOKEN_KEY), and the users not found there."""

    mongodb_url: str
    opener: BlockingOpener
    misses: set[str] = field(default_factory=set)


# the vaults of the engines the tests started (tests/conftest.py, private engines, stacks with their own
# token key): where the services keep the users' data keys
_VAULTS: list[_Vault] = []


def use_vault(mongodb_url: str, token_key: str = DEV_TOKEN_KEY) -> None:
    """Records of services started with this `BANKSYNC_TOKEN_KEY` on these engines open from now on."""
    _VAULTS.append(_Vault(mongodb_url, BlockingOpener(mongodb_url, token_key, timeout_ms=5000)))


def drop_vault(mongodb_url: str) -> None:
    """Engines about to stop: their vault is asked no more."""
    for vault in [v for v in _VAULTS if v.mongodb_url == mongodb_url]:
        _VAULTS.remove(vault)
        vault.opener.close()


def opened(value: bytes | None) -> CloudEvent:
    """A record value as the services read it: sealed payloads opened with the user's key (from whichever
    vault holds it). Raises ValueError for what is no CloudEvent, and for a record whose key no vault
    gives (an erased user)."""
    if not _VAULTS:
        return CloudEvent.from_json_bytes(value or b"")
    user = _VAULTS[0].opener.user_of(value)
    for vault in list(_VAULTS):
        if user in vault.misses:
            continue
        try:
            event = vault.opener.open(value)
        except ValueError:
            if not is_sealed(json.loads(value or b"")):
                raise
            event = Shredded(user, "")  # that vault cannot be read now: the key is not to be had there
        if not isinstance(event, Shredded):
            return event
        vault.misses.add(user)
    raise ValueError(f"the data key of {user} is in no vault (erased)")


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
            out.append((key, opened(value), headers))
        except ValueError:
            continue
    return out


async def events_where(
    bootstrap: str, topic: str, keep: Callable[[str, CloudEvent], bool]
) -> list[tuple[str, CloudEvent]]:
    return [(key, event) for key, event, _ in await read_all(bootstrap, topic) if keep(key, event)]


def dlq_origin(record: Any) -> tuple[str, int, int]:
    """Where a DLQ record came from: its `dlq.original_*` headers (topic, partition, offset)."""
    headers = {k: v.decode() for k, v in record.headers}
    return (
        headers.get("dlq.original_topic", ""),
        int(headers.get("dlq.original_partition", -1)),
        int(headers.get("dlq.original_offset", -1)),
    )


async def publish(bootstrap: str, topic: str, items: list[tuple[str, CloudEvent]], client_id: str) -> None:
    """Events (key, event) onto `topic` as a service publishes them, in one producer's session."""
    broker = make_broker(bootstrap, client_id)
    await broker.connect()
    try:
        await EventPublisher(broker).publish_many(topic, items)
    finally:
        await broker.stop()
