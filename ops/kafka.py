"""Everything the ops tools ask Kafka, through aiokafka: topic metadata and configs, offsets, log-dir
sizes, consumer groups and their committed offsets, and reading a whole (small) topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Int64, Schema, String

from ops.errors import OpsError
from ops.lag import GroupSnapshot, LagRow, Member, all_rows, partitions_needing_ends
from ops.topics import TopicInfo
from shared.contract.topics import TOPICS
from shared.kafka_offsets import KafkaUnreachable, OffsetReader, TopicPartitionKey

CLIENT_ID = "banksync-ops"
CONTRACT_TOPICS = frozenset(spec.name for spec in TOPICS)


# DescribeLogDirs (API key 35) is not wrapped by aiokafka's admin client; v1 is the oldest version
# Kafka 4 still accepts and is enough for sizes.
class DescribeLogDirsResponseV1(Response):  # type: ignore[misc]
    API_KEY = 35
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            Array(
                ("error_code", Int16),
                ("log_dir", String("utf-8")),
                (
                    "topics",
                    Array(
                        ("name", String("utf-8")),
                        (
                            "partitions",
                            Array(
                                ("partition_index", Int32),
                                ("partition_size", Int64),
                                ("offset_lag", Int64),
                                ("is_future_key", Boolean),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )


class DescribeLogDirsRequestV1(RequestStruct):  # type: ignore[misc]
    API_KEY = 35
    API_VERSION = 1
    RESPONSE_TYPE = DescribeLogDirsResponseV1
    SCHEMA = Schema(("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))


class DescribeLogDirsRequest(Request[DescribeLogDirsRequestV1]):  # type: ignore[misc]
    API_KEY = 35

    def __init__(self, topics: list[tuple[str, list[int]]] | None) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[DescribeLogDirsRequestV1]) -> DescribeLogDirsRequestV1:
        return request_struct_class(self._topics)


class KafkaInspector(OffsetReader):
    """An admin client and a group-less consumer (for offsets and reads) on one cluster."""

    def __init__(self, bootstrap: str, *, request_timeout_ms: int = 15000) -> None:
        super().__init__(bootstrap, client_id=CLIENT_ID, request_timeout_ms=request_timeout_ms)

    async def start(self) -> None:
        try:
            await super().start()
        except KafkaUnreachable as exc:
            raise OpsError(str(exc)) from exc

    # --- topics --------------------------------------------------------------------------------
    async def topic_names(self, include_internal: bool = False) -> list[str]:
        names = await self.admin.list_topics()
        return sorted(n for n in names if include_internal or not n.startswith("__"))

    async def partitions(self, topics: Iterable[str]) -> dict[str, list[int]]:
        described = await self.admin.describe_topics(list(topics))
        out: dict[str, list[int]] = {}
        for topic in described:
            if topic["error_code"] != 0:
                continue
            out[topic["topic"]] = sorted(p["partition"] for p in topic["partitions"])
        return out

    async def topic_infos(self, topics: Sequence[str] | None = None) -> list[TopicInfo]:
        names = list(topics) if topics is not None else await self.topic_names()
        if not names:
            return []
        described = {t["topic"]: t for t in await self.admin.describe_topics(names) if t["error_code"] == 0}
        configs = await self.topic_configs(list(described))
        tps = [TopicPartition(name, p["partition"]) for name, t in described.items() for p in t["partitions"]]
        starts, ends = await self.offset_range(tps)
        sizes = await self.log_dir_sizes()
        infos: list[TopicInfo] = []
        for name in sorted(described):
            parts = described[name]["partitions"]
            conf = configs.get(name, {})
            infos.append(
                TopicInfo(
                    name=name,
                    partitions=len(parts),
                    replication_factor=max((len(p["replicas"]) for p in parts), default=0),
                    cleanup_policy=conf.get("cleanup.policy"),
                    retention_ms=_int_or_none(conf.get("retention.ms")),
                    retention_bytes=_int_or_none(conf.get("retention.bytes")),
                    records=sum(
                        ends[TopicPartition(name, p["partition"])]
                        - starts[TopicPartition(name, p["partition"])]
                        for p in parts
                    ),
                    size_bytes=sizes.get(name) if sizes is not None else None,
                    contract=name in CONTRACT_TOPICS,
                )
            )
        return infos

    async def topic_configs(self, topics: Sequence[str]) -> dict[str, dict[str, str]]:
        if not topics:
            return {}
        responses: Any = await self.admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
        )
        out: dict[str, dict[str, str]] = {}
        for response in responses:
            for error_code, _message, _type, name, entries in response.resources:
                if error_code == 0:
                    out[name] = {entry[0]: entry[1] for entry in entries}
        return out

    async def offset_range(
        self, tps: Sequence[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        if not tps:
            return {}, {}
        starts: dict[TopicPartition, int] = await self.offsets.beginning_offsets(list(tps))
        ends: dict[TopicPartition, int] = await self.offsets.end_offsets(list(tps))
        return starts, ends

    async def log_dir_sizes(self) -> dict[str, int] | None:
        """Bytes per topic summed over every broker's log dirs; None if the brokers do not say."""
        try:
            cluster = await self.admin.describe_cluster()
            sizes: dict[str, int] = {}
            for broker in cluster["brokers"]:
                response: Any = await self.admin._send_request(
                    DescribeLogDirsRequest(None), broker["node_id"]
                )
                for error_code, _log_dir, topics in response.results:
                    if error_code != 0:
                        continue
                    for name, partitions in topics:
                        sizes[name] = sizes.get(name, 0) + sum(p[1] for p in partitions)
            return sizes
        except Exception:
            return None

    # --- consumer groups -----------------------------------------------------------------------
    async def group_ids(self) -> list[str]:
        listed = await self.admin.list_consumer_groups()
        return sorted({str(entry[0]) for entry in listed})

    async def group_snapshot(self, group: str) -> GroupSnapshot:
        state = "Unknown"
        assignments: dict[TopicPartitionKey, Member] = {}
        described: Any = await self.admin.describe_consumer_groups([group])
        for response in described:
            for entry in response.groups:
                error_code, group_id, group_state, protocol_type, _protocol, members = entry[:6]
                if error_code != 0 or group_id != group:
                    continue
                state = group_state or state
                if protocol_type not in ("consumer", ""):
                    continue
                for member_id, client_id, client_host, _metadata, assignment in members:
                    for topic, partition in decode_assignment(assignment):
                        assignments[(topic, partition)] = Member(member_id, client_host, client_id)
        return GroupSnapshot(group, state, await self.committed(group), assignments)

    async def group_snapshots(self, groups: Sequence[str] | None = None) -> list[GroupSnapshot]:
        ids = list(groups) if groups is not None else await self.group_ids()
        return list(await asyncio.gather(*(self.group_snapshot(g) for g in ids)))

    async def lag(self, groups: Sequence[str] | None = None) -> tuple[list[GroupSnapshot], list[LagRow]]:
        snapshots = await self.group_snapshots(groups)
        ends = await self.end_offsets(partitions_needing_ends(snapshots))
        return snapshots, all_rows(snapshots, ends)

    # --- reading -------------------------------------------------------------------------------
    async def read_topic(
        self,
        topic: str,
        *,
        partitions: Iterable[int] | None = None,
        isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed",
        timeout_s: float = 60.0,
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Every record now in `topic` (up to the end offsets at the time of the call)."""
        known = (await self.partitions([topic])).get(topic)
        if known is None:
            raise OpsError(f"topic {topic} does not exist")
        wanted = sorted(set(known) & set(partitions)) if partitions is not None else known
        tps = [TopicPartition(topic, p) for p in wanted]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=CLIENT_ID,
            group_id=None,
            enable_auto_commit=False,
            isolation_level=isolation_level,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            if not tps:
                return []
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
            out: list[ConsumerRecord[bytes, bytes]] = []
            pending = {tp for tp in tps if ends[tp] > 0}
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
            async with asyncio.timeout(timeout_s):
                while pending:
                    batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
                    for tp, records in batches.items():
                        out.extend(r for r in records if r.offset < ends[tp])
                    pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
            return sorted(out, key=lambda r: (r.partition, r.offset))
        finally:
            await consumer.stop()


def decode_assignment(raw: bytes) -> list[TopicPartitionKey]:
    """The partitions in a classic consumer-protocol member assignment (empty if it is not one)."""
    if not raw:
        return []
    try:
        decoded: Any = ConsumerProtocolMemberAssignment.decode(raw)
    except Exception:
        return []
    return [(topic, partition) for topic, partitions in decoded.assignment for partition in partitions]


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@asynccontextmanager
async def inspector(bootstrap: str) -> AsyncIterator[KafkaInspector]:
    found = KafkaInspector(bootstrap)
    await found.start()
    try:
        yield found
    finally:
        await found.close()
