"""Two categorizer replicas on one user at once (issue #16): a correction through one replica while the
other categorises new operations of that user.

Two categorizer processes share their database and consumer group; the user's two accounts are chosen
so that their keys (`<user>:<account>`) fall on partitions of both group members, so each replica
categorises one account. Then, at the same time: corrections of some operations through both replicas
(HTTP), new operations and new wordings of the corrected ones on the operations topic, and a rule change
(a payee whose keyword matches corrected and uncorrected operations, so a re-examination runs). What
must hold, read on banksync.categorizations.v1 and ranked as the importer ranks what it shows
(services.importer.domain.categorizations, the later among equals):

- every operation has exactly the category its memo gets from today's rules (the categorizer's preview),
  and an operation nothing changed since its import was announced exactly once;
- a corrected operation shows the user's choice, and no automatic categorisation overtakes it: not the
  racing ones, nor a later re-examination after another rule change (which leaves it alone: the
  projection, whichever replica reads it, knows the choice).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client.parser import text_string_to_metric_families

from harness.devstack import Engines, Stack, bearer, ensure_dir, private_consumer_groups
from harness.waiting import wait_for, wait_for_async
from ops.kafka import inspector
from services.importer.domain.categorizations import categorization_rank
from shared.contract.envelope import CloudEvent, account_key
from shared.contract.payloads import Operation, OperationCategorized, OperationEvent
from shared.contract.topics import CATEGORIZATIONS, OPERATIONS
from shared.kafka import cloudevent_headers, topic_partitions
from tests.faults import TopicTail, lags, produce, run_async

pytestmark = pytest.mark.engines

MEMOS = (
    "CB BOULANGERIE MARTIN {d}",
    "CARTE X4021 {d} CARREFOUR MARKET PARIS 15",
    "CB LE PETIT ZINC {d}",
    "PRLV SEPA EDF CLIENTS PARTICULIERS",
    "RETRAIT DAB {d} BNP PARIBAS PARIS",
    "CARTE X4974 {d} SNCF INTERNET",
    "CB ATELIER DU COIN {d}",
)
PER_ACCOUNT = 28  # operations of each account before the race, and as many new ones during it
CORRECTED_PER_ACCOUNT = 6
CHOSEN = "loisirs"
MARTIN = {"name": "Boulangerie Martin", "category": "alimentation", "keywords": ["BOULANGERIE MARTIN"]}
ZINC = {"name": "Le Petit Zinc", "category": "restaurants", "keywords": ["LE PETIT ZINC"]}


@pytest.fixture(scope="module")
def replicas(engines: Engines, log_dir: Path) -> Iterator[Stack]:
    database = f"catreplicas_{uuid.uuid4().hex[:6]}"
    groups = private_consumer_groups(engines, database)
    stack = Stack(engines, ensure_dir(log_dir / database), database)
    try:
        stack.start(
            "categorizer",
            "services.categorizer",
            MONGODB_DATABASE=database,
            CATEGORIZER_GROUP_ID=groups["CATEGORIZER_GROUP_ID"],
        )
        stack.add_replica("categorizer")
        yield stack
    finally:
        stack.stop_all()


def group_of(stack: Stack) -> str:
    return str(stack.replicas("categorizer")[0].env["CATEGORIZER_GROUP_ID"])


async def members_partitions(bootstrap: str, group: str) -> list[frozenset[int]]:
    """Each member's partitions of the operations topic (empty while the group is not stable)."""
    async with inspector(bootstrap) as kafka:
        snapshot = await kafka.group_snapshot(group)
    if snapshot.state != "Stable":
        return []
    by_member: dict[str, set[int]] = {}
    for (topic, partition), member in snapshot.assignments.items():
        if topic == OPERATIONS:
            by_member.setdefault(member.consumer_id, set()).add(partition)
    return [frozenset(p) for p in by_member.values()]


def accounts_on_both_members(user: str, partitions: list[int], shares: list[frozenset[int]]) -> list[str]:
    """Two account ids of `user` whose keys fall on partitions of two different members."""
    partitioner = DefaultPartitioner()
    found: dict[int, str] = {}
    for n in range(1000):
        account = f"acc-{n}-{uuid.uuid4().hex[:6]}"
        partition = partitioner(account_key(user, account).encode(), partitions, partitions)
        member = next(i for i, share in enumerate(shares) if partition in share)
        found.setdefault(member, account)
        if len(found) == 2:
            return list(found.values())
    raise AssertionError(f"no accounts on both members: {shares}")


