"""In-memory stand-ins for the connector's ports (services/connector/ports.py): the store, the event bus,
the aggregator and the entitlements service. Plain dicts and lists, the adapters' rules (first writer
wins, leases that expire, a newer version of rights only), and a record of what was asked of them."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from services.connector.domain.accounts import BankAccount, bank_account_view
from services.connector.domain.connections import (
    Activation,
    AggregatorConnection,
    AggregatorUser,
    Connection,
    connection_key,
)
from services.connector.domain.failures import AggregatorError, SyncState, classify_connection_error
from services.connector.domain.lines import BankLine
from services.connector.domain.nightly import LiveConnection
from services.connector.domain.rights import EntitlementsUnavailable, Rights
from services.connector.domain.states import AccountSyncState, ImporterNote
from services.connector.domain.sync_run import AccountOutcome, FetchWindow
from shared.contract.envelope import CloudEvent
from shared.contract.payloads import Bank

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves (`sleep` moves it instead of waiting)."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclasses.dataclass
class Lease:
    run_id: str
    expires_at: datetime
    night: str | None = None


class MemoryStore:
    """ConnectorStore in memory; `calls` lists the calls in the order they were sent, `connection_writes`
    the fields each connection update wrote."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.users: dict[str, AggregatorUser] = {}
        self.activations: dict[str, Activation] = {}
        self.connections: dict[str, Connection] = {}
        self.states: dict[tuple[str, str], AccountSyncState] = {}
        self.seen: dict[str, str] = {}
        self.leases: dict[str, Lease] = {}
        self.rights: dict[str, Rights] = {}
        self.signatures: set[str] = set()
        self.nights: set[str] = set()
        self.connection_writes: list[dict[str, object]] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)

    # aggregator users, activations
    async def aggregator_user(self, user_id: str) -> AggregatorUser | None:
        self._call("aggregator_user")
        return self.users.get(user_id)

    async def save_aggregator_user(self, user: AggregatorUser, now: datetime) -> AggregatorUser:
        self._call("save_aggregator_user")
        return self.users.setdefault(user.user_id, user)

    async def record_activation(self, nonce: str, user_id: str, now: datetime) -> None:
        self._call("record_activation")
        self.activations[nonce] = Activation(nonce, user_id)

    async def activation(self, nonce: str) -> Activation | None:
        self._call("activation")
        return self.activations.get(nonce)

    async def use_activation(self, nonce: str, user_id: str, now: datetime) -> bool:
        self._call("use_activation")
        found = self.activations.get(nonce)
        if found is None or found.user_id != user_id or found.used:
            return False
        self.activations[nonce] = dataclasses.replace(found, used=True)
        return True

    # connections
    async def save_connection(self, conn: Connection) -> None:
        self._call("save_connection")
        before = self.connections.get(conn.key)
        # the link's fields, whole: what the runs and a removal wrote beside them stays
        if before is not None:
            conn = dataclasses.replace(
                conn, refreshed_update=before.refreshed_update, removed_at=before.removed_at
            )
        self.connections[conn.key] = conn

    async def update_connection(self, conn: Connection, fields: frozenset[str]) -> None:
        self._call("update_connection")
        changes = {field: getattr(conn, field) for field in sorted(fields)}
        self.connection_writes.append(changes)
        before = self.connections[conn.key]
        self.connections[conn.key] = dataclasses.replace(before, **changes)

    async def connection(self, user_id: str, connection_id: str) -> Connection | None:
        self._call("connection")
        return self.connections.get(connection_key(user_id, connection_id))

    async def connection_for_webhook(self, aggregator_user_id: str, connection_id: str) -> Connection | None:
        self._call("connection_for_webhook")
        for user in self.users.values():
            if user.id_user == aggregator_user_id:
                found = self.connections.get(connection_key(user.user_id, connection_id))
                if found is not None:
                    return found
        return None

    async def user_connections(self, user_id: str) -> list[Connection]:
        self._call("user_connections")
        return sorted(
            (c for c in self.connections.values() if c.user_id == user_id and not c.removed),
            key=lambda c: c.key,
        )

    async def live_connections(self) -> list[LiveConnection]:
        self._call("live_connections")
        return [
            LiveConnection(c.key, c.user_id, c.paused, c.state.value if c.state else None)
            for c in self.connections.values()
            if not c.removed
        ]

    async def set_paused(self, user_id: str, paused: bool) -> list[str]:
        self._call("set_paused")
        mine = [c for c in self.connections.values() if c.user_id == user_id and not c.removed]
        changed = [c for c in mine if c.paused != paused]
        for conn in sorted(changed, key=lambda c: c.key):
            self.connections[conn.key] = dataclasses.replace(conn, paused=paused)
        return [c.connection_id for c in sorted(changed, key=lambda c: c.key)]

    # account states
    def state(self, user_id: str, account_id: str) -> AccountSyncState:
        return self.states[(user_id, account_id)]

    def _update_state(self, user: str, bank_account: str, /, **fields: object) -> None:
        before = self.states.get((user, bank_account), AccountSyncState(user, bank_account))
        self.states[(user, bank_account)] = dataclasses.replace(before, **fields)  # type: ignore[arg-type]

    async def account_states(self, user_id: str) -> list[AccountSyncState]:
        self._call("account_states")
        return [s for key, s in sorted(self.states.items()) if key[0] == user_id]

    async def mark_syncing(
        self, user_id: str, connection_id: str, account_ids: Sequence[str], run_id: str, started_at: datetime
    ) -> None:
        await asyncio.sleep(0)
        self._call("mark_syncing")
        for account_id in account_ids:
            self._update_state(user_id, account_id, connection_id=connection_id, state=SyncState.SYNCING)

    async def mark_closed(self, user_id: str, connection_id: str, account_ids: Sequence[str]) -> None:
        await asyncio.sleep(0)
        self._call("mark_closed")
        for account_id in account_ids:
            self._update_state(user_id, account_id, connection_id=connection_id, state=SyncState.CLOSED)

    async def record_outcomes(self, user_id: str, outcomes: Sequence[AccountOutcome]) -> None:
        await asyncio.sleep(0)
        self._call("record_outcomes " + ",".join(sorted({o.state.value for o in outcomes})))
        for o in outcomes:
            moved: dict[str, object] = (
                {} if o.cursor is None else {"cursor": o.cursor, "last_success_at": o.last_run.finished_at}
            )
            self._update_state(
                user_id,
                o.aggregator_account_id,
                connection_id=o.connection_id,
                state=o.state,
                error=o.error,
                last_run=o.last_run,
                **moved,
            )
            if o.reimported and self.states[(user_id, o.aggregator_account_id)].reimport == o.reimported:
                self._update_state(user_id, o.aggregator_account_id, reimport=None)

    async def note_importer_facts(self, notes: Sequence[ImporterNote]) -> None:
        self._call("note_importer_facts")
        for note in notes:
            key = (note.user_id, note.aggregator_account_id)
            if key not in self.states:
                continue  # never synced here: nothing is created
            mark: dict[str, object] = {} if note.reimport is None else {"reimport": note.reimport}
            self._update_state(*key, account_id=note.account_id, balance=note.balance, **mark)

    # fingerprints
    async def known_fingerprints(self, account: str, transaction_ids: list[str]) -> dict[str, str]:
        self._call("known_fingerprints")
        return {t: self.seen[f"{account}:{t}"] for t in transaction_ids if f"{account}:{t}" in self.seen}

    async def remember_fingerprints(self, account: str, prints: dict[str, str], known: set[str]) -> None:
        self._call("remember_fingerprints")
        self.seen.update({f"{account}:{t}": fp for t, fp in prints.items()})

    # leases
    def _take(self, connection: str, run_id: str, now: datetime, lease: timedelta, night: str | None) -> str:
        held = self.leases.get(connection)
        if held is None or held.run_id == run_id or held.expires_at < now:
            self.leases[connection] = Lease(run_id, now + lease, night)
            return run_id
        return held.run_id

    async def claim_run(self, connection: str, run_id: str, now: datetime, lease: timedelta) -> str:
        self._call("claim_run")
        return self._take(connection, run_id, now, lease, None)

    async def claim_runs(
        self, wanted: dict[str, str], now: datetime, lease: timedelta, *, night: str | None = None
    ) -> dict[str, str]:
        self._call("claim_runs")
        return {conn: self._take(conn, run_id, now, lease, night) for conn, run_id in wanted.items()}

    async def renew_run(self, connection: str, run_id: str, now: datetime, lease: timedelta) -> str:
        self._call("renew_run")
        return self._take(connection, run_id, now, lease, None)

    async def release_run(self, connection: str, run_id: str, now: datetime) -> None:
        self._call("release_run")
        held = self.leases.get(connection)
        if held is not None and held.run_id == run_id:
            del self.leases[connection]

    async def active_run(self, connection: str, now: datetime) -> str | None:
        self._call("active_run")
        held = self.leases.get(connection)
        return held.run_id if held is not None and held.expires_at >= now else None

    async def unfinished_night(self, night: str) -> int:
        self._call("unfinished_night")
        return sum(1 for held in self.leases.values() if held.night == night)

    # rights
    async def projected_rights(self, user_id: str) -> Rights | None:
        self._call("projected_rights")
        return self.rights.get(user_id)

    async def all_projected_rights(self) -> dict[str, bool]:
        self._call("all_projected_rights")
        return {user: rights.allowed for user, rights in self.rights.items()}

    async def project_rights(self, user_id: str, rights: Rights) -> bool:
        self._call("project_rights")
        before = self.rights.get(user_id)
        if before is not None and before.version >= rights.version:
            return False
        self.rights[user_id] = rights
        return True

    # webhooks, the night, erasure
    async def remember_webhook_signature(self, digest: str, now: datetime, keep: timedelta) -> bool:
        self._call("remember_webhook_signature")
        if digest in self.signatures:
            return False
        self.signatures.add(digest)
        return True

    async def claim_nightly(self, run_key: str, now: datetime) -> bool:
        if run_key in self.nights:
            return False
        self.nights.add(run_key)
        return True

    async def erase_user(self, user_id: str) -> int:
        self._call("erase_user")
        deleted = 0
        for key in [k for k, c in self.connections.items() if c.user_id == user_id]:
            deleted += 1 + (1 if self.leases.pop(key, None) else 0)
            del self.connections[key]
        for state in [k for k in self.states if k[0] == user_id]:
            prefix = f"{user_id}:{state[1]}:"
            for line in [s for s in self.seen if s.startswith(prefix)]:
                del self.seen[line]
                deleted += 1
            del self.states[state]
            deleted += 1
        for nonce in [n for n, a in self.activations.items() if a.user_id == user_id]:
            del self.activations[nonce]
            deleted += 1
        deleted += 1 if self.rights.pop(user_id, None) else 0
        deleted += 1 if self.users.pop(user_id, None) else 0
        return deleted


