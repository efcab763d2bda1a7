"""The contract's Kafka topics, with the partitions and retention they are created with."""

from __future__ import annotations

from dataclasses import dataclass

ENTITLEMENTS = "banksync.entitlements.v1"
SYNC_REQUESTS = "banksync.sync-requests.v1"
CONNECTIONS = "banksync.connections.v1"
TRANSACTIONS_RAW = "banksync.transactions.raw.v1"
SYNC_STATUS = "banksync.sync-status.v1"
OPERATIONS = "banksync.operations.v1"
CATEGORIZATIONS = "banksync.categorizations.v1"
DLQ = "banksync.dlq.v1"

DAY_MS = 24 * 3600 * 1000

# topics whose payloads carry a user's bank data (memos, amounts, IBANs, balances, payees): their `data` is
# sealed with the user's key (shared.vault); erasing the user destroys the key
SEALED_TOPICS = frozenset({CONNECTIONS, TRANSACTIONS_RAW, OPERATIONS, CATEGORIZATIONS})


@dataclass(frozen=True)
class TopicSpec:
    name: str
    retention_ms: int
    # compacted topics keep the last record of each key forever
    compacted: bool = False

    def config(self) -> dict[str, str]:
        if self.compacted:
            return {"cleanup.policy": "compact"}
        return {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}


TOPICS: tuple[TopicSpec, ...] = (
    # the rights of each user must outlive any retention: the connector's projection is rebuilt from it
    TopicSpec(ENTITLEMENTS, retention_ms=-1),
    TopicSpec(SYNC_REQUESTS, retention_ms=7 * DAY_MS),
    TopicSpec(CONNECTIONS, retention_ms=-1),
    # the source of truth for what the bank said: a year must stay rebuildable (contract: >= 400 days)
    TopicSpec(TRANSACTIONS_RAW, retention_ms=400 * DAY_MS),
    TopicSpec(SYNC_STATUS, retention_ms=30 * DAY_MS),
    TopicSpec(OPERATIONS, retention_ms=400 * DAY_MS),
    TopicSpec(CATEGORIZATIONS, retention_ms=400 * DAY_MS),
    TopicSpec(DLQ, retention_ms=90 * DAY_MS),
)