def operation(account: str, n: int, memo: str | None = None) -> Operation:
    day = dt.date(2026, 10, 1) + dt.timedelta(days=n % 28)
    text = memo or MEMOS[n % len(MEMOS)].format(d=f"{day:%d/%m}")
    return Operation(
        id=f"op-{account}-{n}",
        account_id=account,
        date=day,
        amount=f"-{10 + n}.50",
        currency="EUR",
        memo=text,
        label="",
        status="booked",
        source="bank",
    )


async def publish(bootstrap: str, user: str, items: list[tuple[str, Operation]]) -> None:
    """(event name, operation) on the operations topic as the importer writes them (key per account)."""
    records = []
    for name, op in items:
        event = CloudEvent.new(
            service="importer",
            name=name,
            data=OperationEvent(user_id=user, operation=op).model_dump(mode="json"),
            user_id=user,
            correlation_id=f"sync-{user}",
            subject=op.id,
        )
        records.append((account_key(user, op.account_id), event.to_json_bytes(), cloudevent_headers(event)))
    await produce(bootstrap, OPERATIONS, records)


def categorized(tail: TopicTail, user: str) -> dict[str, list[OperationCategorized]]:
    """Every categorisation announced for the user, per operation, in the order of its partition."""
    found: dict[str, list[OperationCategorized]] = {}
    for event in tail.events(CATEGORIZATIONS, user, "operation.categorized"):
        item = OperationCategorized.model_validate(event.data)
        found.setdefault(item.operation_id, []).append(item)
    return found


def shown(items: list[OperationCategorized]) -> OperationCategorized:
    """What the importer keeps of an operation's categorisations: the strongest, the later among equals."""
    best = items[0]
    for item in items[1:]:
        if categorization_rank(item.source, item.rules_version, item.choice_version) >= categorization_rank(
            best.source, best.rules_version, best.choice_version
        ):
            best = item
    return best


async def quiet(stack: Stack, user: str, apis: list[httpx.AsyncClient]) -> None:
    """Until the group has handled every operation event and no re-examination of the user is pending."""
    group = group_of(stack)
    bootstrap = stack.engines.kafka_bootstrap
    await wait_for_async(
        lambda: lags(bootstrap, [(group, OPERATIONS)]),
        120,
        "the categorizers caught up",
        0.5,
        until=lambda lag: not any(lag.values()),
    )
    for api in apis:
        await wait_for_async(
            functools.partial(api.get, f"/v1/users/{user}/rules/status"),
            60,
            "re-examinations done",
            0.3,
            until=lambda answer: answer.status_code == 200 and not answer.json()["reexamination_pending"],
        )
    await asyncio.sleep(1.0)  # announcements of a re-examination that just ended are on their way