class MemoryAnnouncer:
    """The Announcer port: `sent` holds (topic, key, event) in the order published, `batches` the topic
    of each publish_many."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, CloudEvent]] = []
        self.batches: list[str] = []

    async def publish(self, topic: str, key: str, event: CloudEvent) -> None:
        self.sent.append((topic, key, event))

    async def publish_many(self, topic: str, items: list[tuple[str, CloudEvent]]) -> None:
        self.batches.append(topic)
        self.sent.extend((topic, key, event) for key, event in items)


def bank_account(
    account_id: str,
    *,
    disabled: bool = False,
    deleted: bool = False,
    balance: str = "10.00",
    coming: str = "-1.50",
) -> dict[str, object]:
    """An account as Powens answers it (`all_accounts`)."""
    return {
        "id": account_id,
        "name": f"Compte {account_id}",
        "type": "checking",
        "balance": balance,
        "coming": coming,
        "currency": {"id": "EUR"},
        "disabled": "2026-11-01T00:00:00Z" if disabled else None,
        "deleted": "2026-12-01T00:00:00Z" if deleted else None,
    }


class FakeAggregator:
    """The Aggregator port: users, their connections and the lines of their accounts, in memory.
    `connection_state` makes every connection answer that Powens state; `broken` makes an account's
    lines raise; `accounts` (Powens' `all_accounts`) is what a refresh says of the bank's accounts;
    `before_page` runs before each page of lines is given, `after_pages` once the last one was read (a
    stall, another replica's move)."""

    client_id = "test-client"

    def __init__(self, lines: dict[str, list[BankLine]] | None = None) -> None:
        self.lines: dict[str, list[BankLine]] = lines or {}
        self.broken: dict[str, BaseException] = {}
        self.connection_state: str | None = None
        self.accounts: list[dict[str, object]] | None = None
        self.last_update = "2026-12-01T03:00:00"
        self.read_update = "2026-12-01T02:00:00"
        # token → aggregator user id; code → (aggregator user id); what the user linked
        self.tokens: dict[str, str] = {}
        self.codes: dict[str, str] = {}
        self.linked: dict[str, list[str]] = {}
        self.banks = [Bank(id="40", name="Banque Test")]
        self.asked: dict[str, dict[str, str]] = {}
        self.refreshed: list[str] = []
        self.enabled: list[tuple[str, bool]] = []
        self.deleted_connections: list[str] = []
        self.deleted_users: list[str] = []
        self.failing: AggregatorError | None = None
        self.before_page: Callable[[str], Awaitable[None]] | None = None
        self.after_pages: Callable[[str], Awaitable[None]] | None = None

    def user(self, token: str, id_user: str, *connections: str) -> None:
        self.tokens[token] = id_user
        self.linked[token] = list(connections)

    def _check(self) -> None:
        if self.failing is not None:
            raise self.failing

    def _answer(self, connection_id: str, last_update: str) -> AggregatorConnection:
        accounts = None if self.accounts is None else tuple(bank_account_view(a) for a in self.accounts)
        return AggregatorConnection(connection_id, "40", self.connection_state, last_update, accounts)

    async def create_user(self) -> tuple[str, str]:
        self._check()
        token, id_user = f"tok-{len(self.tokens) + 1}", str(100 + len(self.tokens))
        self.user(token, id_user)
        return token, id_user

    async def exchange_code(self, code: str, redirect_uri: str) -> tuple[str, str]:
        if code not in self.codes:
            raise AggregatorError(classify_connection_error("invalidCode"))
        owner = self.codes.pop(code)
        return "other-token", owner

    async def temporary_code(self, token: str) -> str:
        self._check()
        code = f"code-{len(self.codes) + 1}"
        self.codes[code] = self.tokens.get(token, "")
        return code

    async def connectors(self) -> list[Bank]:
        return list(self.banks)

    async def connections(self, token: str) -> list[AggregatorConnection]:
        self._check()
        return [self._answer(c, self.read_update) for c in self.linked.get(token, [])]

    async def connection(self, token: str, connection_id: str) -> AggregatorConnection:
        self._check()
        return self._answer(connection_id, self.read_update)

    async def sync_connection(self, token: str, connection_id: str) -> AggregatorConnection:
        self._check()
        self.refreshed.append(connection_id)
        return self._answer(connection_id, self.last_update)

    async def delete_user(self, token: str) -> None:
        self._check()
        self.deleted_users.append(token)

    async def delete_connection(self, token: str, connection_id: str) -> None:
        self._check()
        self.deleted_connections.append(connection_id)

    async def set_account_enabled(self, token: str, account_id: str, enabled: bool) -> None:
        self._check()
        self.enabled.append((account_id, enabled))

    async def transactions(
        self, token: str, account_id: str, window: FetchWindow
    ) -> AsyncIterator[list[BankLine]]:
        await asyncio.sleep(0)
        self.asked[account_id] = window.params()
        if account_id in self.broken:
            raise self.broken[account_id]
        if self.before_page is not None:
            await self.before_page(account_id)
        yield self.lines.get(account_id, [])
        if self.after_pages is not None:
            await self.after_pages(account_id)

    async def aclose(self) -> None:
        return None


class FakeEntitlements:
    """The Entitlements port: each user's rights, or unavailable; `asked` counts the questions."""

    def __init__(self) -> None:
        self.answers: dict[str, Rights] = {}
        self.unavailable = False
        self.asked: list[str] = []

    async def rights(self, user_id: str) -> Rights:
        self.asked.append(user_id)
        if self.unavailable:
            raise EntitlementsUnavailable("test: entitlements away")
        return self.answers.get(user_id, Rights(False, "no_subscription", "Pas d'abonnement.", 1))

    async def aclose(self) -> None:
        return None


def premium(version: int = 1) -> Rights:
    return Rights(True, "premium", None, version, "premium")


def account(account_id: str, *, selected: bool = True, currency: str = "EUR") -> BankAccount:
    return BankAccount(account_id, f"Compte {account_id}", selected=selected, currency=currency)


def connection(
    user_id: str,
    connection_id: str,
    accounts: Sequence[BankAccount],
    *,
    state: SyncState | None = None,
    paused: bool = False,
    refreshed_update: str | None = None,
) -> Connection:
    return Connection(
        user_id,
        connection_id,
        Bank(id="1", name="Banque"),
        tuple(accounts),
        state=state,
        paused=paused,
        linked_at=NOW - timedelta(days=30),
        refreshed_update=refreshed_update,
    )
