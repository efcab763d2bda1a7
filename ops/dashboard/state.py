"""What the dashboard shows, aggregated in memory from the event topics. Pure: records in, snapshot out.

- syncs: one row per `<user>:<aggregator account>`, from `sync.started` (in progress) to
  `sync.succeeded` (ok, with its line count) or `sync.failed` (error, with the aggregator's code);
- failures by code, from `sync.failed` data.code;
- lines per minute: `transaction.observed` (raw lines from the bank) and `operation.imported`,
  bucketed by the record's Kafka timestamp;
- categorisation rate: `operation.categorized` with a non-null category over all of them;
- DLQ size and consumer lag, set from outside (they come from offsets, not from events).
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ops.lag import GroupSnapshot, LagRow
from shared.contract.envelope import EVENT_TYPE_PREFIX, HAS_CATEGORY
from shared.contract.topics import CATEGORIZATIONS, OPERATIONS, SYNC_STATUS, TRANSACTIONS_RAW
from shared.vault import SEALED_CONTENT_TYPE

MINUTES_KEPT = 60
SECONDS_KEPT = 120
ROWS_KEPT = 500
ROWS_SHOWN = 100
STALLED_AFTER = timedelta(minutes=15)


@dataclass
class SyncRow:
    key: str
    user_id: str
    aggregator_account_id: str
    sync_run_id: str | None = None
    reason: str | None = None
    state: str = "syncing"
    initial: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    transactions: int | None = None
    code: str | None = None
    message: str | None = None
    updated_ms: int = 0


@dataclass
class LagTopic:
    topic: str
    lag: int
    partitions: int
    unknown: int


@dataclass
class LagGroup:
    group: str
    state: str
    lag: int
    topics: list[LagTopic]


@dataclass
class DashboardState:
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    rows: OrderedDict[str, SyncRow] = field(default_factory=OrderedDict)
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    failures_by_code: Counter[str] = field(default_factory=Counter)
    observed_per_minute: Counter[int] = field(default_factory=Counter)
    imported_per_minute: Counter[int] = field(default_factory=Counter)
    # per second over the last two minutes, for the "last 60 s" rates
    observed_per_second: Counter[int] = field(default_factory=Counter)
    imported_per_second: Counter[int] = field(default_factory=Counter)
    categorized_total: int = 0
    categorized_with_category: int = 0
    events_by_type: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    last_event_ms: int | None = None
    dlq_records: int | None = None
    dlq_waiting: int | None = None
    dlq_by_topic: dict[str, int] = field(default_factory=dict)
    lag_groups: list[LagGroup] = field(default_factory=list)
    kafka_state: str = "connecting"
    kafka_error: str | None = None
    ops_updated_at: str | None = None
    version: int = 0

    # --- events ----------------------------------------------------------------------------
    def apply(self, topic: str, key: str | None, value: bytes | None, timestamp_ms: int) -> None:
        """One record from a contract topic. Unreadable records are counted, never fatal."""
        try:
            event = json.loads(value or b"")
            type_ = event["type"]
            # a user's bank data is sealed with their key (shared.vault): the dashboard reads the
            # attributes only, and needs no key
            data = {} if event.get("datacontenttype") == SEALED_CONTENT_TYPE else event.get("data") or {}
            if not isinstance(type_, str) or not isinstance(data, dict):
                raise ValueError("not a CloudEvent")
        except (ValueError, KeyError, TypeError):
            self.unreadable += 1
            self.version += 1
            return
        name = type_.removeprefix(EVENT_TYPE_PREFIX).removesuffix(".v1")
        self.events_by_type[name] += 1
        self.last_event_ms = max(self.last_event_ms or 0, timestamp_ms)
        minute = timestamp_ms // 60_000
        second = timestamp_ms // 1000
        if topic == SYNC_STATUS:
            self._sync(name, key, data, timestamp_ms)
        elif topic == TRANSACTIONS_RAW and name == "transaction.observed":
            self.observed_per_minute[minute] += 1
            self.observed_per_second[second] += 1
        elif topic == OPERATIONS and name == "operation.imported":
            self.imported_per_minute[minute] += 1
            self.imported_per_second[second] += 1
        elif topic == CATEGORIZATIONS and name == "operation.categorized":
            self.categorized_total += 1
            if data.get("category") is not None or event.get(HAS_CATEGORY) == "true":
                self.categorized_with_category += 1
        self._trim(minute, second)
        self.version += 1

    def _sync(self, name: str, key: str | None, data: dict[str, Any], timestamp_ms: int) -> None:
        user = str(data.get("user_id") or (key or "?:?").split(":", 1)[0])
        account = str(data.get("aggregator_account_id") or (key or "?:?").split(":", 1)[-1])
        row_key = f"{user}:{account}"
        row = self.rows.pop(row_key, None) or SyncRow(row_key, user, account)
        run = data.get("sync_run_id")
        if name == "sync.started":
            self.started += 1
            row.state = "syncing"
            row.sync_run_id = run
            row.started_at = data.get("started_at")
            row.finished_at = None
            row.transactions = None
            row.code = row.message = None
            row.initial = bool(data.get("initial"))
        elif name == "sync.succeeded":
            self.succeeded += 1
            row.state = "ok"
            row.sync_run_id = run
            row.started_at = data.get("started_at") or row.started_at
            row.finished_at = data.get("finished_at")
            row.transactions = _int(data.get("transactions"))
            row.code = row.message = None
        elif name == "sync.failed":
            self.failed += 1
            code = str(data.get("code") or "unknown")
            self.failures_by_code[code] += 1
            row.state = "error"
            row.sync_run_id = run
            row.finished_at = data.get("finished_at")
            row.transactions = 0
            row.code = code
            row.message = data.get("message")
        else:
            self.rows[row_key] = row
            return
        row.reason = data.get("reason") or row.reason
        row.updated_ms = timestamp_ms
        self.rows[row_key] = row
        while len(self.rows) > ROWS_KEPT:
            self.rows.popitem(last=False)

    def _trim(self, minute: int, second: int) -> None:
        for counter, newest, kept in (
            (self.observed_per_minute, minute, MINUTES_KEPT),
            (self.imported_per_minute, minute, MINUTES_KEPT),
            (self.observed_per_second, second, SECONDS_KEPT),
            (self.imported_per_second, second, SECONDS_KEPT),
        ):
            if len(counter) > kept:
                for old in [k for k in counter if k <= newest - kept]:
                    del counter[old]

    # --- from offsets ----------------------------------------------------------------------
    def set_lag(self, snapshots: list[GroupSnapshot], rows: list[LagRow]) -> None:
        groups: list[LagGroup] = []
        for snapshot in sorted(snapshots, key=lambda s: s.group):
            mine = [r for r in rows if r.group == snapshot.group]
            topics = []
            for topic in sorted({r.topic for r in mine}):
                parts = [r for r in mine if r.topic == topic]
                topics.append(
                    LagTopic(
                        topic,
                        sum(r.lag or 0 for r in parts),
                        len(parts),
                        sum(1 for r in parts if r.lag is None),
                    )
                )
            groups.append(LagGroup(snapshot.group, snapshot.state, sum(t.lag for t in topics), topics))
        self.lag_groups = groups
        self.version += 1

    def set_dlq(self, records: int, waiting: int | None, by_topic: dict[str, int] | None) -> None:
        self.dlq_records = records
        if waiting is not None:
            self.dlq_waiting = waiting
        if by_topic is not None:
            self.dlq_by_topic = by_topic
        self.version += 1

    def set_kafka(self, state: str, error: str | None = None, now: datetime | None = None) -> None:
        changed = (state, error) != (self.kafka_state, self.kafka_error)
        self.kafka_state, self.kafka_error = state, error
        if state == "connected":
            self.ops_updated_at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        if changed or state == "connected":
            self.version += 1

    # --- out -------------------------------------------------------------------------------
    def snapshot(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        current_minute = int(now.timestamp() // 60)
        minutes = [
            {
                "minute": datetime.fromtimestamp(m * 60, UTC).strftime("%H:%M"),
                "observed": self.observed_per_minute.get(m, 0),
                "imported": self.imported_per_minute.get(m, 0),
            }
            for m in range(current_minute - 29, current_minute + 1)
        ]
        rows = [self._shown(row, now) for row in self.rows.values()]
        in_progress = sum(1 for r in rows if r["state"] == "syncing")
        rows.sort(key=lambda r: (r["state"] not in ("syncing", "stalled"), -r["updated_ms"]))
        rate = self.categorized_with_category / self.categorized_total if self.categorized_total else None
        return {
            "generated_at": now.isoformat(timespec="seconds"),
            "following_since": self.started_at.isoformat(timespec="seconds"),
            "version": self.version,
            "kafka": {
                "state": self.kafka_state,
                "error": self.kafka_error,
                "ops_updated_at": self.ops_updated_at,
            },
            "syncs": {
                "in_progress": in_progress,
                "stalled": sum(1 for r in rows if r["state"] == "stalled"),
                "started": self.started,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "failures_by_code": dict(self.failures_by_code.most_common()),
            },
            "accounts": rows[:ROWS_SHOWN],
            "per_minute": minutes,
            "observed_last_60s": _last_60s(self.observed_per_second, now),
            "imported_last_60s": _last_60s(self.imported_per_second, now),
            "categorization": {
                "total": self.categorized_total,
                "categorized": self.categorized_with_category,
                "rate": rate,
            },
            "dlq": {"records": self.dlq_records, "waiting": self.dlq_waiting, "by_topic": self.dlq_by_topic},
            "lag": [asdict(g) for g in self.lag_groups],
            "total_lag": sum(g.lag for g in self.lag_groups),
            "events": dict(sorted(self.events_by_type.items())),
            "unreadable": self.unreadable,
            "last_event_at": (
                datetime.fromtimestamp(self.last_event_ms / 1000, UTC).isoformat(timespec="seconds")
                if self.last_event_ms
                else None
            ),
        }

    @staticmethod
    def _shown(row: SyncRow, now: datetime) -> dict[str, Any]:
        shown = asdict(row)
        if (
            row.state == "syncing"
            and row.updated_ms
            and now - datetime.fromtimestamp(row.updated_ms / 1000, UTC) > STALLED_AFTER
        ):
            shown["state"] = "stalled"
        return shown


def _last_60s(per_second: Counter[int], now: datetime) -> int:
    current = int(now.timestamp())
    return sum(n for second, n in per_second.items() if current - 60 < second <= current)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
