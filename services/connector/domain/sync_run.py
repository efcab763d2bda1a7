"""One sync run: what it is (user, run id, reason, correlation, the accounts asked for), each account's
part in it (connection, bank, window, start), the events that tell it and the outcome it leaves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.connector.domain.accounts import BankAccount
from services.connector.domain.connections import Connection
from services.connector.domain.failures import Failure, SyncError, SyncState
from services.connector.domain.lines import BankLine, line_id
from services.connector.domain.states import AccountSyncState, LastRun
from shared.contract.envelope import account_key, deterministic_event_id
from shared.contract.payloads import (
    AccountSynced,
    AggregatorTransaction,
    Bank,
    SyncFailed,
    SyncRequested,
    SyncStarted,
    SyncSucceeded,
    TransactionObserved,
)


@dataclass(frozen=True)
class FetchWindow:
    """What to ask the aggregator: everything on a first sync, changes since the cursor afterwards."""

    initial: bool
    last_update: datetime | None
    # set when the app account was deleted since the last sync: every line is published again, and the
    # mark (this value) is cleared only if still the same when the sync succeeds
    reimport: str | None = None

    def params(self) -> dict[str, str]:
        if self.last_update is None:
            return {}
        return {"last_update": self.last_update.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")}


def fetch_window(cursor: datetime | None, overlap: timedelta) -> FetchWindow:
    """The cursor is the start of the last good sync; the overlap absorbs clock skew and late writes."""
    if cursor is None:
        return FetchWindow(initial=True, last_update=None)
    return FetchWindow(initial=False, last_update=cursor - overlap)


def window_of(state: AccountSyncState | None, overlap: timedelta) -> FetchWindow:
    """From the cursor; from the start when the app account was deleted since (`reimport`), as a first
    sync: the bank's whole history is published again, whatever was published before."""
    if state is not None and state.reimport:
        return FetchWindow(initial=True, last_update=None, reimport=state.reimport)
    return fetch_window(state.cursor if state else None, overlap)


@dataclass(frozen=True)
class SyncRun:
    """A requested run of one user's connections (all of them, one, or some accounts)."""

    user_id: str
    run_id: str
    reason: str
    correlation_id: str
    # the accounts asked for (None: every selected one) and the one connection asked for (None: all)
    aggregator_account_ids: tuple[str, ...] | None = None
    connection_id: str | None = None

    @classmethod
    def of(cls, request: SyncRequested, correlation_id: str) -> SyncRun:
        wanted = request.aggregator_account_ids
        return cls(
            request.user_id,
            request.sync_run_id,
            request.reason,
            correlation_id,
            tuple(wanted) if wanted is not None else None,
            request.connection_id,
        )

    def requested(self, at: datetime) -> SyncRequested:
        """The `sync.requested` that asks the workers for this run (every field said, null or not)."""
        wanted = self.aggregator_account_ids
        return SyncRequested.model_validate(
            {
                "user_id": self.user_id,
                "sync_run_id": self.run_id,
                "reason": self.reason,
                "requested_at": at,
                "aggregator_account_ids": list(wanted) if wanted is not None else None,
                "connection_id": self.connection_id,
            }
        )

    def wants(self, conn: Connection) -> bool:
        """Every live connection of the user is read (its accounts may have changed at the bank, even
        with none selected), except: paused ones, others than the one asked for, those waiting on the
        user at night (only the reconnect webview helps them), and those without an account asked for."""
        if conn.paused or (self.connection_id and conn.connection_id != self.connection_id):
            return False
        if self.reason == "nightly" and conn.waiting_on_user:
            return False
        wanted = self.aggregator_account_ids
        return wanted is None or any(a.aggregator_account_id in wanted for a in conn.accounts)

    def accounts_to_sync(self, accounts: Sequence[BankAccount]) -> list[BankAccount]:
        wanted = self.aggregator_account_ids
        return [
            a
            for a in accounts
            if a.selected and not a.closed and (wanted is None or a.aggregator_account_id in wanted)
        ]

    def selected_meanwhile(
        self, before: Sequence[Connection], after: Sequence[Connection]
    ) -> dict[str, list[str]]:
        """Accounts of the connections this run wanted that were selected after it read them (connection
        id → aggregator account ids): the run did not sync them, and a request made for them meanwhile
        joined this run, so they need a run of their own. Only a selection made meanwhile counts: accounts
        selected before, which a run asked for some accounts left alone, are not this run's concern."""
        seen = {
            conn.connection_id: {
                a.aggregator_account_id for a in conn.accounts if a.selected and not a.closed
            }
            for conn in before
            if self.wants(conn)
        }
        found: dict[str, list[str]] = {}
        for conn in after:
            if conn.connection_id not in seen or conn.paused:
                continue
            new = [
                a.aggregator_account_id
                for a in conn.accounts
                if a.selected and not a.closed and a.aggregator_account_id not in seen[conn.connection_id]
            ]
            if new:
                found[conn.connection_id] = new
        return found

    @property
    def reads_only(self) -> bool:
        """A webhook's run reads what the aggregator just refreshed: asking it to refresh again would send
        another CONNECTION_SYNCED, and so on, forever."""
        return self.reason == "webhook"

    def failed_status(
        self, connection_id: str, account_id: str, failure: Failure, finished_at: datetime
    ) -> SyncFailed:
        return SyncFailed(
            user_id=self.user_id,
            connection_id=connection_id,
            aggregator_account_id=account_id,
            sync_run_id=self.run_id,
            reason=self.reason,
            code=failure.code,
            message=failure.message,
            retryable=failure.retryable,
            finished_at=finished_at,
        )

    def failed(
        self,
        connection_id: str,
        account_id: str,
        failure: Failure,
        started_at: datetime,
        finished_at: datetime,
    ) -> AccountOutcome:
        """A failed sync never moves the cursor: the next one asks again from the last good one."""
        return AccountOutcome(
            account_id,
            connection_id,
            LastRun(self.run_id, started_at, finished_at, 0),
            self.failed_status(connection_id, account_id, failure, finished_at),
            failure=failure,
        )


