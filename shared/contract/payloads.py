"""The `data` of each event type on the contract's topics, as pydantic models.

Producers build these; consumers validate with them, and a record that does not validate goes to
the DLQ. Extra fields are allowed (producers may add fields, consumers ignore what they do not know).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.money import to_amount
from shared.text import CONTROL_CHARACTERS


class Payload(BaseModel):
    model_config = ConfigDict(extra="allow")


class Bank(Payload):
    id: str
    name: str


class AggregatorTransaction(Payload):
    """A Powens transaction as received (field names are Powens')."""

    id: int | str
    id_account: int | str
    date: dt.date
    value: Decimal
    original_wording: str = ""
    simplified_wording: str | None = None
    wording: str | None = None
    rdate: dt.date | None = None
    vdate: dt.date | None = None
    type: str | None = None
    coming: bool = False
    active: bool = True
    deleted: dt.datetime | None = None
    last_update: dt.datetime | None = None
    original_currency: Any = None

    @field_validator("value", mode="before")
    @classmethod
    def exact_cents(cls, value: object) -> Decimal:
        return to_amount(value)

    @field_validator("original_wording", "simplified_wording", "wording")
    @classmethod
    def printable(cls, value: str | None) -> str | None:
        """A control character in a bank memo is noise (a scraper's NUL, a stray CR/LF): a space."""
        return CONTROL_CHARACTERS.sub(" ", value) if value else value

    @field_validator("date")
    @classmethod
    def plausible_date(cls, value: dt.date) -> dt.date:
        if not (dt.date(1990, 1, 1) <= value <= dt.date(2100, 1, 1)):
            raise ValueError(f"implausible bank date {value.isoformat()}")
        return value


class FromAccountSync(Payload):
    """What every record of banksync.transactions.raw.v1 says of the sync of one aggregator account."""

    user_id: str
    connection_id: str
    aggregator_account_id: str
    bank: Bank
    sync_run_id: str
    initial: bool
    currency: str = "EUR"


class TransactionObserved(FromAccountSync):
    """`transaction.observed` on banksync.transactions.raw.v1."""

    transaction: AggregatorTransaction


class AccountSynced(FromAccountSync):
    """`account.synced` on banksync.transactions.raw.v1: one account's sync succeeded. It comes after all
    the lines that sync published (same key), with what the bank then says of the account: `balance` is
    the aggregator account's balance (booked lines only), `coming` the sum of its pending lines."""

    balance: Decimal | None = None
    coming: Decimal | None = None
    transactions: int = Field(ge=0)
    # the aggregator's account type (`checking`, `savings`, `card`...): a deferred debit card's balance is
    # what its next debit takes, not the sum of its booked lines
    type: str | None = None

    @field_validator("balance", "coming", mode="before")
    @classmethod
    def exact_cents(cls, value: object) -> Decimal | None:
        return None if value is None else to_amount(value)


class ReplayRequested(Payload):
    """`replay.requested` on banksync.transactions.raw.v1, written by the importer's API: ops asks to
    rebuild one aggregator account from this topic. Keyed `<user id>:<aggregator account id>` like the
    account's lines, it lands on their partition: the importer that owns the partition reads it in order
    with them and imports again the account's records from the partition's start (or from the first
    record at or after `since`) up to this record; what comes after it is consumed as usual. Its status is
    `GET /v1/ops/replays/{replay_id}` on any importer. It carries no bank data: its `data` is not sealed."""

    replay_id: str = Field(min_length=1, max_length=200)
    user_id: str = Field(min_length=1)
    aggregator_account_id: str = Field(min_length=1)
    since: dt.date | None = None
    requested_at: dt.datetime


class AccountDeleted(Payload):
    """`account.deleted` on banksync.operations.v1: the user deleted an app account and its operations (a
    replay or a re-sync brings a synced one back, as a new generation; the connector re-imports the bank
    account that fed it at its next sync)."""

    user_id: str
    account_id: str
    aggregator_account_id: str | None = None
    generation: int = 1
    operations_deleted: int | None = None


class AccountBalanceChecked(Payload):
    """`account.balance_checked` on banksync.operations.v1: the importer checked an app account's
    operations against the bank's balance after a sync (`balance_gap` = bank - computed; not zero is an
    alarm). Amounts are decimal strings."""

    user_id: str
    account_id: str
    aggregator_account_id: str
    sync_run_id: str
    bank_balance: str
    computed_balance: str
    balance_gap: str
    currency: str = "EUR"
    generation: int = 1


class SyncRequested(Payload):
    """`sync.requested` on banksync.sync-requests.v1."""

    user_id: str
    sync_run_id: str
    reason: Literal["nightly", "on_demand", "webhook", "activation"]
    requested_at: dt.datetime
    aggregator_account_ids: list[str] | None = None
    connection_id: str | None = None


class PayeeRef(Payload):
    id: str
    name: str


class CategorizedBy(Payload):
    source: Literal["user", "global", "manual"]
    payee_id: str | None = None
    keyword: str | None = None


class TransferRef(Payload):
    """The other leg of a transfer between two accounts of the same user."""

    operation_id: str
    account_id: str


class Operation(Payload):
    """An operation as the importer's API shows it; `operation.*` events carry it whole."""

    id: str
    account_id: str
    date: dt.date
    amount: str
    currency: str
    memo: str
    label: str
    status: Literal["pending", "booked"]
    source: Literal["bank", "manual"]
    reconciled: bool = False
    payee: PayeeRef | None = None
    category: str | None = None
    categorized_by: CategorizedBy | None = None
    aggregator_transaction_id: str | None = None
    # one leg of a transfer between the user's own accounts: the other leg (absent or null otherwise)
    transfer: TransferRef | None = None


class OperationEvent(Payload):
    """`operation.imported|updated|reconciled|deleted` on banksync.operations.v1."""

    user_id: str
    operation: Operation
    aggregator_account_id: str | None = None


class OperationCategorized(Payload):
    """`operation.categorized` on banksync.categorizations.v1: none recognised is payee/category null."""

    user_id: str
    account_id: str
    operation_id: str
    payee: PayeeRef | None
    category: str | None
    # `manual`: the user's own correction, which later rule results never overwrite
    source: Literal["user", "global", "manual"] | None
    keyword: str | None
    # the categorizer's rule-set version for this user; a newer one replaces an older one
    rules_version: int = Field(default=0, ge=0)
    # the operation's month (`YYYY-MM`), where the importer files the result; absent from older events
    month: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}$")
    # the other leg when the operation is one leg of a transfer between the user's own accounts (then
    # the category is `epargne` unless the user chose one); null when it is not, absent from older events
    transfer: TransferRef | None = None
    # how many times the user chose for this operation (a correction, or forgetting one, raises it): a
    # categorisation with a higher `choice_version` replaces one with a lower, whatever their sources;
    # with equal ones, `manual` beats rule results. 0 (absent) on older events.
    choice_version: int = Field(default=0, ge=0)


