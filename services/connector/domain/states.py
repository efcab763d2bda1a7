"""Each aggregator account's sync state: what the runs and the importer's events leave of it, and the
status the user sees."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.connector.domain.accounts import BankAccount
from services.connector.domain.connections import Connection
from services.connector.domain.failures import STATE_GUIDANCE, SyncError, SyncState
from shared.contract.payloads import AccountBalanceChecked, AccountDeleted


@dataclass(frozen=True)
class LastRun:
    sync_run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    transactions: int = 0


@dataclass(frozen=True)
class BalanceCheck:
    """The importer's latest balance check of the app account fed by this bank account."""

    bank_balance: str | None
    computed_balance: str | None
    balance_gap: str | None
    sync_run_id: str | None = None
    checked_at: datetime | None = None


@dataclass(frozen=True)
class AccountSyncState:
    user_id: str
    aggregator_account_id: str
    connection_id: str | None = None
    # the stored state: `syncing`, `ok`, `error`, `action_needed`, `closed` (None before any)
    state: SyncState | None = None
    # the start of the last good sync: the next one asks for changes since (minus the overlap)
    cursor: datetime | None = None
    last_success_at: datetime | None = None
    last_run: LastRun | None = None
    error: SyncError | None = None
    # set when the app account was deleted: the next sync publishes the bank's whole history again
    reimport: str | None = None
    # the app account this bank account feeds (the importer's), and its last balance check
    account_id: str | None = None
    balance: BalanceCheck | None = None


@dataclass(frozen=True)
class ImporterNote:
    """What a batch of the importer's events says of one bank account, folded in topic order: the app
    account and balance check of the latest event, and the re-import mark of the latest deletion (None:
    no deletion in the batch, the mark is left as it is)."""

    user_id: str
    aggregator_account_id: str
    account_id: str | None
    balance: BalanceCheck | None
    reimport: str | None = None


def importer_notes(
    items: Sequence[tuple[str, AccountDeleted | AccountBalanceChecked]], now: datetime
) -> list[ImporterNote]:
    """An app account deleted marks its bank account for a whole re-import at its next sync (whatever
    triggers it); a balance check is kept for the sync status. Items are (event id, data), in topic
    order; manual accounts (no bank account) are left out."""
    notes: dict[tuple[str, str], ImporterNote] = {}
    for event_id, item in items:
        if not item.aggregator_account_id:
            continue  # a manual account: nothing at the bank to import again
        key = (item.user_id, item.aggregator_account_id)
        before = notes.get(key)
        mark = before.reimport if before else None
        if isinstance(item, AccountDeleted):
            notes[key] = ImporterNote(*key, account_id=None, balance=None, reimport=event_id)
        else:
            check = BalanceCheck(
                item.bank_balance, item.computed_balance, item.balance_gap, item.sync_run_id, now
            )
            notes[key] = ImporterNote(*key, account_id=item.account_id, balance=check, reimport=mark)
    return list(notes.values())


def current_state(
    conn: Connection, account: BankAccount, state: AccountSyncState | None, active: bool
) -> SyncState:
    """The state as it truly is: `syncing` while a run is queued or running, `never_synced` before its
    first success, `closed` once the bank closed it, a dead run's `syncing` not believed."""
    if conn.paused:
        return SyncState.PAUSED
    stored = state.state if state else None
    if account.closed or stored == SyncState.CLOSED:
        return SyncState.CLOSED
    if active:
        return SyncState.SYNCING  # queued or running
    if stored == SyncState.SYNCING:
        # the run that said so is gone without an outcome (its process died); it is asked again
        stored = SyncState.ERROR if state and state.error else None
    if stored in (SyncState.ERROR, SyncState.ACTION_NEEDED):
        return stored
    if conn.waiting_on_user:
        return SyncState.ACTION_NEEDED
    if state is None or state.last_success_at is None:
        return SyncState.NEVER_SYNCED
    return SyncState.OK


@dataclass(frozen=True)
class AccountStatus:
    """One selected account's status, with what the user can do and the last balance check."""

    aggregator_account_id: str
    account_id: str | None
    connection_id: str
    state: SyncState
    action: str
    message: str
    last_success_at: datetime | None
    last_run: LastRun | None
    error: SyncError | None
    reimport_pending: bool
    balance: BalanceCheck | None


def account_status(
    conn: Connection, account: BankAccount, state: AccountSyncState | None, active: bool
) -> AccountStatus:
    current = current_state(conn, account, state, active)
    stored_error = (state.error if state else None) or conn.error
    error = stored_error if current in (SyncState.ERROR, SyncState.ACTION_NEEDED) else None
    action, message = STATE_GUIDANCE[current]
    if error is not None:
        message = error.message or message
    return AccountStatus(
        aggregator_account_id=account.aggregator_account_id,
        account_id=state.account_id if state else None,
        connection_id=conn.connection_id,
        state=current,
        action=(error.action if error else "") or action.value,
        message=message,
        last_success_at=state.last_success_at if state else None,
        last_run=state.last_run if state else None,
        error=error,
        reimport_pending=bool(state and state.reimport),
        balance=state.balance if state else None,
    )
