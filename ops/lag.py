"""Consumer lag, computed the way Kafka's ConsumerGroupCommand (`kafka-consumer-groups --describe`)
computes it: for every partition a group has committed an offset for, or has assigned to a member,

    LAG = LOG-END-OFFSET - CURRENT-OFFSET        (`-` where the group never committed)

LOG-END-OFFSET is the partition's high watermark. Pure functions; the Kafka reads are in ops.kafka.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from ops.textfmt import table
from shared.kafka_offsets import TopicPartitionKey

# ConsumerGroupCommand's column names, so the two outputs read the same
HEADERS = (
    "GROUP",
    "TOPIC",
    "PARTITION",
    "CURRENT-OFFSET",
    "LOG-END-OFFSET",
    "LAG",
    "CONSUMER-ID",
    "HOST",
    "CLIENT-ID",
)


@dataclass(frozen=True)
class Member:
    consumer_id: str
    host: str
    client_id: str


@dataclass(frozen=True)
class GroupSnapshot:
    """What the broker says about one group: its state, committed offsets and members' assignments."""

    group: str
    state: str
    committed: Mapping[TopicPartitionKey, int]
    assignments: Mapping[TopicPartitionKey, Member]


@dataclass(frozen=True, order=True)
class LagRow:
    group: str
    topic: str
    partition: int
    current_offset: int | None
    log_end_offset: int | None
    lag: int | None
    consumer_id: str | None = None
    host: str | None = None
    client_id: str | None = None

    def cells(self) -> tuple[object, ...]:
        return (
            self.group,
            self.topic,
            self.partition,
            self.current_offset,
            self.log_end_offset,
            self.lag,
            self.consumer_id,
            self.host,
            self.client_id,
        )


def lag_of(current: int | None, end: int | None) -> int | None:
    """End minus committed; unknown (None) if either is, or if the committed offset is Kafka's -1
    (no offset). Not clamped, exactly as ConsumerGroupCommand computes it."""
    if current is None or end is None or current < 0:
        return None
    return end - current


def group_rows(snapshot: GroupSnapshot, ends: Mapping[TopicPartitionKey, int]) -> list[LagRow]:
    """Rows of one group: assigned partitions (with their member) and committed-but-unassigned ones."""
    rows: list[LagRow] = []
    for tp in sorted(set(snapshot.committed) | set(snapshot.assignments)):
        current = snapshot.committed.get(tp)
        if current is not None and current < 0:
            current = None
        end = ends.get(tp)
        member = snapshot.assignments.get(tp)
        rows.append(
            LagRow(
                group=snapshot.group,
                topic=tp[0],
                partition=tp[1],
                current_offset=current,
                log_end_offset=end,
                lag=lag_of(current, end),
                consumer_id=member.consumer_id if member else None,
                host=member.host if member else None,
                client_id=member.client_id if member else None,
            )
        )
    return rows


def all_rows(snapshots: Iterable[GroupSnapshot], ends: Mapping[TopicPartitionKey, int]) -> list[LagRow]:
    rows: list[LagRow] = []
    for snapshot in sorted(snapshots, key=lambda s: s.group):
        rows.extend(group_rows(snapshot, ends))
    return rows


def partitions_needing_ends(snapshots: Iterable[GroupSnapshot]) -> set[TopicPartitionKey]:
    needed: set[TopicPartitionKey] = set()
    for snapshot in snapshots:
        needed |= set(snapshot.committed) | set(snapshot.assignments)
    return needed


@dataclass(frozen=True)
class GroupTotal:
    group: str
    state: str
    topics: tuple[str, ...]
    lag: int
    unknown_partitions: int


def totals(snapshots: Sequence[GroupSnapshot], rows: Sequence[LagRow]) -> list[GroupTotal]:
    """One line per group: total known lag, and how many partitions have no committed offset yet."""
    out: list[GroupTotal] = []
    for snapshot in sorted(snapshots, key=lambda s: s.group):
        mine = [r for r in rows if r.group == snapshot.group]
        out.append(
            GroupTotal(
                group=snapshot.group,
                state=snapshot.state,
                topics=tuple(sorted({r.topic for r in mine})),
                lag=sum(r.lag or 0 for r in mine),
                unknown_partitions=sum(1 for r in mine if r.lag is None),
            )
        )
    return out


def format_rows(rows: Sequence[LagRow]) -> str:
    return table(HEADERS, [row.cells() for row in rows])


def format_totals(group_totals: Sequence[GroupTotal]) -> str:
    return table(
        ("GROUP", "STATE", "TOPICS", "TOTAL-LAG", "NO-OFFSET"),
        [(t.group, t.state, ",".join(t.topics) or "-", t.lag, t.unknown_partitions) for t in group_totals],
    )


def rows_json(rows: Sequence[LagRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