class EntitlementChange(Payload):
    """What changed: the action, and the plan changed to or the option subscribed or cancelled."""

    action: str  # plan_changed, option_subscribed, option_cancelled
    plan: str | None = None
    option: str | None = None


class EntitlementChanged(Payload):
    """`entitlement.changed` on banksync.entitlements.v1: the resulting rights, whole."""

    user_id: str
    plan: Literal["standard", "premium"]
    options: list[str]
    auto_sync_allowed: bool
    reason: str | None
    code: str
    version: int
    change: EntitlementChange | None = None
    changed_at: dt.datetime | None = None
    # who made the change: the billing backend or ops token's `sub` and scope (absent on older events)
    actor: dict[str, str] | None = None


class UserErasureRequested(Payload):
    """`user.erasure_requested` on banksync.entitlements.v1: ops asked to erase a user (RGPD art. 17).
    The user's data key is already destroyed; every service removes its documents of the user."""

    user_id: str
    erase_id: str
    requested_at: dt.datetime


class UserErased(Payload):
    """`user.erased` on banksync.entitlements.v1: one service removed every document it held of the user."""

    user_id: str
    erase_id: str
    service: str
    documents_deleted: int
    erased_at: dt.datetime


# The connector's connection, account and sync-status events.


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
    # the connector always writes it; a reader that has no use for it (the importer) takes a view without
    selected: bool = True
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


class AccountEventData(Payload):
    """`account.*` on banksync.operations.v1 as the categorizer reads it: only the user and account
    matter (else the key)."""

    user_id: str | None = None
    account_id: str | None = None