def consumed(url: str) -> float:
    """Records of the operations topic one process consumed, whatever their outcome (its /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "banksync_events_consumed"
        for sample in family.samples
        if sample.name == "banksync_events_consumed_total" and sample.labels["topic"] == OPERATIONS
    )


async def preview(api: httpx.AsyncClient, user: str, memos: list[str]) -> dict[str, str | None]:
    answer = await api.post(f"/v1/users/{user}/categorize/preview", json={"memos": memos})
    answer.raise_for_status()
    return {item["memo"]: item["category"] for item in answer.json()}


@pytest.mark.timeout(420)
async def test_a_correction_on_one_replica_while_the_other_categorises_is_kept_and_each_operation_right(
    replicas: Stack,
) -> None:
    bootstrap = replicas.engines.kafka_bootstrap
    partitions = sorted(await topic_partitions(bootstrap, OPERATIONS))
    shares = await wait_for_async(
        lambda: members_partitions(bootstrap, group_of(replicas)),
        90,
        "two categorizers sharing the topic",
        1.0,
        until=lambda got: len(got) == 2 and all(got) and sorted(p for s in got for p in s) == partitions,
    )
    user = f"user-{uuid.uuid4().hex[:8]}"
    accounts = accounts_on_both_members(user, partitions, shares)
    procs = replicas.replicas("categorizer")
    apis = [httpx.AsyncClient(base_url=proc.url, headers=bearer(user), timeout=30) for proc in procs]
    tail = TopicTail(bootstrap, [CATEGORIZATIONS])
    try:
        await asyncio.to_thread(tail.__enter__)
        first = [operation(account, n) for account in accounts for n in range(PER_ACCOUNT)]
        await publish(bootstrap, user, [("operation.imported", op) for op in first])
        await wait_for_async(
            lambda: asyncio.to_thread(categorized, tail, user),
            90,
            "the first operations categorised",
            0.3,
            until=lambda got: all(op.id in got for op in first),
        )

        # the race: corrections through both replicas, new operations and new wordings of the corrected
        # ones for both accounts (so for both replicas), and a rule change matching some of each
        corrected = [
            op
            for account in accounts
            for op in [o for o in first if o.account_id == account][:CORRECTED_PER_ACCOUNT]
        ]
        consumed_before = [consumed(proc.url) for proc in procs]
        new = [operation(account, n) for account in accounts for n in range(PER_ACCOUNT, 2 * PER_ACCOUNT)]
        reworded = [op.model_copy(update={"memo": f"{op.memo} PARIS"}) for op in corrected]

        async def correct(index: int, op: Operation) -> httpx.Response:
            return await apis[index % 2].post(
                f"/v1/users/{user}/operations/{op.id}/payee", json={"category": CHOSEN}
            )

        async def events() -> None:
            await publish(bootstrap, user, [("operation.updated", op) for op in reworded])
            for start in range(0, len(new), 8):  # in small batches, interleaved with the corrections
                await publish(bootstrap, user, [("operation.imported", op) for op in new[start : start + 8]])
                await asyncio.sleep(0.05)

        corrections, _, payee = await asyncio.gather(
            asyncio.gather(*(correct(i, op) for i, op in enumerate(corrected))),
            events(),
            apis[1].post(f"/v1/users/{user}/payees", json=MARTIN),
        )
        assert payee.status_code == 201, payee.text
        for answer in corrections:
            assert answer.status_code == 200, answer.text
            assert (answer.json()["category"], answer.json()["source"]) == (CHOSEN, "manual")
        await quiet(replicas, user, apis)

        # a later rule change matching corrected operations: the re-examination leaves them alone
        zinc = await apis[0].post(f"/v1/users/{user}/payees", json=ZINC)
        assert zinc.status_code == 201, zinc.text
        await quiet(replicas, user, apis)

        found = await asyncio.to_thread(categorized, tail, user)
        current = {op.id: op for op in [*first, *new]} | {op.id: op for op in reworded}
        rules = await preview(apis[0], user, sorted({op.memo for op in current.values()}))
        corrected_ids = {op.id for op in corrected}
        wrong = {
            op_id: (shown(found[op_id]).category, rules[op.memo])
            for op_id, op in current.items()
            if op_id not in corrected_ids and shown(found[op_id]).category != rules[op.memo]
        }
        assert not wrong, f"operations not categorised as today's rules say: {wrong}"
        raced = 0  # corrected operations that got an automatic categorisation after the user's choice
        for op_id in corrected_ids:
            first_manual = next(i for i, c in enumerate(found[op_id]) if c.source == "manual")
            raced += any(c.source != "manual" for c in found[op_id][first_manual + 1 :])
            kept = shown(found[op_id])
            assert (kept.source, kept.category) == ("manual", CHOSEN), (op_id, found[op_id])
            choice = kept.choice_version
            overtaking = [c for c in found[op_id] if c.source != "manual" and c.choice_version >= choice]
            assert not overtaking, f"{op_id}: automatic categorisations at or above the choice: {overtaking}"
        # nothing changed these since their import: one announcement per decision (a batch that raced with
        # the rule change announces its operations again with the new rules version: same category)
        untouched = [
            op
            for op in [*first, *new]
            if op.id not in corrected_ids and "MARTIN" not in op.memo and "ZINC" not in op.memo
        ]
        assert untouched
        doubled = {
            op.id: [(c.rules_version, c.choice_version, c.category) for c in found[op.id]]
            for op in untouched
            if len({(c.rules_version, c.choice_version) for c in found[op.id]}) != len(found[op.id])
            or len({c.category for c in found[op.id]}) != 1
        }
        assert not doubled, f"announced twice for one decision, or with two categories: {doubled}"
        again = sum(1 for op in untouched if len(found[op.id]) > 1)
        print(
            f"\n{raced} of {len(corrected_ids)} corrections raced with an automatic categorisation; "
            f"{len(untouched)} operations untouched since import, {again} announced again by a catch-up"
        )
        # both replicas took part: each consumed the events of the account on its partitions
        assert all(consumed(proc.url) > before for proc, before in zip(procs, consumed_before, strict=True))
    finally:
        await asyncio.to_thread(tail.__exit__, None, None, None)
        for api in apis:
            await api.aclose()


def test_the_two_replicas_share_the_group(replicas: Stack) -> None:
    """Control: both processes run and are members of one group, each with partitions."""
    assert all(proc.running for proc in replicas.replicas("categorizer"))
    shares = wait_for(
        lambda: run_async(members_partitions(replicas.engines.kafka_bootstrap, group_of(replicas))),
        90,
        "two members",
        1.0,
        until=lambda got: len(got) == 2 and all(got),
    )
    assert len(shares) == 2
