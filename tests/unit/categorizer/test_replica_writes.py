"""The categorizer's shared documents written by two replicas at the same instant, on the real engine: two
sets of adapters on two clients of their own (as two categorizer processes have), firing together.

On the local engine (FerretDB v1) two compare-and-set writes of one rule set both succeed in a share of
the rounds (tests/unit/connector/test_run_leases.py measures it), so a user's rule set has one writer at
a time (its `rules:` lease); corrections claim their numbers with inserts; re-examinations and pairings
of one user hold a lease each.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from harness.devstack import Engines
from services.categorizer.adapters.mongo import (
    CategorizerEraser,
    OperationsRepository,
    RuleSetRepository,
    TransferRepository,
)
from services.categorizer.domain.rules import PayeeDraft, RuleSet, add_payee
from services.categorizer.domain.transfers import TransferLeg
from services.categorizer.ports import LeaseLost, Projected, Seen
from shared.mongo import make_client

pytestmark = pytest.mark.engines

T0 = datetime(2026, 11, 1, tzinfo=UTC)
ROUNDS = 20
Doc = dict[str, Any]


class Replica:
    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        db = client[database]
        self.rulesets = RuleSetRepository(db)
        self.projection = OperationsRepository(db)
        self.transfers = TransferRepository(db)
        self.eraser = CategorizerEraser(db)


@pytest.fixture
async def replicas(engines: Engines) -> AsyncIterator[list[Replica]]:
    clients = [make_client(engines.mongodb_url) for _ in range(2)]
    database = f"catrep_{uuid.uuid4().hex[:8]}"
    found = [Replica(client, database) for client in clients]
    for repository in (found[0].rulesets, found[0].projection, found[0].transfers):
        await repository.create_indexes()
    try:
        yield found
    finally:
        await clients[0].drop_database(database)
        for client in clients:
            await client.close()


def adding(name: str) -> Any:
    def command(rules: RuleSet) -> tuple[RuleSet, object]:
        return add_payee(rules, PayeeDraft(name, "alimentation", (name.upper(),)), f"id-{name}")

    return command


async def test_two_replicas_changing_one_users_rules_at_once_lose_no_change(replicas: list[Replica]) -> None:
    one, two = replicas
    for n in range(ROUNDS):
        user = f"user-{n}"
        await one.rulesets.update(user, adding("first"), T0, "c0", reexamine=False)
        await asyncio.gather(
            one.rulesets.update(user, adding(f"left{n}"), T0, "c1", reexamine=True),
            two.rulesets.update(user, adding(f"right{n}"), T0, "c2", reexamine=True),
        )
        stored = await two.rulesets.stored(user)
        assert stored.ruleset.version == 3, n
        assert {p.name for p in stored.ruleset.payees} == {"first", f"left{n}", f"right{n}"}, n
        # the payees of every version since the last re-examination are there to compare with
        assert {v: len(p) for v, p in stored.snapshots.items()} == {0: 0, 1: 1, 2: 2, 3: 3}, n


async def test_a_reexamination_done_while_the_rules_change_loses_no_change(replicas: list[Replica]) -> None:
    one, two = replicas
    for n in range(ROUNDS):
        user = f"user-{n}"
        await one.rulesets.update(user, adding("first"), T0, "c0", reexamine=True)
        await asyncio.gather(
            one.rulesets.reexamination_done(user, 1),
            two.rulesets.update(user, adding(f"more{n}"), T0, "c1", reexamine=True),
        )
        stored = await one.rulesets.stored(user)
        assert {p.name for p in stored.ruleset.payees} == {"first", f"more{n}"}, n
        assert stored.examined_version == 1
        status = await one.rulesets.status(user)
        assert (status.rules_version, status.reexamination_pending) == (2, True), n
        assert stored.payees_at(1) is not None, "version 1 is still compared with"


async def test_one_replica_at_a_time_reexamines_a_user(replicas: list[Replica]) -> None:
    one, two = replicas
    for n in range(ROUNDS):
        user = f"user-{n}"
        async with one.rulesets.reexamining(user) as first, two.rulesets.reexamining(user) as second:
            assert (first is None) != (second is None), n
            held = first or second
            assert held is not None
            await held.keep()
        async with two.rulesets.reexamining(user) as again:
            assert again is not None, "let go at the end"


async def test_two_corrections_of_one_operation_at_once_get_two_numbers(replicas: list[Replica]) -> None:
    one, two = replicas
    op = Projected("user-1", "op-1", "acc-1", "CB X", "", 1, None, None, "2026-11")
    numbers: list[int] = []
    for _ in range(ROUNDS):
        numbers += await asyncio.gather(
            one.projection.next_choice(op, T0), two.projection.next_choice(op, T0)
        )
    assert sorted(numbers) == list(range(1, 2 * ROUNDS + 1))
    # the account's numbers go with it, and an erasure takes the user's
    await one.projection.delete_account("user-1", "acc-1")
    assert await one.projection.next_choice(op, T0) == 1
    assert await one.eraser.erase_user("user-1") >= 1
    assert await one.projection.choices.count_documents({"user_id": "user-1"}) == 0


async def test_two_replicas_pairing_one_users_legs_never_pair_at_once(replicas: list[Replica]) -> None:
    inside = 0
    most = 0

    async def pair(replica: Replica, users: list[str]) -> None:
        nonlocal inside, most
        async with replica.transfers.pairing(users):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    # two accounts of one user on two replicas, and batches naming users in either order
    await asyncio.gather(
        *(
            pair(replicas[n % 2], ["user-a", "user-b"] if n % 3 else ["user-b", "user-a"])
            for n in range(ROUNDS)
        )
    )
    assert most == 1


async def test_erasing_a_user_takes_the_leases_with_it(replicas: list[Replica]) -> None:
    one, _ = replicas
    await one.rulesets.update("user-9", adding("first"), T0, "c0", reexamine=False)
    async with one.rulesets.reexamining("user-9") as held:
        assert held is not None
        seen = Seen("user-9", "op-1", "acc-1", "CB X", "", 1, None, None, "2026-11")
        await one.projection.write_seen([seen], T0)
        assert await one.eraser.erase_user("user-9") >= 3
    assert await one.rulesets.leases.store.leases.count_documents({}) == 0


async def test_a_pairing_that_stalled_past_its_lease_writes_nothing(replicas: list[Replica]) -> None:
    """A replica paused in the middle of a pairing (past its lease) while another pairs the same user:
    when it wakes, its writes of the user's legs are refused (LeaseLost) instead of undoing the other's."""
    one, two = replicas
    one.transfers.PAIRING_LEASE = timedelta(seconds=1)
    leg = TransferLeg("op-1", "acc-1", "EUR", -20_000, dt.date(2026, 11, 3))
    async with one.transfers.pairing(["user-z"]):
        await one.transfers.put([("user-z", leg, "2026-11")], T0)
        await asyncio.sleep(1.2)  # the pause: its lease ends
        async with two.transfers.pairing(["user-z"]):
            with pytest.raises(LeaseLost):
                await one.transfers.write("user-z", {"op-1": None}, ["op-1"], T0)
            await two.transfers.write("user-z", {}, [], T0)
    assert await two.transfers.get("user-z", "op-1") is not None, "the stalled pairing deleted nothing"
