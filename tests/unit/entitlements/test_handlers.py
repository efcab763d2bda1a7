"""The entitlements' handlers driven through their public methods, on fakes and on the engines.

Each test body runs twice: with the in-memory ports of fakes.py (`memory`, seconds) and with the real
adapters on the session's engines (`engines`: MongoDB wire in a fresh database, Kafka, the key vault),
reading back what was announced from the topic itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from services.entitlements.adapters.kafka import KafkaAnnouncer
from services.entitlements.adapters.locks import ProcessLocks
from services.entitlements.adapters.mongo import EntitlementsRepository, ErasureRegistry
from services.entitlements.domain.commands import (
    Action,
    Change,
    OptionIncludedInPlan,
    cancel,
    change_plan,
    subscribe,
)
from services.entitlements.domain.erasure import ERASING_SERVICES, erase_id_of
from services.entitlements.domain.history import Actor, ChangeRecord
from services.entitlements.domain.rights import Entitlements, Option, Plan
from services.entitlements.handlers import (
    ConcurrentUpdate,
    EntitlementsHandlers,
    ErasureHandlers,
)
from services.entitlements.ports import Announcer, EntitlementsStore, ErasureStore, KeyShredder
from shared.contract.payloads import EntitlementChanged, UserErased, UserErasureRequested
from shared.contract.topics import ENTITLEMENTS
from shared.kafka import EventPublisher, make_broker
from shared.mongo import make_client
from shared.settings import DEV_TOKEN_KEY
from shared.vault import VAULT_COLLECTION, KeyVault
from tests.kafka_helpers import read_all
from tests.unit.entitlements.fakes import (
    Announced,
    FakeClock,
    MemoryEntitlements,
    MemoryErasures,
    MemoryKeys,
    RecordingAnnouncer,
)

BILLING = Actor(sub="billing-backend", scope="billing")
READ_MODELS: dict[str, Any] = {
    "entitlement.changed": EntitlementChanged,
    "user.erasure_requested": UserErasureRequested,
}


@dataclass
class World:
    """The handlers on one set of ports, and how a test looks at what they did."""

    handlers: EntitlementsHandlers
    erasures: ErasureHandlers
    store: EntitlementsStore
    erasure_store: ErasureStore
    clock: FakeClock
    # what was announced for this user (the key of their events), in order
    announced: Callable[[str], Awaitable[list[Announced]]]
    # a data key for the user, and whether they have one
    give_key: Callable[[str], Awaitable[None]]
    has_key: Callable[[str], Awaitable[bool]]


def build(
    store: EntitlementsStore,
    erasure_store: ErasureStore,
    keys: KeyShredder,
    announcer: Announcer,
    clock: FakeClock,
) -> tuple[EntitlementsHandlers, ErasureHandlers]:
    return (
        EntitlementsHandlers(store, announcer, ProcessLocks(), clock),
        ErasureHandlers(erasure_store, store, keys, announcer, clock),
    )


async def memory_world() -> World:
    store, erasure_store, keys, announcer, clock = (
        MemoryEntitlements(),
        MemoryErasures(),
        MemoryKeys(),
        RecordingAnnouncer(),
        FakeClock(),
    )
    handlers, erasures = build(store, erasure_store, keys, announcer, clock)

    async def announced(user: str) -> list[Announced]:
        return [a for a in announcer.announced if a.key == user]

    async def give_key(user: str) -> None:
        keys.keys.add(user)

    async def has_key(user: str) -> bool:
        return user in keys.keys

    return World(handlers, erasures, store, erasure_store, clock, announced, give_key, has_key)


@pytest.fixture(params=["memory", pytest.param("engines", marks=pytest.mark.engines)])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    if request.param == "memory":
        yield await memory_world()
        return
    engines = request.getfixturevalue("engines")
    broker = make_broker(engines.kafka_bootstrap, client_id="test-entitlements-handlers")
    await broker.start()
    publisher = EventPublisher(broker, "entitlements")
    client = make_client(engines.mongodb_url)
    db = client[f"ent_{uuid.uuid4().hex[:8]}"]
    store = EntitlementsRepository(db)
    await store.create_indexes()
    vault = KeyVault(db[VAULT_COLLECTION], DEV_TOKEN_KEY)
    clock = FakeClock()
    erasure_store = ErasureRegistry(db)
    handlers, erasures = build(store, erasure_store, vault, KafkaAnnouncer(publisher), clock)

    async def announced(user: str) -> list[Announced]:
        return [
            Announced(
                event.name, READ_MODELS[event.name].model_validate(event.data), event.correlationid, key
            )
            for key, event, _ in await read_all(engines.kafka_bootstrap, ENTITLEMENTS)
            if key == user and event.name in READ_MODELS
        ]

    async def give_key(user: str) -> None:
        await vault.for_writing({user})

    async def has_key(user: str) -> bool:
        # a vault of its own: nothing cached
        return bool(await KeyVault(db[VAULT_COLLECTION], DEV_TOKEN_KEY).for_reading({user}))

    try:
        yield World(handlers, erasures, store, erasure_store, clock, announced, give_key, has_key)
    finally:
        await client.drop_database(db.name)
        await client.close()
        await broker.stop()


def new_user(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def changes(announced: list[Announced]) -> list[EntitlementChanged]:
    assert all(
        isinstance(a.payload, EntitlementChanged) for a in announced if a.name == "entitlement.changed"
    )
    return [a.payload for a in announced if isinstance(a.payload, EntitlementChanged)]


def requests(announced: list[Announced]) -> list[UserErasureRequested]:
    assert all(
        isinstance(a.payload, UserErasureRequested) for a in announced if a.name == "user.erasure_requested"
    )
    return [a.payload for a in announced if isinstance(a.payload, UserErasureRequested)]


# -- rights and their changes


async def test_a_user_never_seen_is_standard_and_nothing_is_announced(world: World) -> None:
    user = new_user()
    assert await world.handlers.get(user) == Entitlements(user, Plan.STANDARD, frozenset(), 0)
    assert await world.handlers.history(user, 10) == []
    assert await world.announced(user) == []


async def test_a_subscription_is_stored_recorded_and_announced_once(world: World) -> None:
    user = new_user()
    state, changed = await world.handlers.apply(
        user, lambda current: subscribe(current, Option.AUTO_IMPORT), "req-sub-1", BILLING
    )
    assert changed
    assert state == Entitlements(user, Plan.STANDARD, frozenset({Option.AUTO_IMPORT}), 1)
    assert await world.handlers.get(user) == state

    [line] = await world.handlers.history(user, 10)
    assert (line.version, line.action, line.option, line.plan) == (
        1,
        Action.OPTION_SUBSCRIBED,
        Option.AUTO_IMPORT,
        None,
    )
    assert (line.request_id, line.actor, line.at) == ("req-sub-1", BILLING, world.clock.now)
    assert line.detail == {"option": "auto_import"}
    assert await world.store.outbox(user) == []  # announced, so out of the outbox

    [event] = await world.announced(user)
    assert (event.name, event.correlation_id) == ("entitlement.changed", "req-sub-1")
    payload = event.payload
    assert isinstance(payload, EntitlementChanged)
    assert (payload.user_id, payload.plan, payload.options, payload.version) == (
        user,
        "standard",
        ["auto_import"],
        1,
    )
    assert (payload.auto_sync_allowed, payload.code) == (True, "auto_import_option")
    assert payload.change is not None
    assert (payload.change.action, payload.change.option, payload.change.plan) == (
        "option_subscribed",
        "auto_import",
        None,
    )
    assert payload.changed_at == world.clock.now
    assert payload.actor == {"sub": "billing-backend", "scope": "billing"}


async def test_a_command_that_changes_nothing_stores_and_announces_nothing(world: World) -> None:
    user = new_user()
    first, _ = await world.handlers.apply(user, lambda c: subscribe(c, Option.AUTO_IMPORT), "r1", BILLING)
    again, changed = await world.handlers.apply(
        user, lambda c: subscribe(c, Option.AUTO_IMPORT), "r2", BILLING
    )
    assert not changed
    assert again == first
    nothing, changed = await world.handlers.apply(
        user, lambda c: change_plan(c, Plan.STANDARD), "r3", BILLING
    )
    assert not changed
    assert nothing.version == 1
    assert [line.request_id for line in await world.handlers.history(user, 10)] == ["r1"]
    assert [p.version for p in changes(await world.announced(user))] == [1]


async def test_changes_follow_one_version_line_and_the_history_reads_the_last_first(world: World) -> None:
    user = new_user()
    ops = Actor(sub="ops-alice", scope="ops")
    await world.handlers.apply(user, lambda c: subscribe(c, Option.AUTO_IMPORT), "r1", BILLING)
    world.clock.advance(60)
    await world.handlers.apply(user, lambda c: cancel(c, Option.AUTO_IMPORT), "r2", BILLING)
    world.clock.advance(60)
    premium, _ = await world.handlers.apply(user, lambda c: change_plan(c, Plan.PREMIUM), "r3", ops)
    assert premium == Entitlements(user, Plan.PREMIUM, frozenset(), 3)

    history = await world.handlers.history(user, 10)
    assert [line.action for line in history] == [
        Action.PLAN_CHANGED,
        Action.OPTION_CANCELLED,
        Action.OPTION_SUBSCRIBED,
    ]
    assert [line.actor for line in history] == [ops, BILLING, BILLING]
    assert history[0].detail == {"plan": "premium"}
    assert [line.version for line in await world.handlers.history(user, 2)] == [3, 2]

    announced = changes(await world.announced(user))
    assert [p.version for p in announced] == [1, 2, 3]
    assert [p.auto_sync_allowed for p in announced] == [True, False, True]
    assert [p.code for p in announced] == ["auto_import_option", "auto_import_required", "premium"]
    assert announced[-1].change is not None
    assert (announced[-1].change.action, announced[-1].change.plan) == ("plan_changed", "premium")
    assert announced[-1].actor == {"sub": "ops-alice", "scope": "ops"}
    assert [p.changed_at for p in announced] == [line.at for line in reversed(history)]


async def test_premium_refuses_the_option_it_includes_and_keeps_its_rights(world: World) -> None:
    user = new_user()
    await world.handlers.apply(user, lambda c: change_plan(c, Plan.PREMIUM), "r1", BILLING)
    with pytest.raises(OptionIncludedInPlan):
        await world.handlers.apply(user, lambda c: subscribe(c, Option.AUTO_IMPORT), "r2", BILLING)
    assert await world.handlers.get(user) == Entitlements(user, Plan.PREMIUM, frozenset(), 1)
    assert [p.version for p in changes(await world.announced(user))] == [1]


async def test_concurrent_changes_of_one_user_keep_one_version_line(world: World) -> None:
    user = new_user("race")
    commands = [
        (lambda c: subscribe(c, Option.AUTO_IMPORT))
        if i % 2 == 0
        else (lambda c: cancel(c, Option.AUTO_IMPORT))
        for i in range(8)
    ]
    await asyncio.gather(
        *(world.handlers.apply(user, command, f"r{i}", BILLING) for i, command in enumerate(commands))
    )
    final = await world.handlers.get(user)
    assert [line.version for line in await world.handlers.history(user, 100)] == list(
        range(final.version, 0, -1)
    )
    announced = changes(await world.announced(user))
    assert [p.version for p in announced] == list(range(1, final.version + 1))
    assert announced[-1].auto_sync_allowed == (Option.AUTO_IMPORT in final.options)


async def test_the_relay_announces_what_a_crash_left_in_the_outbox_once(world: World) -> None:
    """A change stored but never relayed (the process died in between) goes out with the next relay."""
    user = new_user("crash")
    change = subscribe(Entitlements.unknown_user(user), Option.AUTO_IMPORT)
    assert change is not None
    record = ChangeRecord.of(change, at=world.clock.now, request_id="req-lost", actor=BILLING)
    assert await world.store.save(change.after, 0, record)
    assert not await world.store.save(change.after, 0, record)  # the version moved: compare-and-set refuses
    assert await world.announced(user) == []
    assert [r.version for r in await world.store.outbox(user)] == [1]

    assert await world.handlers.relay_pending() >= 1
    assert await world.store.outbox(user) == []
    [line] = await world.handlers.history(user, 10)
    assert (line.request_id, line.actor) == ("req-lost", BILLING)
    [event] = await world.announced(user)
    assert event.correlation_id == "req-lost"
    assert isinstance(event.payload, EntitlementChanged)
    assert event.payload.version == 1

    assert await world.handlers.relay_user(user) == 0  # nothing left: nothing again
    assert len(await world.announced(user)) == 1


async def test_a_history_line_is_recorded_once_however_often_relayed(world: World) -> None:
    user = new_user()
    await world.handlers.apply(user, lambda c: subscribe(c, Option.AUTO_IMPORT), "r1", BILLING)
    [line] = await world.handlers.history(user, 10)
    await world.store.record_history(line)
    assert await world.handlers.history(user, 10) == [line]


# -- erasures


async def test_an_erasure_destroys_the_key_first_and_announces_the_request(world: World) -> None:
    user = new_user("gone")
    await world.give_key(user)
    assert await world.has_key(user)
    erasure = await world.erasures.request(user, "corr-erase")
    assert erasure.erase_id == erase_id_of(user)
    assert (erasure.user_id, erasure.requested_at) == (user, world.clock.now)
    assert not await world.has_key(user)

    found = await world.erasures.get(erasure.erase_id)
    assert found is not None
    assert found.state == "in_progress"
    assert found.services == dict.fromkeys(ERASING_SERVICES)

    [event] = await world.announced(user)
    assert (event.name, event.correlation_id) == ("user.erasure_requested", "corr-erase")
    assert event.payload == UserErasureRequested(
        user_id=user, erase_id=erasure.erase_id, requested_at=world.clock.now
    )


async def test_asking_again_is_the_same_erasure_asked_again(world: World) -> None:
    user = new_user("gone")
    first = await world.erasures.request(user, "c1")
    world.clock.advance(3600)
    again = await world.erasures.request(user, "c2")
    assert again.erase_id == first.erase_id
    assert again.requested_at == first.requested_at  # the first request's date
    announced = await world.announced(user)
    assert [a.correlation_id for a in announced] == ["c1", "c2"]
    # each service is asked again, with the date of this request
    assert [r.requested_at for r in requests(announced)] == [first.requested_at, world.clock.now]


async def test_the_erasure_is_done_when_every_service_answered(world: World) -> None:
    user = new_user("gone")
    erasure = await world.erasures.request(user, "c1")

    def answer(service: str, documents: int) -> UserErased:
        return UserErased(
            user_id=user,
            erase_id=erasure.erase_id,
            service=service,
            documents_deleted=documents,
            erased_at=world.clock.now,
        )

    await world.erasures.on_answers([answer("entitlements", 3), answer("connector", 2)])
    partial = await world.erasures.get(erasure.erase_id)
    assert partial is not None
    assert partial.state == "in_progress"
    assert [name for name, answered in partial.services.items() if answered] == ["entitlements", "connector"]

    world.clock.advance(5)
    await world.erasures.on_answers(
        [answer("importer", 40), answer("categorizer", 7), answer("an-old-service", 1)]
    )
    done = await world.erasures.get(erasure.erase_id)
    assert done is not None
    assert done.state == "done"
    assert set(done.services) == set(ERASING_SERVICES)
    importer = done.services["importer"]
    assert importer is not None
    assert (importer.documents_deleted, importer.erased_at) == (40, world.clock.now)

    # an answer to an erasure nobody asked for records nothing
    stray = UserErased(
        user_id=user, erase_id="no-such", service="importer", documents_deleted=0, erased_at=world.clock.now
    )
    await world.erasures.on_answers([stray])
    assert await world.erasures.get("no-such") is None


async def test_erasing_the_own_documents_removes_rights_and_history(world: World) -> None:
    user, other = new_user("gone"), new_user("kept")
    for who in (user, other):
        await world.handlers.apply(who, lambda c: subscribe(c, Option.AUTO_IMPORT), "r1", BILLING)
        await world.handlers.apply(who, lambda c: change_plan(c, Plan.PREMIUM), "r2", BILLING)
    assert await world.erasures.erase_own(user) == 3  # the rights, two lines of history
    assert await world.handlers.get(user) == Entitlements.unknown_user(user)
    assert await world.handlers.history(user, 10) == []
    assert await world.erasures.erase_own(user) == 0  # twice is harmless
    assert (await world.handlers.get(other)).version == 2
    assert len(await world.handlers.history(other, 10)) == 2


# -- in memory only: a store that always loses the race


class AlwaysRaced(MemoryEntitlements):
    async def save(self, after: Entitlements, expected_version: int, record: ChangeRecord) -> bool:
        return False


async def test_too_many_lost_races_give_up() -> None:
    world = await memory_world()
    handlers = EntitlementsHandlers(AlwaysRaced(), RecordingAnnouncer(), ProcessLocks(), world.clock)
    calls: list[Entitlements] = []

    def counted(current: Entitlements) -> Change | None:
        calls.append(current)
        return subscribe(current, Option.AUTO_IMPORT)

    with pytest.raises(ConcurrentUpdate):
        await handlers.apply("u", counted, "r1", BILLING)
    assert len(calls) == 10
