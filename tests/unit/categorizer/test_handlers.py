"""The categorizer's handlers driven through their public methods, on fakes and on the engines.

Each test body runs twice: with the in-memory ports of fakes.py (`memory`, seconds) and with the real
adapters on the session's engines (`engines`: MongoDB wire in a fresh database, the categorizations
topic on Kafka), reading back what was announced from the topic itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from services.categorizer.adapters.kafka import CategorizationPublisher
from services.categorizer.adapters.mongo import OperationsRepository, RuleSetRepository, TransferRepository
from services.categorizer.domain.dictionary import builtin_dictionary, places
from services.categorizer.domain.matching import EMPTY_MATCHER, categorize
from services.categorizer.domain.rules import (
    DuplicatePayee,
    PayeeDraft,
    PayeeNotFound,
    UnknownCategory,
    add_payee,
)
from services.categorizer.handlers import CategorizerHandlers
from services.categorizer.handlers.corrections import OperationNotFound
from services.categorizer.handlers.reexamination import ReexaminationReport, ReexaminingElsewhere
from services.categorizer.ports import (
    AccountRemoved,
    Categorizations,
    Categorized,
    OperationChanged,
    Projection,
    RuleSets,
    RulesStatus,
    Transfers,
)
from shared.batch_publisher import BatchPublisher
from shared.contract.payloads import (
    CategorizedBy,
    Operation,
    OperationCategorized,
    OperationEvent,
    PayeeRef,
    TransferRef,
)
from shared.contract.topics import CATEGORIZATIONS
from shared.mongo import make_client
from tests.kafka_helpers import read_all
from tests.unit.categorizer.fakes import (
    MemoryProjection,
    MemoryRuleSets,
    MemoryTransfers,
    RecordingCategorizations,
)

DAY = dt.date(2025, 3, 12)
DICTIONARY = builtin_dictionary()
MARTIN = PayeeDraft("Boulangerie Martin", "alimentation", ("BOULANGERIE MARTIN",))


@dataclass
class World:
    """The handlers on one set of ports, and how a test looks at what they did."""

    handlers: CategorizerHandlers
    rulesets: RuleSets
    projection: Projection
    transfers: Transfers
    categorizations: Categorizations
    # what was announced for this user, in order (per account)
    announced: Callable[[str], Awaitable[list[Categorized]]]

    def again(self, recovery_delay_s: float = 5.0) -> CategorizerHandlers:
        """Other handlers on the same ports: another replica, or this process after a restart."""
        return build(self.rulesets, self.projection, self.transfers, self.categorizations, recovery_delay_s)


def build(
    rulesets: RuleSets,
    projection: Projection,
    transfers: Transfers,
    categorizations: Categorizations,
    recovery_delay_s: float = 5.0,
) -> CategorizerHandlers:
    return CategorizerHandlers.build(
        rulesets,
        projection,
        categorizations,
        DICTIONARY,
        places=places(),
        transfers=transfers,
        recovery_delay_s=recovery_delay_s,
    )


@pytest.fixture(params=["memory", pytest.param("engines", marks=pytest.mark.engines)])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    if request.param == "memory":
        rulesets, projection, transfers = MemoryRuleSets(), MemoryProjection(), MemoryTransfers()
        recording = RecordingCategorizations()

        async def recorded(user: str) -> list[Categorized]:
            return [item for item in recording.announced if item.payload.user_id == user]

        handlers = build(rulesets, projection, transfers, recording)
        yield World(handlers, rulesets, projection, transfers, recording, recorded)
        return
    engines = request.getfixturevalue("engines")
    client = make_client(engines.mongodb_url)
    db = client[f"cat_{uuid.uuid4().hex[:8]}"]
    mongo_rulesets, mongo_projection, mongo_transfers = (
        RuleSetRepository(db),
        OperationsRepository(db),
        TransferRepository(db),
    )
    for repository in (mongo_rulesets, mongo_projection, mongo_transfers):
        await repository.create_indexes()
    publisher = BatchPublisher(engines.kafka_bootstrap, "test-categorizer-handlers", "categorizer")
    await publisher.start()
    kafka = CategorizationPublisher(publisher)

    async def published(user: str) -> list[Categorized]:
        return [
            Categorized(OperationCategorized.model_validate(event.data), event.correlationid)
            for _, event, _ in await read_all(engines.kafka_bootstrap, CATEGORIZATIONS)
            if event.userid == user and event.name == "operation.categorized"
        ]

    try:
        handlers = build(mongo_rulesets, mongo_projection, mongo_transfers, kafka)
        yield World(handlers, mongo_rulesets, mongo_projection, mongo_transfers, kafka, published)
    finally:
        await publisher.stop()
        await client.drop_database(db.name)
        await client.close()


def a_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def an_operation(
    op_id: str,
    memo: str,
    amount: str = "-12.30",
    account: str = "acc-1",
    day: dt.date = DAY,
    categorized_by: CategorizedBy | None = None,
    **fields: object,
) -> Operation:
    return Operation.model_validate(
        {
            "id": op_id,
            "account_id": account,
            "date": day,
            "amount": amount,
            "currency": "EUR",
            "memo": memo,
            "label": "",
            "status": "booked",
            "source": "bank",
            "categorized_by": categorized_by,
            **fields,
        }
    )


def event(
    user: str, operation: Operation, name: str = "operation.imported", correlation_id: str = "sync-1"
) -> OperationChanged:
    return OperationChanged(name, OperationEvent(user_id=user, operation=operation), correlation_id)


def latest(announced: list[Categorized]) -> dict[str, OperationCategorized]:
    """The last categorisation announced for each operation."""
    return {item.payload.operation_id: item.payload for item in announced}


def rules_say(memo: str) -> tuple[str | None, str | None]:
    """(category, source) the built-in dictionary alone gives a memo."""
    result = categorize(memo, EMPTY_MATCHER, DICTIONARY)
    return result.category, result.source


# ---------------------------------------------------------------------------------------------------
# The operations topic


async def test_each_imported_operation_is_categorized_once_with_the_current_rules(world: World) -> None:
    user = a_user()
    await world.handlers.operations.on_operations(
        [
            event(user, an_operation("o1", "CB CARREFOUR MARKET 12/03")),
            event(user, an_operation("o2", "CB LE PETIT ZINC 12/03", account="acc-2")),
        ]
    )
    announced = await world.announced(user)
    assert len(announced) == 2
    assert {item.correlation_id for item in announced} == {"sync-1"}
    found = latest(announced)
    assert found["o1"] == OperationCategorized(
        user_id=user,
        account_id="acc-1",
        operation_id="o1",
        payee=PayeeRef(id="global:carrefour", name="Carrefour"),
        category="alimentation",
        source="global",
        keyword="CARREFOUR MARKET",
        rules_version=0,
        month="2025-03",
        transfer=None,
        choice_version=0,
    )
    assert (found["o2"].category, found["o2"].source, found["o2"].payee) == (None, None, None)
    projected = await world.projection.get(user, "o1")
    assert projected is not None
    assert (projected.seen_version, projected.month, projected.manual) == (0, "2025-03", None)
    assert projected.result is not None
    assert projected.result.category == "alimentation"


async def test_a_redelivery_repeats_the_same_fact_and_an_unchanged_update_announces_nothing(
    world: World,
) -> None:
    user = a_user()
    imported = event(user, an_operation("o1", "CB CARREFOUR MARKET 12/03"))
    await world.handlers.operations.on_operations([imported])
    await world.handlers.operations.on_operations([imported])
    first, again = await world.announced(user)
    assert again == first  # the same fact (its event id is a function of it)
    unchanged = event(user, an_operation("o1", "CB CARREFOUR MARKET 12/03"), "operation.updated", "sync-2")
    await world.handlers.operations.on_operations([unchanged])
    assert len(await world.announced(user)) == 2
    changed = event(user, an_operation("o1", "CB MONOPRIX 12/03"), "operation.updated", "sync-3")
    await world.handlers.operations.on_operations([changed])
    announced = await world.announced(user)
    assert len(announced) == 3
    assert (announced[-1].correlation_id, announced[-1].payload.keyword) == ("sync-3", "MONOPRIX")
    projected = await world.projection.get(user, "o1")
    assert projected is not None
    assert projected.memo == "CB MONOPRIX 12/03"


async def test_a_choice_the_importer_holds_is_announced_as_it_is_and_kept(world: World) -> None:
    user = a_user()
    chosen = an_operation(
        "o1",
        "CB LE PETIT ZINC 12/03",
        categorized_by=CategorizedBy(source="manual", payee_id="p-zinc"),
        payee=PayeeRef(id="p-zinc", name="Le Zinc"),
        category="restaurants",
    )
    await world.handlers.operations.on_operations([event(user, chosen)])
    (announced,) = await world.announced(user)
    assert (announced.payload.source, announced.payload.category) == ("manual", "restaurants")
    assert announced.payload.payee == PayeeRef(id="p-zinc", name="Le Zinc")
    # a new wording of an operation the user chose for: the choice stays, nothing is announced
    renamed = chosen.model_copy(update={"memo": "CB LE PETIT ZINC PARIS 12/03"})
    await world.handlers.operations.on_operations([event(user, renamed, "operation.updated")])
    assert len(await world.announced(user)) == 1
    projected = await world.projection.get(user, "o1")
    assert projected is not None
    assert projected.manual is not None
    assert projected.manual.category == "restaurants"


async def test_the_two_legs_of_a_transfer_are_linked_and_a_deletion_unlinks_them(world: World) -> None:
    user = a_user()
    out = an_operation("t1", "VIR SEPA EMIS /MOTIF EPARGNE", "-200.00", "acc-1")
    back = an_operation("t2", "VIR SEPA RECU /DE MOI MEME", "200.00", "acc-2", DAY + dt.timedelta(days=1))
    await world.handlers.operations.on_operations([event(user, out)])
    assert latest(await world.announced(user))["t1"].transfer is None
    # the other leg in a later batch: both are announced again, linked, as `epargne`
    await world.handlers.operations.on_operations([event(user, back, correlation_id="sync-2")])
    announced = await world.announced(user)
    assert len(announced) == 3
    found = latest(announced)
    assert found["t1"].transfer == TransferRef(operation_id="t2", account_id="acc-2")
    assert found["t2"].transfer == TransferRef(operation_id="t1", account_id="acc-1")
    assert (found["t1"].category, found["t2"].category) == ("epargne", "epargne")
    leg = await world.transfers.get(user, "t1")
    assert leg is not None
    assert leg.partner == TransferRef(operation_id="t2", account_id="acc-2")
    # the same batch again (a redelivery): the links are the same, nothing else changes
    await world.handlers.operations.on_operations([event(user, back, correlation_id="sync-2")])
    assert len(await world.announced(user)) == 4
    assert latest(await world.announced(user))["t2"] == found["t2"]
    # one leg deleted: the other loses its link and goes back to what the rules say of it
    await world.handlers.operations.on_operations(
        [event(user, back, "operation.deleted", correlation_id="sync-3")]
    )
    announced = await world.announced(user)
    assert len(announced) == 5
    # read back per account (one partition each): the last of t1's is the unlinking
    (unlinked,) = [item.payload for item in announced if item.correlation_id == "sync-3"]
    assert latest(announced)["t1"] == unlinked
    assert (unlinked.operation_id, unlinked.transfer) == ("t1", None)
    assert (unlinked.category, unlinked.source) == rules_say(out.memo)
    assert await world.projection.get(user, "t2") is None
    assert await world.transfers.get(user, "t2") is None
    leg = await world.transfers.get(user, "t1")
    assert leg is not None
    assert leg.partner is None


async def test_a_deleted_account_is_forgotten_with_its_legs(world: World) -> None:
    user = a_user()
    await world.handlers.operations.on_operations(
        [
            event(user, an_operation("o1", "CB MONOPRIX 12/03", account="acc-1")),
            event(user, an_operation("t1", "VIR SEPA EMIS /MOTIF EPARGNE", "-50.00", "acc-1")),
            event(user, an_operation("t2", "VIR SEPA RECU /DE MOI MEME", "50.00", "acc-2")),
        ]
    )
    assert latest(await world.announced(user))["t2"].transfer is not None
    await world.handlers.operations.on_operations([AccountRemoved(user, "acc-1", "account-gone")])
    assert await world.projection.get(user, "o1") is None
    assert await world.projection.get(user, "t1") is None
    assert await world.projection.get(user, "t2") is not None
    announced = await world.announced(user)
    assert len(announced) == 4
    # read back per account (one partition each): the last of t2's is the unlinking
    (unlinked,) = [item for item in announced if item.correlation_id == "account-gone"]
    assert (unlinked.payload.operation_id, unlinked.payload.transfer) == ("t2", None)
    assert latest(announced)["t2"] == unlinked.payload
    assert await world.transfers.of_user(user) == {
        "t2": await world.transfers.get(user, "t2"),
    }
    with pytest.raises(OperationNotFound):
        await world.handlers.corrections.correct(user, "o1", "c", category="divers")


# ---------------------------------------------------------------------------------------------------
# Rules, re-examination, preview


async def test_a_new_payee_reexamines_past_operations_and_announces_what_changed(world: World) -> None:
    user = a_user()
    await world.handlers.operations.on_operations(
        [
            event(user, an_operation("o1", "CB BOULANGERIE MARTIN 12/03")),
            event(user, an_operation("o2", "CB BOULANGERIE MARTIN 19/03")),
            event(user, an_operation("o3", "CB LE PETIT ZINC 12/03")),
        ]
    )
    after, payee = await world.handlers.rules.change(
        user, lambda rules: add_payee(rules, MARTIN, "p-martin"), "change-1"
    )
    assert (after.version, payee.keywords) == (1, ("BOULANGERIE MARTIN",))
    assert await world.handlers.rules.status(user) == RulesStatus(1, True)
    report = await world.handlers.reexaminer.reexamine(user)
    assert (report.rules_version, report.examined, report.changed) == (1, 3, 2)
    announced = await world.announced(user)
    assert len(announced) == 5
    for item in announced[3:]:
        assert item.correlation_id == "change-1"
        assert item.payload.operation_id in {"o1", "o2"}
        assert item.payload.payee == PayeeRef(id="p-martin", name="Boulangerie Martin")
        assert (item.payload.source, item.payload.rules_version) == ("user", 1)
    assert await world.handlers.rules.status(user) == RulesStatus(1, False)
    # done: nothing to compare any more
    report = await world.handlers.reexaminer.reexamine(user)
    assert (report.examined, report.changed) == (0, 0)
    assert len(await world.announced(user)) == 5


async def test_refused_rule_commands_change_nothing(world: World) -> None:
    user = a_user()
    await world.handlers.rules.change(user, lambda rules: add_payee(rules, MARTIN, "p1"), "c1")
    with pytest.raises(DuplicatePayee):
        await world.handlers.rules.change(user, lambda rules: add_payee(rules, MARTIN, "p2"), "c2")
    with pytest.raises(UnknownCategory):
        await world.handlers.rules.change(
            user, lambda rules: add_payee(rules, PayeeDraft("X", "voyages", ("XYZ",)), "p3"), "c3"
        )
    ruleset = await world.handlers.rules.ruleset(user)
    assert (ruleset.version, [p.id for p in ruleset.payees]) == (1, ["p1"])
    assert await world.announced(user) == []


async def test_a_preview_stores_and_announces_nothing(world: World) -> None:
    user = a_user()
    await world.handlers.rules.change(user, lambda rules: add_payee(rules, MARTIN, "p1"), "c1")
    found = await world.handlers.rules.preview(user, ["CB BOULANGERIE MARTIN 12/03", "CB MONOPRIX", "XYZ"])
    assert [(p.result.payee_id, p.result.category, p.result.source) for p in found] == [
        ("p1", "alimentation", "user"),
        ("global:monoprix", "alimentation", "global"),
        (None, None, None),
    ]
    assert [p.memo for p in found] == ["CB BOULANGERIE MARTIN 12/03", "CB MONOPRIX", "XYZ"]
    assert await world.announced(user) == []
    assert [op async for op in world.projection.of_user(user)] == []


async def test_the_background_job_reexamines_what_is_asked_and_what_was_left_pending(world: World) -> None:
    user = a_user()
    await world.handlers.operations.on_operations([event(user, an_operation("o1", "CB BOULANGERIE MARTIN"))])
    # asked in this process: the job re-examines at once
    job = asyncio.create_task(world.handlers.reexaminer.run(recovery_every_s=0.05))
    try:
        await world.handlers.rules.change(user, lambda rules: add_payee(rules, MARTIN, "p1"), "c1")
        await until_done(world, user)
    finally:
        job.cancel()
    assert latest(await world.announced(user))["o1"].payee == PayeeRef(id="p1", name="Boulangerie Martin")
    # left pending (a crash after the change): the recovery scan of another process finds it
    other = PayeeDraft("Martin bis", "restaurants", ("MARTIN",))
    await world.handlers.rules.change(user, lambda rules: add_payee(rules, other, "p2"), "c2")
    assert await world.handlers.rules.status(user) == RulesStatus(2, True)
    await asyncio.sleep(0.01)
    replica = world.again(recovery_delay_s=0.0)
    job = asyncio.create_task(replica.reexaminer.run(recovery_every_s=0.05))
    try:
        await until_done(world, user)
    finally:
        job.cancel()
    # BOULANGERIE MARTIN, the longer keyword, still wins: nothing changed, nothing announced
    assert len(await world.announced(user)) == 2


async def test_two_replicas_never_reexamine_one_user_at_once(world: World) -> None:
    user = a_user()
    await world.handlers.operations.on_operations([event(user, an_operation("o1", "CB BOULANGERIE MARTIN"))])
    await world.handlers.rules.change(user, lambda rules: add_payee(rules, MARTIN, "p1"), "c1")
    replica = world.again()
    # another replica is at it: this one leaves it, reads and announces nothing
    async with world.rulesets.reexamining(user) as held:
        assert held is not None
        with pytest.raises(ReexaminingElsewhere):
            await replica.reexaminer.reexamine(user)
    assert len(await world.announced(user)) == 1
    # at the same instant on both: one does it, the other finds it done or taken
    reports = await asyncio.gather(
        world.handlers.reexaminer.reexamine(user), replica.reexaminer.reexamine(user), return_exceptions=True
    )
    assert sum(1 for r in reports if isinstance(r, ReexaminationReport) and r.changed == 1) == 1, reports
    assert all(isinstance(r, ReexaminationReport | ReexaminingElsewhere) for r in reports), reports
    assert len(await world.announced(user)) == 2, "announced once"
    assert await world.handlers.rules.status(user) == RulesStatus(1, False)


async def until_done(world: World, user: str, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while (await world.handlers.rules.status(user)).reexamination_pending:
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------------
# Corrections


async def test_a_choice_is_manual_numbered_and_clearing_it_gives_the_rules_back(world: World) -> None:
    user = a_user()
    await world.handlers.operations.on_operations([event(user, an_operation("o1", "CB LE PETIT ZINC 12/03"))])
    answer = await world.handlers.corrections.correct(user, "o1", "fix-1", category="restaurants")
    assert (answer.category, answer.source, answer.payee, answer.rules_version) == (
        "restaurants",
        "manual",
        None,
        0,
    )
    assert (answer.suggested_keywords, answer.matching_operations, answer.transfer) == (
        ("LE PETIT ZINC",),
        0,
        None,
    )
    chosen = (await world.announced(user))[-1]
    assert chosen.correlation_id == "fix-1"
    assert (chosen.payload.source, chosen.payload.category, chosen.payload.choice_version) == (
        "manual",
        "restaurants",
        1,
    )
    # a new wording: the choice stays
    renamed = an_operation("o1", "CB LE PETIT ZINC PARIS 12/03")
    await world.handlers.operations.on_operations([event(user, renamed, "operation.updated")])
    assert len(await world.announced(user)) == 2
    cleared = await world.handlers.corrections.correct(user, "o1", "fix-2", clear=True)
    assert (cleared.category, cleared.source) == (None, None)
    last = (await world.announced(user))[-1].payload
    assert (last.source, last.category, last.choice_version) == (None, None, 2)
    projected = await world.projection.get(user, "o1")
    assert projected is not None
    assert (projected.manual, projected.choice) == (None, 2)


async def test_two_corrections_of_one_operation_at_once_are_numbered_apart(world: World) -> None:
    """Two corrections made at the same instant (two replicas): each its own number, and the higher one is
    the choice kept, here and in what was announced (the importer keeps the highest)."""
    user = a_user()
    await world.handlers.operations.on_operations([event(user, an_operation("o1", "CB LE PETIT ZINC 12/03"))])
    replica = world.again()
    await asyncio.gather(
        world.handlers.corrections.correct(user, "o1", "fix-a", category="restaurants"),
        replica.corrections.correct(user, "o1", "fix-b", category="loisirs"),
    )
    chosen = {item.payload.choice_version: item.payload.category for item in await world.announced(user)}
    assert sorted(chosen) == [0, 1, 2]
    projected = await world.projection.get(user, "o1")
    assert projected is not None
    assert projected.choice == 2
    assert projected.manual is not None
    assert projected.manual.category == chosen[2]


async def test_corrections_refuse_what_does_not_exist(world: World) -> None:
    user = a_user()
    await world.handlers.operations.on_operations([event(user, an_operation("o1", "CB LE PETIT ZINC 12/03"))])
    with pytest.raises(UnknownCategory):
        await world.handlers.corrections.correct(user, "o1", "c", category="voyages")
    with pytest.raises(PayeeNotFound):
        await world.handlers.corrections.correct(user, "o1", "c", payee_id="nobody")
    with pytest.raises(OperationNotFound):
        await world.handlers.corrections.correct(user, "o-unknown", "c", category="divers")
    assert len(await world.announced(user)) == 1
    projected = await world.projection.get(user, "o1")
    assert projected is not None
    assert (projected.manual, projected.choice) == (None, 0)


async def test_a_payee_made_from_an_operation_takes_its_suggested_keyword(world: World) -> None:
    user = a_user()
    await world.handlers.operations.on_operations(
        [
            event(user, an_operation("o1", "CB BOULANGERIE MARTIN 12/03")),
            event(user, an_operation("o2", "CB BOULANGERIE MARTIN 19/03")),
        ]
    )
    answer = await world.handlers.corrections.correct(
        user,
        "o1",
        "fix-1",
        new_payee=PayeeDraft("Chez Martin", "alimentation"),
        keywords_given=False,
    )
    assert answer.payee is not None
    assert (answer.payee.name, answer.payee.keywords) == ("Chez Martin", ("BOULANGERIE MARTIN",))
    assert (answer.source, answer.rules_version, answer.matching_operations) == ("manual", 1, 1)
    # the new payee's keyword recognises the other operation once past operations are re-examined
    report = await world.handlers.reexaminer.reexamine(user)
    assert report.changed == 1
    found = latest(await world.announced(user))
    assert (found["o1"].source, found["o1"].choice_version) == ("manual", 1)
    assert (found["o2"].source, found["o2"].payee) == (
        "user",
        PayeeRef(id=answer.payee.id, name="Chez Martin"),
    )