@dataclass(frozen=True)
class AccountSync:
    """One account's part in a run: the lines since its window, then its completion and its outcome."""

    run: SyncRun
    connection_id: str
    bank: Bank
    account: BankAccount
    window: FetchWindow
    started_at: datetime

    @property
    def account_id(self) -> str:
        return self.account.aggregator_account_id

    @property
    def key(self) -> str:
        """Everything about the account is keyed `<user>:<account>`: its events stay in order."""
        return account_key(self.run.user_id, self.account_id)

    def started(self) -> SyncStarted:
        return SyncStarted(
            user_id=self.run.user_id,
            connection_id=self.connection_id,
            aggregator_account_id=self.account_id,
            sync_run_id=self.run.run_id,
            reason=self.run.reason,
            started_at=self.started_at,
            initial=self.window.initial,
        )

    def observed(self, line: BankLine) -> TransactionObserved:
        """The line as the bank gave it (not validated here: the importer does, and a bad line goes to
        its DLQ instead of stopping the sync)."""
        return TransactionObserved.model_construct(
            user_id=self.run.user_id,
            connection_id=self.connection_id,
            aggregator_account_id=self.account_id,
            bank=self.bank,
            sync_run_id=self.run.run_id,
            initial=self.window.initial,
            currency=self.account.currency or "EUR",
            transaction=AggregatorTransaction.model_construct(**line),
        )

    def observed_id(self, line: BankLine, print_: str) -> str:
        """The same line in the same version is the same event, however often it is published."""
        return deterministic_event_id(
            "transaction.observed", self.run.user_id, self.account_id, line_id(line), print_
        )

    def synced(self, published: int) -> AccountSynced:
        """After the lines, on their key: the bank's balance (booked lines) and pending total as the
        refresh gave them; the importer checks the balance once it has every line."""
        return AccountSynced(
            user_id=self.run.user_id,
            connection_id=self.connection_id,
            aggregator_account_id=self.account_id,
            bank=self.bank,
            sync_run_id=self.run.run_id,
            initial=self.window.initial,
            currency=self.account.currency or "EUR",
            type=self.account.type or "unknown",
            balance=self.account.balance,
            coming=self.account.coming,
            transactions=published,
        )

    def synced_id(self) -> str:
        return deterministic_event_id("account.synced", self.run.user_id, self.account_id, self.run.run_id)

    def succeeded(self, finished_at: datetime, published: int) -> AccountOutcome:
        """The cursor moves to the start of this good sync (the next asks from there, minus the overlap);
        the re-import mark it honoured is lifted with its state (unless a newer deletion replaced it)."""
        return AccountOutcome(
            self.account_id,
            self.connection_id,
            LastRun(self.run.run_id, self.started_at, finished_at, published),
            SyncSucceeded(
                user_id=self.run.user_id,
                connection_id=self.connection_id,
                aggregator_account_id=self.account_id,
                sync_run_id=self.run.run_id,
                reason=self.run.reason,
                started_at=self.started_at,
                finished_at=finished_at,
                transactions=published,
                initial=self.window.initial,
            ),
            cursor=self.started_at,
            reimported=self.window.reimport,
        )

    def failed(self, failure: Failure, finished_at: datetime) -> AccountOutcome:
        return self.run.failed(self.connection_id, self.account_id, failure, self.started_at, finished_at)


@dataclass(frozen=True)
class AccountOutcome:
    """How one account's sync ended: its new state, its last run, and the status event that says so."""

    aggregator_account_id: str
    connection_id: str
    last_run: LastRun
    status: SyncSucceeded | SyncFailed
    failure: Failure | None = None
    # where the next sync starts from: moved by a success only
    cursor: datetime | None = None
    # the `reimport` mark this sync honoured, lifted with its state
    reimported: str | None = None

    @property
    def state(self) -> SyncState:
        return self.failure.state if self.failure else SyncState.OK

    @property
    def error(self) -> SyncError | None:
        return self.failure.as_error() if self.failure else None

    @property
    def transactions(self) -> int:
        return self.last_run.transactions
