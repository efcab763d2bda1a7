"""The importer's handlers driven through their public methods, on fakes and on the engines.

Each test body runs twice: with the in-memory ports of fakes.py (`memory`, seconds) and with the real
adapters on the session's engines (`engines`: MongoDB wire in a fresh database, banksync.operations.v1
on Kafka), reading back what was announced from the topic itself.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

import pytest

from services.importer.adapters.kafka import KafkaAnnouncements
from services.importer.adapters.locks import KeyLocks
from services.importer.adapters.mongo import (
    AccountStore,
    MongoCategorizations,
    MongoOperations,
    OperationStore,
    StateStore,
)
from services.importer.domain.accounts import Link
from services.importer.domain.identities import auto_account_id, operation_id
from services.importer.domain.intake import RawRecord, raw_record
from services.importer.domain.lines import ImportMode, Line, StoredState
from services.importer.domain.operations import OperationQuery
from services.importer.handlers.accounts import AccountService, CurrencyMismatch, UnknownAccount
from services.importer.handlers.categorizations import Categorizations
from services.importer.handlers.details import AccountDetails
from services.importer.handlers.intake import Importer, OperationRefused
from services.importer.ports import Accounts, Announcements, CategorizationFiling, LineStates, Operations
from shared.contract.envelope import CloudEvent, account_key
from shared.contract.payloads import (
    AccountBalanceChecked,
    AccountDiscovered,
    AccountSynced,
    Operation,
    OperationCategorized,
    OperationEvent,
    TransactionObserved,
)
from shared.contract.topics import OPERATIONS
from shared.kafka import EventPublisher, make_broker
from shared.mongo import make_client
from tests.importer_support import Txn, raw_event, synced_event
from tests.kafka_helpers import read_all
from tests.unit.importer.fakes import (
    MemoryAccounts,
    MemoryAnnouncements,
    MemoryCategorizations,
    MemoryOperations,
    MemoryStates,
)

BANK = "bnp"
DAY = dt.date(2026, 10, 5)
T0 = dt.datetime(2026, 10, 5, 8, tzinfo=dt.UTC)


@dataclass
class World:
    """The handlers on one set of ports, and how a test looks at what they announced."""

    importer: Importer
    service: AccountService
    categorizations: Categorizations
    details: AccountDetails
    # (key, event) announced for this user, each key's in the order announced
    announced: Callable[[str], Awaitable[list[tuple[str, CloudEvent]]]]


def build(
    states: LineStates,
    operations: Operations,
    accounts: Accounts,
    announcements: Announcements,
    filing: CategorizationFiling,
) -> tuple[Importer, AccountService, Categorizations, AccountDetails]:
    locks = KeyLocks()
    importer = Importer(
        states, operations, accounts, announcements, locks=locks, op_locks=KeyLocks(), today=lambda: DAY
    )
    return importer, AccountService(importer), Categorizations(filing), AccountDetails(accounts, locks)


@pytest.fixture(params=["memory", pytest.param("engines", marks=pytest.mark.engines)])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    if request.param == "memory":
        announcements = MemoryAnnouncements()
        filing = MemoryCategorizations()

        async def recorded(user: str) -> list[tuple[str, CloudEvent]]:
            return [(key, event) for key, event in announcements.published if event.userid == user]

        yield World(
            *build(MemoryStates(), MemoryOperations(filing), MemoryAccounts(), announcements, filing),
            recorded,
        )
        return
    engines = request.getfixturevalue("engines")
    client = make_client(engines.mongodb_url)
    db = client[f"imp_{uuid.uuid4().hex[:8]}"]
    store, accounts = OperationStore(db), AccountStore(db)
    await store.create_indexes()
    await accounts.create_indexes()
    broker = make_broker(engines.kafka_bootstrap, client_id="test-importer-handlers")
    await broker.start()

    async def published(user: str) -> list[tuple[str, CloudEvent]]:
        return [
            (key, event)
            for key, event, _ in await read_all(engines.kafka_bootstrap, OPERATIONS)
            if event.userid == user
        ]

    try:
        kafka = KafkaAnnouncements(EventPublisher(broker, "importer"))
        yield World(
            *build(StateStore(db), MongoOperations(store), accounts, kafka, MongoCategorizations(store)),
            published,
        )
    finally:
        await broker.stop()
        await client.drop_database(db.name)
        await client.close()


# ---- building what the connector says ----------------------------------------------------------------------


def a_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def line(
    user: str,
    txid: int,
    amount: str,
    *,
    account: str = "7",
    day: dt.date = DAY,
    memo: str = "CB BOULANGERIE MARTIN",
    pending: bool = False,
    deleted: bool = False,
    sync: str = "sync-1",
    at: dt.datetime = T0,
) -> RawRecord:
    txn = Txn(
        txid, account, day, Decimal(amount), memo, memo.removeprefix("CB "), coming=pending, last_update=at
    )
    if deleted:
        txn.deleted = at
    event = raw_event(user, BANK, txn, sync_run=sync)
    event = event.model_copy(update={"time": at})
    return raw_record(event, TransactionObserved.model_validate(event.data), account_key(user, account))


def balance(
    user: str, amount: str, *, account: str = "7", sync: str = "sync-1", at: dt.datetime = T0
) -> RawRecord:
    event = synced_event(user, BANK, account, sync_run=sync, balance=amount)
    event = event.model_copy(update={"time": at})
    return raw_record(event, AccountSynced.model_validate(event.data), account_key(user, account))


def operations_of(events: list[tuple[str, CloudEvent]], name: str) -> list[Operation]:
    return [OperationEvent.model_validate(e.data).operation for _, e in events if e.name == name]


def names(events: list[tuple[str, CloudEvent]]) -> Counter[str]:
    return Counter(event.name for _, event in events)


async def shown(world: World, user: str, account_id: str | None = None) -> list[Operation]:
    page = await world.service.search_operations(
        user, account_id, OperationQuery(), date_from=None, date_to=None, after=None, limit=100
    )
    return page.items


# ---- lines -------------------------------------------------------------------------------------------------


async def test_new_lines_become_operations_once(world: World) -> None:
    user = a_user()
    lines = [line(user, 101, "-12.30"), line(user, 102, "-4.50", day=DAY + dt.timedelta(days=1))]
    result = await world.importer.import_records(lines)
    assert (result.rejected, result.stats.lines, result.stats.imported) == ([], 2, 2)

    account_id = auto_account_id(account_key(user, "7"))
    events = await world.announced(user)
    assert names(events) == Counter({"account.created": 1, "operation.imported": 2})
    imported = operations_of(events, "operation.imported")
    assert {op.id for op in imported} == {operation_id(account_key(user, "7"), t) for t in ("101", "102")}
    assert all(key == account_key(user, account_id) for key, _ in events)
    assert [op.amount for op in await shown(world, user, account_id)] == ["-4.50", "-12.30"]

    again = await world.importer.import_records(lines)
    assert (again.stats.unchanged, again.stats.imported) == (2, 0)
    assert len(await world.announced(user)) == 3, "a redelivery announces nothing"
    [account] = await world.service.list_accounts(user)
    assert (account.account_id, account.name, account.balance) == (account_id, "Banque bnp 7", "-16.80")


async def test_a_booking_takes_its_pending_line_over_and_a_deleted_line_goes(world: World) -> None:
    user = a_user()
    await world.importer.import_records(
        [line(user, 201, "-30.00", pending=True), line(user, 202, "-8.00", memo="PRLV SEPA EDF")]
    )
    later = T0 + dt.timedelta(days=1)
    result = await world.importer.import_records(
        [
            line(user, 203, "-30.00", day=DAY + dt.timedelta(days=1), sync="sync-2", at=later),
            line(user, 202, "-8.00", memo="PRLV SEPA EDF", deleted=True, sync="sync-2", at=later),
        ]
    )
    assert (result.stats.updated, result.stats.deleted, result.stats.imported) == (1, 1, 0)
    events = await world.announced(user)
    [updated] = operations_of(events, "operation.updated")
    [pending] = [op for op in operations_of(events, "operation.imported") if op.status == "pending"]
    assert (updated.id, updated.status, updated.aggregator_transaction_id) == (pending.id, "booked", "203")
    assert [op.aggregator_transaction_id for op in operations_of(events, "operation.deleted")] == ["202"]
    assert [(op.id, op.status) for op in await shown(world, user)] == [(pending.id, "booked")]


async def test_an_older_sync_sent_again_in_the_same_batch_changes_nothing_and_is_not_blamed(
    world: World,
) -> None:
    user = a_user()
    first = [line(user, 211, "-30.00", pending=True), line(user, 212, "-8.00", memo="PRLV SEPA EDF")]
    await world.importer.import_records(first)
    later = T0 + dt.timedelta(days=1)
    second = [
        line(user, 213, "-30.00", day=DAY + dt.timedelta(days=1), sync="sync-2", at=later),
        line(user, 211, "-30.00", pending=True, deleted=True, sync="sync-2", at=later),
        line(user, 212, "-8.00", memo="PRLV SEPA EDF", deleted=True, sync="sync-2", at=later),
    ]
    # the second sync, then the first one again (its older versions), in one batch
    result = await world.importer.import_records([*second, *first])
    assert (result.stats.updated, result.stats.deleted, result.stats.imported) == (1, 1, 0)

    changed = [
        (event.name, event.correlationid)
        for _, event in await world.announced(user)
        if event.name in ("operation.updated", "operation.deleted")
    ]
    assert sorted(changed) == [("operation.deleted", "sync-2"), ("operation.updated", "sync-2")]
    [op] = await shown(world, user)
    assert (op.aggregator_transaction_id, op.status) == ("213", "booked")


class StaleStates:
    """The dedup states as a replica that read one of them long ago sees them: its first load of that
    account returns the old state (it was paused between its read and its writes, past its session
    timeout, while the partition's new owner moved on), later loads the store's."""

    def __init__(self, states: LineStates, old: StoredState) -> None:
        self.states = states
        self.old: StoredState | None = old

    async def load(self, akey: str) -> StoredState:
        if self.old is not None and self.old.akey == akey:
            old, self.old = self.old, None
            return old
        return await self.states.load(akey)

    async def save(self, state: StoredState, user_id: str, lines: Iterable[Line], accounts: set[str]) -> bool:
        return await self.states.save(state, user_id, lines, accounts)


def woken_replica(world: World, old: StoredState) -> Importer:
    """Another importer on the same stores that decides its next batch on `old`."""
    importer = world.importer
    return Importer(
        StaleStates(importer.states, old),
        importer.operations,
        importer.accounts,
        importer.announcements,
        locks=KeyLocks(),
        op_locks=KeyLocks(),
        today=lambda: DAY,
    )


async def test_a_replica_that_decided_on_an_old_state_overwrites_nothing_and_announces_nothing(
    world: World,
) -> None:
    user = a_user()
    await world.importer.import_records([line(user, 221, "-30.00", pending=True)])
    old = await world.importer.states.load(account_key(user, "7"))
    # the partition's new owner books the line; then the paused replica wakes with an older version of it
    booked_at, seen_at = T0 + dt.timedelta(days=2), T0 + dt.timedelta(days=1)
    await world.importer.import_records([line(user, 221, "-31.00", sync="sync-3", at=booked_at)])
    before = await world.announced(user)

    late = await woken_replica(world, old).import_records(
        [line(user, 221, "-30.50", pending=True, sync="sync-2", at=seen_at)]
    )

    assert late.stats.unchanged == 1, "decided again on the newer state, it finds an older version"
    [op] = await shown(world, user)
    assert (op.amount, op.status) == ("-31.00", "booked")
    assert await world.announced(user) == before


async def test_a_replica_that_decided_on_an_old_state_brings_no_deleted_operation_back(world: World) -> None:
    user = a_user()
    await world.importer.import_records([line(user, 231, "-9.00"), line(user, 232, "-4.00")])
    old = await world.importer.states.load(account_key(user, "7"))
    gone_at, seen_at = T0 + dt.timedelta(days=2), T0 + dt.timedelta(days=1)
    await world.importer.import_records([line(user, 231, "-9.00", deleted=True, sync="sync-3", at=gone_at)])
    before = await world.announced(user)

    late = await woken_replica(world, old).import_records(
        [line(user, 231, "-9.50", sync="sync-2", at=seen_at)]
    )

    assert late.stats.unchanged == 1
    assert [op.aggregator_transaction_id for op in await shown(world, user)] == ["232"]
    assert await world.announced(user) == before


async def test_records_that_cannot_be_imported_are_rejected(world: World) -> None:
    user = a_user()
    good, bad = line(user, 301, "-1.00"), line(user, 302, "-2.00")
    bad = raw_record(bad.event, bad.data, f"{user}:other")
    result = await world.importer.import_records([good, bad])
    assert [(raw is bad, "key" in why) for raw, why in result.rejected] == [(True, True)]
    assert len(operations_of(await world.announced(user), "operation.imported")) == 1
    # a link to an account that is not there: the lines wait in the DLQ
    link = Link(account_key(user, "8"), user, "8", "nowhere", ImportMode.CREATE)
    await world.importer.accounts.put_link(link)
    refused = await world.importer.import_records([line(user, 303, "-3.00", account="8")])
    assert [why.startswith("unknown account") for _, why in refused.rejected] == [True]


# ---- balances ----------------------------------------------------------------------------------------------


async def test_balances_are_checked_against_the_lines_before_them(world: World) -> None:
    user = a_user()
    first = await world.importer.import_records([line(user, 401, "-20.00"), balance(user, "80.00")])
    assert (first.stats.imported, first.stats.checks) == (1, 1)
    later = T0 + dt.timedelta(days=1)
    # the bank counts a line of -5.00 the app never got: a gap of exactly that
    second = await world.importer.import_records(
        [line(user, 402, "-10.00", sync="s2", at=later), balance(user, "65.00", sync="s2", at=later)]
    )
    assert second.stats.checks == 1
    checks = [
        AccountBalanceChecked.model_validate(e.data)
        for _, e in await world.announced(user)
        if e.name == "account.balance_checked"
    ]
    assert [(c.sync_run_id, c.computed_balance, c.balance_gap) for c in checks] == [
        ("sync-1", "80.00", "0.00"),
        ("s2", "70.00", "-5.00"),
    ]
    [account] = await world.service.list_accounts(user)
    assert (account.bank_balance, account.computed_balance, account.balance_gap) == (
        "65.00",
        "70.00",
        "-5.00",
    )
    assert await world.importer.recount_gaps() >= 1
    # the same report again, nothing moved: the check stands, nothing announced
    again = await world.importer.import_records([balance(user, "65.00", sync="s2", at=later)])
    assert again.stats.checks == 0
    assert len(await world.announced(user)) == 5


# ---- reconciliation ----------------------------------------------------------------------------------------


async def test_reconcile_mode_matches_a_manual_operation_and_the_user_can_undo_it(world: World) -> None:
    user = a_user()
    target = await world.service.create_account(user, "Compte joint", "EUR", "corr-1")
    manual, created = await world.service.add_manual_operation(
        user, target.account_id, date=DAY, amount=Decimal("-42.50"), currency="EUR", label="Courses",
        correlation_id="corr-2", idempotency_key=None,
    )  # fmt: skip
    assert created
    await world.service.put_link(user, "9", target.account_id, ImportMode.RECONCILE)
    result = await world.importer.import_records(
        [line(user, 501, "-42.50", account="9", day=DAY + dt.timedelta(days=1))]
    )
    assert (result.stats.reconciled, result.stats.imported) == (1, 0)
    [matched] = operations_of(await world.announced(user), "operation.reconciled")
    assert (matched.id, matched.reconciled, matched.aggregator_transaction_id) == (manual.id, True, "501")

    with pytest.raises(OperationRefused) as refused:
        await world.service.edit_manual_operation(
            user, target.account_id, manual.id, date=None, amount_text="-40.00", currency=None, label=None,
            correlation_id="corr-3",
        )  # fmt: skip
    assert refused.value.code == "reconciled_operation"

    unmatched, bank = await world.service.undo_reconciliation(user, target.account_id, manual.id, "corr-4")
    assert (unmatched.reconciled, unmatched.memo, unmatched.label) == (False, "", "Courses")
    assert bank is not None
    assert (bank.source, bank.aggregator_transaction_id) == ("bank", "501")
    events = await world.announced(user)
    assert bank.id in {op.id for op in operations_of(events, "operation.imported")}
    assert [op.reconciled for op in operations_of(events, "operation.updated")] == [False]
    assert sorted(op.source for op in await shown(world, user, target.account_id)) == ["bank", "manual"]
    with pytest.raises(OperationRefused):
        await world.service.undo_reconciliation(user, target.account_id, manual.id, "corr-5")


# ---- manual operations -------------------------------------------------------------------------------------


async def test_manual_operations_are_added_once_changed_and_deleted(world: World) -> None:
    user = a_user()
    account = await world.service.create_account(user, "Espèces", "EUR", "corr-1")

    async def add(owner: str = user, currency: str = "EUR") -> tuple[Operation, bool]:
        return await world.service.add_manual_operation(
            owner, account.account_id, date=DAY, amount=Decimal("-3.20"), currency=currency, label="Café",
            correlation_id="c", idempotency_key="k1",
        )  # fmt: skip

    op, created = await add()
    same, again = await add()
    assert (created, again, same.id) == (True, False, op.id)
    with pytest.raises(CurrencyMismatch):
        await add(currency="USD")
    with pytest.raises(UnknownAccount):
        await add(owner=a_user())

    changed = await world.service.edit_manual_operation(
        user, account.account_id, op.id, date=None, amount_text="-3.50", currency=None, label="Café crème",
        correlation_id="c2",
    )  # fmt: skip
    assert (changed.amount, changed.label) == ("-3.50", "Café crème")
    [listed] = await world.service.list_accounts(user)
    assert listed.balance == "-3.50"
    await world.service.delete_manual_operation(user, account.account_id, op.id, "c3")
    assert await shown(world, user, account.account_id) == []
    events = await world.announced(user)
    assert names(events) == Counter(
        {"account.created": 1, "operation.created": 1, "operation.updated": 1, "operation.deleted": 1}
    )

    await world.importer.import_records([line(user, 601, "-9.00")])
    [bank] = await shown(world, user, auto_account_id(account_key(user, "7")))
    with pytest.raises(OperationRefused) as refused:
        await world.service.delete_manual_operation(user, bank.account_id, bank.id, "c4")
    assert refused.value.code == "bank_operation"


# ---- categorisations and what the bank says of its accounts ------------------------------------------------


async def test_the_users_choice_wins_over_any_rule_result(world: World) -> None:
    user = a_user()
    await world.importer.import_records([line(user, 701, "-15.00")])
    [op] = await shown(world, user)

    def categorized(category: str, source: str, version: int, choice: int = 0) -> OperationCategorized:
        return OperationCategorized(
            user_id=user, account_id=op.account_id, operation_id=op.id, payee=None, category=category,
            source=source, keyword=None, rules_version=version, month=op.date.isoformat()[:7],
            choice_version=choice,
        )  # fmt: skip

    assert await world.categorizations.apply([categorized("alimentation", "global", 1)]) == 1
    assert [o.category for o in await shown(world, user)] == ["alimentation"]
    await world.categorizations.apply([categorized("loisirs", "manual", 0, choice=1)])
    await world.categorizations.apply([categorized("alimentation/boulangerie", "global", 2)])
    [now] = await shown(world, user)
    assert (now.category, now.categorized_by and now.categorized_by.source) == ("loisirs", "manual")
    filtered = await world.service.search_operations(
        user, None, OperationQuery(category="loisirs"), date_from=None, date_to=None, after=None, limit=10
    )
    assert [o.id for o in filtered.items] == [op.id]


async def test_the_bank_names_the_account_it_created(world: World) -> None:
    user = a_user()

    def discovered(name: str, balance: str | None) -> AccountDiscovered:
        return AccountDiscovered.model_validate(
            {
                "user_id": user,
                "connection_id": "conn-1",
                "bank": {"id": BANK, "name": "BNP"},
                "account": {"aggregator_account_id": "7", "name": name, "balance": balance, "selected": True},
            }
        )

    await world.details.apply([discovered("Compte courant", "120.50")])
    await world.importer.import_records([line(user, 801, "-1.00")])
    [account] = await world.service.list_accounts(user)
    assert (account.name, account.balance, account.bank_balance) == ("Compte courant", "120.50", None)
    await world.details.apply([discovered("Compte chèques", "99.00")])
    [account] = await world.service.list_accounts(user)
    assert (account.name, account.balance) == ("Compte chèques", "99.00")


# ---- deleting an account -----------------------------------------------------------------------------------


async def test_a_deleted_account_comes_back_as_its_next_generation(world: World) -> None:
    user = a_user()
    lines = [line(user, 901, "-5.00"), line(user, 902, "-6.00")]
    await world.importer.import_records(lines)
    account_id = auto_account_id(account_key(user, "7"))
    await world.service.delete_account(user, account_id, "corr-del")
    assert await world.service.list_accounts(user) == []
    with pytest.raises(UnknownAccount):
        await world.service.delete_account(a_user(), account_id, "corr-x")

    again = await world.importer.import_records(lines)
    assert again.stats.imported == 2
    events = await world.announced(user)
    assert names(events) == Counter({"account.created": 2, "operation.imported": 4, "account.deleted": 1})
    ids = [e.id for _, e in events if e.name == "operation.imported"]
    assert len(set(ids)) == 4, "a new life of the account: new event ids"
    assert len(await shown(world, user, account_id)) == 2
