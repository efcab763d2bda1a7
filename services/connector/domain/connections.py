"""Linked banks: the aggregator user behind an app user, the activations, the connections as kept here
and as the aggregator answers them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from services.connector.domain.accounts import AccountsFollowed, BankAccount
from services.connector.domain.failures import Failure, SyncError, SyncState, classify_connection_error
from shared.contract.payloads import Bank


def connection_key(user_id: str, connection_id: str) -> str:
    """Connections are keyed per user: aggregator ids are the aggregator's, not a global truth here."""
    return f"{user_id}:{connection_id}"


@dataclass(frozen=True)
class AggregatorUser:
    """The aggregator's user of an app user, with its permanent token, encrypted (TokenCipher)."""

    user_id: str
    token_enc: str
    id_user: str = ""


@dataclass(frozen=True)
class Activation:
    """A webview state issued to a user: used once, by the callback that links (or reconnects) a bank."""

    nonce: str
    user_id: str
    used: bool = False


@dataclass(frozen=True)
class WebviewLink:
    """Where to send the browser (the aggregator's webview) and the signed state it comes back with."""

    connect_url: str
    state: str


@dataclass(frozen=True)
class AggregatorConnection:
    """A connection as the aggregator answers it (Powens' `/users/me/connections`, `expand=all_accounts`)."""

    id: str
    connector_id: str = ""
    # Powens' `error`, else its `state`: what stops the connection (None when the bank let it through)
    error: str | None = None
    # when the aggregator last refreshed it (its own clock, as it writes it)
    last_update: str | None = None
    # every account the bank lists (closed ones flagged), None when the answer carried no list
    accounts: tuple[BankAccount, ...] | None = None

    @property
    def failure(self) -> Failure | None:
        return classify_connection_error(self.error) if self.error else None


@dataclass(frozen=True)
class Connection:
    """A linked bank: its accounts and which ones sync, its state, paused or removed."""

    user_id: str
    connection_id: str
    bank: Bank
    accounts: tuple[BankAccount, ...] = ()
    # `error` or `action_needed` while the aggregator's connection fails; None when it works
    state: SyncState | None = None
    error: SyncError | None = None
    paused: bool = False
    removed: bool = False
    linked_at: datetime | None = None
    removed_at: datetime | None = None
    # the aggregator's `last_update` of the refresh a run made: its CONNECTION_SYNCED webhook is no news
    refreshed_update: str | None = None

    @property
    def key(self) -> str:
        return connection_key(self.user_id, self.connection_id)

    @property
    def waiting_on_user(self) -> bool:
        return self.state == SyncState.ACTION_NEEDED

    @property
    def shown_state(self) -> str | None:
        return SyncState.PAUSED.value if self.paused else (self.state.value if self.state else None)

    def account(self, aggregator_account_id: str) -> BankAccount | None:
        return next((a for a in self.accounts if a.aggregator_account_id == aggregator_account_id), None)

    def with_failure(self, failure: Failure | None) -> Connection:
        """The aggregator's verdict on the connection: failing (with what to do), or working."""
        return dataclasses.replace(
            self,
            state=failure.state if failure else None,
            error=failure.as_error() if failure else None,
        )

    def following(self, followed: AccountsFollowed) -> Connection:
        return dataclasses.replace(self, accounts=followed.accounts)

    def changed_fields(self, before: Connection) -> frozenset[str]:
        """The fields that differ from the connection as read: most runs change nothing, and write nothing."""
        return frozenset(
            f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(before, f.name)
        )


def linked_connection(
    user_id: str, found: AggregatorConnection, bank: Bank, accounts: tuple[BankAccount, ...], at: datetime
) -> Connection:
    """A connection just linked in the webview, as the aggregator then shows it."""
    return Connection(user_id, found.id, bank, accounts, linked_at=at).with_failure(found.failure)
