"""What `banksync topics` shows and checks: partitions, retention, records and size of every topic,
and whether the contract's topics exist with the retention the contract asks for. Pure functions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ops.textfmt import DAY_MS, duration_ms, size_bytes, table
from shared.contract.topics import TOPICS, TRANSACTIONS_RAW

# contract: "the raw topic keeps at least 400 days, so that one year of history can be rebuilt"
RAW_MIN_RETENTION_MS = 400 * DAY_MS


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    replication_factor: int
    cleanup_policy: str | None
    retention_ms: int | None
    retention_bytes: int | None
    # sum over partitions of (end offset - start offset): records held, counting transaction markers
    records: int
    # bytes on the brokers' log dirs (all replicas), when the broker answered DescribeLogDirs
    size_bytes: int | None
    contract: bool


def retention_kept_forever(info: TopicInfo) -> bool:
    compacted = "compact" in (info.cleanup_policy or "") and "delete" not in (info.cleanup_policy or "")
    return compacted or (info.retention_ms is not None and info.retention_ms < 0)


def contract_problems(infos: Sequence[TopicInfo], expected_partitions: int | None = None) -> list[str]:
    """What is wrong with the contract's topics, in words (empty: all good)."""
    by_name = {info.name: info for info in infos}
    problems: list[str] = []
    for spec in TOPICS:
        info = by_name.get(spec.name)
        if info is None:
            problems.append(f"{spec.name} is missing")
            continue
        if expected_partitions is not None and info.partitions != expected_partitions:
            problems.append(f"{spec.name} has {info.partitions} partitions, expected {expected_partitions}")
    raw = by_name.get(TRANSACTIONS_RAW)
    too_short = raw is not None and (raw.retention_ms is None or raw.retention_ms < RAW_MIN_RETENTION_MS)
    if raw is not None and too_short and not retention_kept_forever(raw):
        problems.append(
            f"{TRANSACTIONS_RAW} keeps {duration_ms(raw.retention_ms)}, the contract needs at least 400d"
        )
    return problems


def format_topics(infos: Sequence[TopicInfo]) -> str:
    rows = [
        (
            info.name,
            info.partitions,
            info.replication_factor,
            info.cleanup_policy,
            "forever" if retention_kept_forever(info) else duration_ms(info.retention_ms),
            info.records,
            size_bytes(info.size_bytes),
            "yes" if info.contract else "no",
        )
        for info in infos
    ]
    return table(("TOPIC", "PARTITIONS", "RF", "CLEANUP", "RETENTION", "RECORDS", "SIZE", "CONTRACT"), rows)


def topics_json(infos: Sequence[TopicInfo]) -> str:
    return json.dumps([asdict(i) for i in infos], indent=2)
