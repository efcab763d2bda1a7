"""Every contract topic and the events on it, with the payload model of each event's `data`, who
writes it and which consumer groups read it. The AsyncAPI document and the dashboard come from here.

Payload models are the ones the services validate with (shared.schemas, the categorizer's own);
for the events that are published from plain dicts (the connector's `sync.*`, `connection.*`,
`account.*`), the models below restate what the connector's handlers publish, lenient like every
payload (extra fields allowed).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pydantic import BaseModel

from services.categorizer.app import OPERATION_MODELS as CATEGORIZER_MODELS
from services.categorizer.app import CategorizerSettings
from services.connector.app import IMPORTER_EVENTS as CONNECTOR_IMPORTER_EVENTS
from services.connector.app import ConnectorSettings
from services.importer.app import ImporterSettings
from services.importer.handlers import RAW_MODELS as IMPORTER_RAW_MODELS
from shared.schemas import (
    AccountBalanceChecked,
    AccountDeleted,
    AccountSynced,
    Bank,
    EntitlementChanged,
    OperationCategorized,
    OperationEvent,
    Payload,
    SyncRequested,
    TransactionObserved,
    UserErased,
    UserErasureRequested,
)
from shared.topics import (
    CATEGORIZATIONS,
    CONNECTIONS,
    DLQ,
    ENTITLEMENTS,
    OPERATIONS,
    SYNC_REQUESTS,
    SYNC_STATUS,
    TRANSACTIONS_RAW,
)


class ConnectionLinked(Payload):
    """`connection.linked`: a bank was linked through the aggregator's webview."""

    user_id: str
    connection_id: str
    bank: Bank
    state: str | None = None


class AccountView(Payload):
    aggregator_account_id: str
    name: str
    iban: str | None = None
    type: str | None = None
    balance: str | None = None
    coming: str | None = None
    currency: str = "EUR"
    selected: bool
    closed: bool = False


class AccountDiscovered(Payload):
    """`account.discovered`: an account the aggregator declared for a linked bank."""

    user_id: str
    connection_id: str
    bank: Bank
    account: AccountView


class AccountSelectionChanged(Payload):
    """`account.selection_changed`: the accounts the user chose to sync, whole."""

    user_id: str
    connection_id: str
    selected: list[str]


class ConnectionStateChanged(Payload):
    """`connection.state_changed`: paused or resumed (entitlement changes), or back from the reconnect
    webview (`reconnected`: the bank let the user in; `state` is then `active`)."""

    user_id: str
    connection_id: str
    state: str
    paused: bool | None = None
    reconnected: bool | None = None


class AccountClosed(Payload):
    """`account.closed`: the bank reports the account deleted (or no longer lists it): it is no longer
    synced, and its operations stay."""

    user_id: str
    connection_id: str
    aggregator_account_id: str


class NightlyOverran(Payload):
    """`nightly.overran` (key `nightly`): the night's window closed with syncs still queued or running."""

    night: str
    window_end: dt.datetime
    unfinished_connections: int
    overran: bool


class ConnectionRemoved(Payload):
    """`connection.removed`: the user unlinked a bank; what was imported stays."""

    user_id: str
    connection_id: str


class SyncStatusBase(Payload):
    user_id: str
    connection_id: str
    aggregator_account_id: str
    sync_run_id: str
    reason: str


class SyncStarted(SyncStatusBase):
    """`sync.started`: one account's sync began (`initial`: first sync, about a year of history)."""

    started_at: dt.datetime
    initial: bool = False


class SyncSucceeded(SyncStatusBase):
    """`sync.succeeded`: `transactions` lines were published on the raw topic."""

    started_at: dt.datetime
    finished_at: dt.datetime
    transactions: int
    initial: bool = False


class SyncFailed(SyncStatusBase):
    """`sync.failed`: `code` is the aggregator's connection state where there is one."""

    code: str
    message: str
    retryable: bool
    finished_at: dt.datetime | None = None


class AppAccount(Payload):
    account_id: str
    bank_id: str | None = None
    name: str
    iban: str | None = None
    balance: str | None = None
    currency: str = "EUR"
    aggregator_account_id: str | None = None
    # the latest balance check (see `account.balance_checked`): null before the first one
    bank_balance: str | None = None
    computed_balance: str | None = None
    balance_gap: str | None = None


class AccountCreated(Payload):
    """`account.created`: the importer created an app account (first import of a bank account)."""

    user_id: str
    account: AppAccount
    aggregator_account_id: str | None = None
    generation: int = 1


@dataclass(frozen=True)
class EventDoc:
    name: str
    model: type[Payload]


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


def _default(settings: type[BaseModel], name: str) -> str:
    """A consumer group's default name, from the service's settings (what `make up` runs)."""
    return str(settings.model_fields[name].default)


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
                _default(ConnectorSettings, "entitlements_group"),
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
                _default(ConnectorSettings, "sync_workers_group"),
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
    ),
    TopicDoc(
        TRANSACTIONS_RAW,
        "<user id>:<aggregator account id>",
        "connector",
        "What the bank said, line by line, as the aggregator sent it, and after the lines of each account's "
        "successful sync its balance (`account.synced`): the source of truth for replay (kept at least "
        "400 days).",
        (
            EventDoc("transaction.observed", TransactionObserved),
            EventDoc("account.synced", AccountSynced),
        ),
        (reads("importer", _default(ImporterSettings, "importer_group_id"), IMPORTER_RAW_MODELS),),
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
            reads("categorizer", _default(CategorizerSettings, "categorizer_group_id"), CATEGORIZER_MODELS),
            # deletions (a whole re-import at the next sync), balance checks (the sync status shows the gap)
            reads(
                "connector",
                _default(ConnectorSettings, "importer_events_group"),
                CONNECTOR_IMPORTER_EVENTS,
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
                _default(ImporterSettings, "importer_categorizations_group_id"),
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
