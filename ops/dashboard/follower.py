"""The dashboard's two Kafka loops. Both depend on Kafka only, never on a service, and start over
(with a growing pause) whenever Kafka fails, so the page keeps working across restarts.

- `follow`: a consumer without a group (nothing committed, no rebalances, other groups untouched)
  assigned every partition of the contract's topics, starting `history` back in time (so a restarted
  dashboard shows the syncs still running), then following the end. After a failure it resumes from
  the positions it had reached, so nothing is counted twice.
- `poll`: every few seconds, consumer lag (ops.kafka, as `banksync lag`) and the DLQ's size.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition

from ops import dlq as dead_letters
from ops.dashboard.state import DashboardState
from ops.kafka import KafkaInspector
from shared.contract.topics import DLQ, TOPICS
from shared.logging import get_logger

log = get_logger(__name__)

FOLLOWED = tuple(spec.name for spec in TOPICS)


class Follower:
    def __init__(
        self,
        bootstrap: str,
        state: DashboardState,
        *,
        topics: Sequence[str] = FOLLOWED,
        history: timedelta = timedelta(minutes=30),
        refresh_partitions_s: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.state = state
        self.topics = tuple(topics)
        self.history = history
        self.refresh_partitions_s = refresh_partitions_s
        self.positions: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dashboard_follow_failed", error=repr(exc), retry_in_s=delay)
                self.state.set_kafka("unreachable", f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                delay = 0.5

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="banksync-dashboard",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="latest",
        )
        metadata = KafkaInspector(self.bootstrap, request_timeout_ms=10000)
        try:
            await metadata.start()
            await consumer.start()
            assigned = await self._assign(consumer, metadata, set())
            refreshed = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                for tp, records in batches.items():
                    for record in records:
                        self.state.apply(
                            record.topic,
                            record.key.decode(errors="replace") if record.key is not None else None,
                            record.value,
                            record.timestamp,
                        )
                    if records:
                        self.positions[tp] = records[-1].offset + 1
                if time.monotonic() - refreshed > self.refresh_partitions_s:
                    assigned = await self._assign(consumer, metadata, assigned)
                    refreshed = time.monotonic()
        finally:
            await consumer.stop()
            await metadata.close()

    async def _assign(
        self, consumer: AIOKafkaConsumer, metadata: KafkaInspector, assigned: set[TopicPartition]
    ) -> set[TopicPartition]:
        """Assigns the followed topics' partitions (new ones too); each starts where it left off,
        or `history` back for a partition never read."""
        partitions = await metadata.partitions(self.topics)
        found = {TopicPartition(topic, p) for topic, numbers in partitions.items() for p in numbers}
        if found == assigned:
            return assigned
        consumer.assign(sorted(found))
        fresh = [tp for tp in found if tp not in self.positions]
        for tp in found - set(fresh):
            consumer.seek(tp, self.positions[tp])
        if fresh:
            since_ms = int((time.time() - self.history.total_seconds()) * 1000)
            starts = await consumer.offsets_for_times({tp: since_ms for tp in fresh})
            ends = await consumer.end_offsets(fresh)
            for tp in fresh:
                found_offset = starts.get(tp)
                offset = found_offset.offset if found_offset is not None else ends[tp]
                consumer.seek(tp, offset)
                self.positions[tp] = offset
        log.info("dashboard_following", partitions=len(found))
        return found


async def poll(bootstrap: str, state: DashboardState, interval_s: float = 3.0) -> None:
    """Consumer lag and DLQ size into `state`, every `interval_s`; marks Kafka down when it fails."""
    kafka: KafkaInspector | None = None
    dlq_ends: dict[TopicPartition, int] | None = None
    try:
        while True:
            try:
                if kafka is None:
                    kafka = KafkaInspector(bootstrap, request_timeout_ms=5000)
                    await kafka.start()
                snapshots, rows = await asyncio.wait_for(kafka.lag(), timeout=15)
                state.set_lag(snapshots, rows)
                partitions = (await kafka.partitions([DLQ])).get(DLQ, [])
                tps = [TopicPartition(DLQ, p) for p in partitions]
                starts, ends = await kafka.offset_range(tps)
                records = sum(ends[tp] - starts[tp] for tp in tps)
                waiting: int | None = None
                by_topic: dict[str, int] | None = None
                if ends != dlq_ends:
                    # the DLQ is small; read it again only when it changed
                    view = await asyncio.wait_for(dead_letters.load(kafka), timeout=30)
                    waiting = len(view.waiting)
                    by_topic = {}
                    for letter in view.waiting:
                        topic = letter.original_topic or "?"
                        by_topic[topic] = by_topic.get(topic, 0) + 1
                    dlq_ends = ends
                state.set_dlq(records, waiting, by_topic)
                state.set_kafka("connected")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dashboard_poll_failed", error=repr(exc))
                state.set_kafka("unreachable", f"{type(exc).__name__}: {exc}")
                if kafka is not None:
                    await kafka.close()
                kafka = None
                dlq_ends = None
            await asyncio.sleep(interval_s)
    finally:
        if kafka is not None:
            await kafka.close()
