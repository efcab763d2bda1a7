"""What the connector's handlers need from the outside, over typed records: its storage (adapters/mongo.py),
the event bus (adapters/kafka.py), the aggregator (adapters/powens.py) and the entitlements service
(adapters/entitlements.py). The in-memory fakes of tests/unit/connector/fakes.py implement them too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from services.connector.domain.connections import (
    Activation,
    AggregatorConnection,
    AggregatorUser,
    Connection,
)
from services.connector.domain.lines import BankLine
from services.connector.domain.nightly import LiveConnection
from services.connector.domain.rights import Rights
from services.connector.domain.states import AccountSyncState, ImporterNote
from services.connector.domain.sync_run import AccountOutcome, FetchWindow
from shared.contract.envelope import CloudEvent
from shared.contract.payloads import Bank

# --- storage ----------------------------------------------------------------------------------------


class AggregatorUsers(Protocol):
    async def aggregator_user(self, user_id: str) -> AggregatorUser | None: ...

    async def save_aggregator_user(self, user: AggregatorUser, now: datetime) -> AggregatorUser:
        """First writer wins (two concurrent activations share one aggregator user): returns the kept one."""
        ...


class Activations(Protocol):
    async def record_activation(self, nonce: str, user_id: str, now: datetime) -> None: ...

    async def activation(self, nonce: str) -> Activation | None: ...

    async def use_activation(self, nonce: str, user_id: str, now: datetime) -> bool:
        """Uses the state up; False when it was used already (by a concurrent attempt)."""
        ...


class Connections(Protocol):
    async def save_connection(self, conn: Connection) -> None:
        """Links (or links again) a connection: its link fields, whole."""
        ...

    async def update_connection(self, conn: Connection, fields: frozenset[str]) -> None:
        """Writes these fields (Connection's field names) of the connection, and only them."""
        ...

    async def connection(self, user_id: str, connection_id: str) -> Connection | None: ...

    async def connection_for_webhook(self, aggregator_user_id: str, connection_id: str) -> Connection | None:
        """A webhook names the aggregator's user and connection: whose is it."""
        ...

    async def user_connections(self, user_id: str) -> list[Connection]:
        """The user's connections not removed, in key order."""
        ...

    async def live_connections(self) -> list[LiveConnection]:
        """Every connection not removed, of every user (the night reads them all, once)."""
        ...

    async def set_paused(self, user_id: str, paused: bool) -> list[str]:
        """Pauses or resumes all of a user's live connections; returns the connection ids that changed."""
        ...


class AccountStates(Protocol):
    async def account_states(self, user_id: str) -> list[AccountSyncState]: ...

    async def mark_syncing(
        self, user_id: str, connection_id: str, account_ids: Sequence[str], run_id: str, started_at: datetime
    ) -> None:
        """The accounts a run is about to sync say `syncing`, in one command."""
        ...

    async def mark_closed(self, user_id: str, connection_id: str, account_ids: Sequence[str]) -> None:
        """Accounts the bank closed say `closed` from now on, in one command."""
        ...

    async def record_outcomes(self, user_id: str, outcomes: Sequence[AccountOutcome]) -> None:
        """The accounts' final states of a run, in one command (lifting the re-import marks honoured)."""
        ...

    async def note_importer_facts(self, notes: Sequence[ImporterNote]) -> None:
        """What the importer said of accounts of any users, in one command; accounts never synced here
        (other deployments' users) get nothing."""
        ...


class Fingerprints(Protocol):
    async def known_fingerprints(self, account: str, transaction_ids: list[str]) -> dict[str, str]:
        """The fingerprints last published for these lines of one aggregator account (`<user>:<account>`)."""
        ...

    async def remember_fingerprints(self, account: str, prints: dict[str, str], known: set[str]) -> None:
        """Records the fingerprints just published; `known` are the lines that had one before."""
        ...


class RunLeases(Protocol):
    """One run at a time per connection (key): a lease, renewed while the run reads, let go at its end."""

    async def claim_run(self, connection: str, run_id: str, now: datetime, lease: timedelta) -> str:
        """Makes the run the connection's unless another live one holds it; returns the holder."""
        ...

    async def claim_runs(
        self, wanted: dict[str, str], now: datetime, lease: timedelta, *, night: str | None = None
    ) -> dict[str, str]:
        """`claim_run` for many connections (connection → run id) at once; each one's holder."""
        ...

    async def renew_run(self, connection: str, run_id: str, now: datetime, lease: timedelta) -> str:
        """For a run claimed when it was requested, and while it reads: its lease starts again; returns
        the holder (another run's id: this one lost the connection and must stop)."""
        ...

    async def release_run(self, connection: str, run_id: str, now: datetime) -> None: ...

    async def active_run(self, connection: str, now: datetime) -> str | None: ...

    async def unfinished_night(self, night: str) -> int:
        """Connections of that night's run still claimed: their sync is queued or running."""
        ...


class RightsProjection(Protocol):
    async def projected_rights(self, user_id: str) -> Rights | None: ...

    async def all_projected_rights(self) -> dict[str, bool]:
        """Every user's projected `allowed` (the night reads them all, once)."""
        ...

    async def project_rights(self, user_id: str, rights: Rights) -> bool:
        """Stores the rights unless a newer version is there already; True when stored."""
        ...


class WebhookSignatures(Protocol):
    async def remember_webhook_signature(self, digest: str, now: datetime, keep: timedelta) -> bool:
        """Records an accepted signature (kept `keep`); False when it was there already: a replay."""
        ...


class UserData(Protocol):
    async def erase_user(self, user_id: str) -> int:
        """Deletes every document of the user here; returns how many."""
        ...


class ConnectorStore(
    AggregatorUsers,
    Activations,
    Connections,
    AccountStates,
    Fingerprints,
    RunLeases,
    RightsProjection,
    WebhookSignatures,
    UserData,
    Protocol,
):
    """Everything the connector keeps (one adapter implements it all)."""


# --- the event bus ----------------------------------------------------------------------------------


class Announcer(Protocol):
    """Publishes CloudEvents keyed by their partition key; a batch keeps each key's order."""

    async def publish(self, topic: str, key: str, event: CloudEvent) -> None: ...

    async def publish_many(self, topic: str, items: list[tuple[str, CloudEvent]]) -> None: ...


# --- outside HTTP services --------------------------------------------------------------------------


class Aggregator(Protocol):
    """The aggregator (Powens, or the sandbox that speaks it). Raises domain.failures.AggregatorError."""

    @property
    def client_id(self) -> str:
        """Our application at the aggregator (public: it is in the webview's URL)."""
        ...

    async def create_user(self) -> tuple[str, str]:
        """A new aggregator user: its permanent token and its id."""
        ...

    async def exchange_code(self, code: str, redirect_uri: str) -> tuple[str, str]:
        """A webview's code, exchanged (once): the token and the id of the user it was issued for."""
        ...

    async def temporary_code(self, token: str) -> str: ...

    async def connectors(self) -> list[Bank]: ...

    async def connections(self, token: str) -> list[AggregatorConnection]: ...

    async def connection(self, token: str, connection_id: str) -> AggregatorConnection:
        """The connection as the aggregator last refreshed it (no new refresh)."""
        ...

    async def sync_connection(self, token: str, connection_id: str) -> AggregatorConnection:
        """Asks the aggregator to refresh the connection now."""
        ...

    async def delete_user(self, token: str) -> None: ...

    async def delete_connection(self, token: str, connection_id: str) -> None: ...

    async def set_account_enabled(self, token: str, account_id: str, enabled: bool) -> None: ...

    def transactions(self, token: str, account_id: str, window: FetchWindow) -> AsyncIterator[list[BankLine]]:
        """Pages of an account's lines in the window."""
        ...

    async def aclose(self) -> None: ...


class Entitlements(Protocol):
    async def rights(self, user_id: str) -> Rights:
        """The user's rights now; raises domain.rights.EntitlementsUnavailable when it cannot answer."""
        ...

    async def aclose(self) -> None: ...
