"""Reading a cluster's offsets: committed offsets of consumer groups and log end offsets.

The services use it to report their own consumer lag; the ops tools' `KafkaInspector` builds on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

TopicPartitionKey = tuple[str, int]


class KafkaUnreachable(RuntimeError):
    """The admin client or the offsets consumer could not connect."""


class OffsetReader:
    """An admin client and a group-less consumer (for offsets) on one cluster."""

    def __init__(self, bootstrap: str, *, client_id: str, request_timeout_ms: int = 15000) -> None:
        self.bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=request_timeout_ms
        )
        self.offsets = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=request_timeout_ms,
        )

    async def start(self) -> None:
        try:
            await self.admin.start()
            await self.offsets.start()
        except (KafkaError, OSError) as exc:
            await self.close()
            raise KafkaUnreachable(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc

    async def close(self) -> None:
        for close in (self.offsets.stop, self.admin.close):
            # closing after a failure must not mask it
            with contextlib.suppress(Exception):
                await close()

    async def committed(self, group: str) -> dict[TopicPartitionKey, int]:
        offsets = await self.admin.list_consumer_group_offsets(group)
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}

    async def end_offsets(self, tps: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        wanted = [TopicPartition(t, p) for t, p in tps]
        if not wanted:
            return {}
        ends: dict[TopicPartition, int] = await self.offsets.end_offsets(wanted)
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    async def committed_lag(self, group: str) -> dict[TopicPartitionKey, int]:
        """Log end offset minus committed offset, for each partition the group committed in."""
        committed = await self.committed(group)
        ends = await self.end_offsets(committed)
        return {tp: max(0, ends[tp] - offset) for tp, offset in committed.items() if tp in ends}


@asynccontextmanager
async def offset_reader(bootstrap: str, client_id: str) -> AsyncIterator[OffsetReader]:
    found = OffsetReader(bootstrap, client_id=client_id)
    await found.start()
    try:
        yield found
    finally:
        await found.close()
