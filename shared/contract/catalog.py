"""Every contract topic and the events on it, with the payload model of each event's `data`, who
writes it and which consumer groups read it (and with which model: a consumer may read less than is
written). Producers, consumers, the AsyncAPI document, the dashboard and the ops tools all take their
names from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.contract.payloads import (
    AccountBalanceChecked,
    AccountClosed,
    AccountCreated,
    AccountDeleted,
    AccountDiscovered,
    AccountEventData,
    AccountSelectionChanged,
    AccountSynced,
    ConnectionLinked,
    ConnectionRemoved,
    ConnectionStateChanged,
    EntitlementChanged,
    NightlyOverran,
    OperationCategorized,
    OperationEvent,
    Payload,
    ReplayRequested,
    SyncFailed,
    SyncRequested,
    SyncStarted,
    SyncSucceeded,
    TransactionObserved,
    UserErased,
    UserErasureRequested,
)
from shared.contract.topics import (
    CATEGORIZATIONS,
    CONNECTIONS,
    DLQ,
    ENTITLEMENTS,
    OPERATIONS,
    SYNC_REQUESTS,
    SYNC_STATUS,
    TRANSACTIONS_RAW,
)

# The consumer groups fixed by the contract (their default names: what `make up` runs; each service's
# settings can rename its own).
CONNECTOR_SYNC_GROUP = "connector-sync"
CONNECTOR_ENTITLEMENTS_GROUP = "connector-entitlements"
CONNECTOR_IMPORTER_EVENTS_GROUP = "connector-importer-events"
IMPORTER_GROUP = "importer"
IMPORTER_CATEGORIZATIONS_GROUP = "importer-categorizations"
IMPORTER_CONNECTIONS_GROUP = "importer-connections"
CATEGORIZER_GROUP = "categorizer"

# What each consumer validates `data` with, by event name (events it does not name it leaves alone).
# the bank's records of the raw topic (lines, and the balance after them): what a replay imports again
IMPORTER_RAW_LINE_READS: dict[str, type[Payload]] = {
    "transaction.observed": TransactionObserved,
    "account.synced": AccountSynced,
}
# the importer's raw consumer: the bank's records, and the replays to run in order with them
IMPORTER_RAW_READS: dict[str, type[Payload]] = {
    **IMPORTER_RAW_LINE_READS,
    "replay.requested": ReplayRequested,
}
IMPORTER_CONNECTION_READS: dict[str, type[Payload]] = {"account.discovered": AccountDiscovered}
CATEGORIZER_OPERATION_READS: dict[str, type[Payload]] = {
    "operation.imported": OperationEvent,
    "operation.updated": OperationEvent,
    "operation.reconciled": OperationEvent,
    "operation.deleted": OperationEvent,
    "account.deleted": AccountEventData,
}
# deletions (a whole re-import at the next sync), balance checks (the sync status shows the gap)
CONNECTOR_OPERATION_READS: dict[str, type[Payload]] = {
    "account.deleted": AccountDeleted,
    "account.balance_checked": AccountBalanceChecked,
}


@dataclass(frozen=True)
class EventDoc:
    name: str
    model: type[Payload]
    # who writes it, where not the topic's producer
    producer: str | None = None


@dataclass(frozen=True)
class ConsumerDoc:
    service: str
    # None where the consumer group is the service's own business (not fixed by the contract)
    group: str | None
    # event name -> the model the consumer validates `data` with (it may read less than is written)
    models: tuple[tuple[str, type[Payload]], ...]

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.models)


def reads(service: str, group: str | None, models: dict[str, type[Payload]]) -> ConsumerDoc:
    return ConsumerDoc(service, group, tuple(models.items()))


@dataclass(frozen=True)
class TopicDoc:
    name: str
    key: str
    producer: str
    summary: str
    events: tuple[EventDoc, ...]
    consumers: tuple[ConsumerDoc, ...] = ()

    def event(self, name: str) -> EventDoc:
        return next(e for e in self.events if e.name == name)


CATALOG: tuple[TopicDoc, ...] = (
    TopicDoc(
        ENTITLEMENTS,
        "user id",
        "entitlements",
        "The resulting rights of a user after each change of plan or option (kept forever); erasures: "
        "ops asks to erase a user (`user.erasure_requested`, the user's data key already destroyed) and "
        "each service answers once it removed its documents (`user.erased`, written by every service).",
        (
            EventDoc("entitlement.changed", EntitlementChanged),
            EventDoc("user.erasure_requested", UserErasureRequested),
            EventDoc("user.erased", UserErased),
        ),
        (
            reads(
                "connector",
                CONNECTOR_ENTITLEMENTS_GROUP,
                {"entitlement.changed": EntitlementChanged},
            ),
            *(
                reads(service, f"{service}-erasures", {"user.erasure_requested": UserErasureRequested})
                for service in ("entitlements", "connector", "importer", "categorizer")
            ),
            reads("entitlements", "entitlements-erasures-answers", {"user.erased": UserErased}),
        ),
    ),
    TopicDoc(
        SYNC_REQUESTS,
        "user id",
        "connector",
        "One sync run requested for a user (nightly, on demand, webhook or activation).",
        (EventDoc("sync.requested", SyncRequested),),
        (
            reads(
                "connector",
                CONNECTOR_SYNC_GROUP,
                {"sync.requested": SyncRequested},
            ),
        ),
    ),
    TopicDoc(
        CONNECTIONS,
        "user id",
        "connector",
        "Bank connections and their accounts, as the aggregator and the user change them.",
        (
            EventDoc("connection.linked", ConnectionLinked),
            EventDoc("connection.state_changed", ConnectionStateChanged),
            EventDoc("connection.removed", ConnectionRemoved),
            EventDoc("account.discovered", AccountDiscovered),
            EventDoc("account.closed", AccountClosed),
            EventDoc("account.selection_changed", AccountSelectionChanged),
        ),
        (reads("importer", IMPORTER_CONNECTIONS_GROUP, IMPORTER_CONNECTION_READS),),
    ),
    TopicDoc(
        TRANSACTIONS_RAW,
        "<user id>:<aggregator account id>",
        "connector",
        "What the bank said, line by line, as the aggregator sent it, and after the lines of each account's "
        "successful sync its balance (`account.synced`): the source of truth for replay (kept at least "
        "400 days). The importer's API adds `replay.requested` (ops asks to rebuild one account, not "
        "sealed): on the account's partition, the importer that owns it runs the replay in order with the "
        "lines.",
        (
            EventDoc("transaction.observed", TransactionObserved),
            EventDoc("account.synced", AccountSynced),
            EventDoc("replay.requested", ReplayRequested, producer="importer"),
        ),
        (reads("importer", IMPORTER_GROUP, IMPORTER_RAW_READS),),
    ),
    TopicDoc(
        SYNC_STATUS,
        "<user id>:<aggregator account id>",
        "connector",
        "Each account's sync: started, then succeeded or failed (with the aggregator's code); and, keyed "
        "`nightly`, a night that did not finish inside its window.",
        (
            EventDoc("sync.started", SyncStarted),
            EventDoc("sync.succeeded", SyncSucceeded),
            EventDoc("sync.failed", SyncFailed),
            EventDoc("nightly.overran", NightlyOverran),
        ),
    ),
    TopicDoc(
        OPERATIONS,
        "<user id>:<account id>",
        "importer",
        "Operations of the app accounts after dedup, reconciliation and account mapping "
        "(`operation.created`: a manual operation the user added; `account.balance_checked`: an account's "
        "operations checked against the bank's balance after a sync).",
        (
            EventDoc("operation.imported", OperationEvent),
            EventDoc("operation.updated", OperationEvent),
            EventDoc("operation.reconciled", OperationEvent),
            EventDoc("operation.deleted", OperationEvent),
            EventDoc("operation.created", OperationEvent),
            EventDoc("account.created", AccountCreated),
            EventDoc("account.deleted", AccountDeleted),
            EventDoc("account.balance_checked", AccountBalanceChecked),
        ),
        (
            reads("categorizer", CATEGORIZER_GROUP, CATEGORIZER_OPERATION_READS),
            # deletions (a whole re-import at the next sync), balance checks (the sync status shows the gap)
            reads(
                "connector",
                CONNECTOR_IMPORTER_EVENTS_GROUP,
                CONNECTOR_OPERATION_READS,
            ),
        ),
    ),
    TopicDoc(
        CATEGORIZATIONS,
        "<user id>:<account id>",
        "categorizer",
        "Payee and category recognised for an operation, and why (payee, keyword, user or built-in rule).",
        (EventDoc("operation.categorized", OperationCategorized),),
        (
            reads(
                "importer",
                IMPORTER_CATEGORIZATIONS_GROUP,
                {"operation.categorized": OperationCategorized},
            ),
        ),
    ),
)

DLQ_DOC = (
    f"{DLQ}: records a consumer could not parse, validate or handle. Key, value and headers are the "
    "original record's; the consumer adds the headers dlq.original_topic, dlq.original_partition, "
    "dlq.original_offset, dlq.error, dlq.service and dlq.failed_at. `banksync dlq redrive` appends a "
    "redrive mark (empty value, headers dlq.redrive_of=<partition>:<offset>, dlq.redriven_to, "
    "dlq.redriven_at) in the same transaction as the record it sends back."
)


def topic_doc(name: str) -> TopicDoc:
    return next(t for t in CATALOG if t.name == name)


def event_names() -> list[str]:
    return [event.name for topic in CATALOG for event in topic.events]
