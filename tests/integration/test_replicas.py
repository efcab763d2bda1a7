"""Two processes of every service on the real engines (issue #16): each replica is a member of its
service's consumer groups and the partitions are split between them; users linked and synced through
both connector replicas get exactly the bank's lines, each once, each categorised, with no balance gap;
and each importer and categorizer replica handled exactly the records of the partitions it owns."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.devstack import Engines, Stack, ensure_dir, new_user, pipeline_stack
from harness.waiting import wait_for
from ops.kafka import inspector
from ops.lag import GroupSnapshot
from shared.contract.topics import (
    CATEGORIZATIONS,
    CONNECTIONS,
    ENTITLEMENTS,
    OPERATIONS,
    SYNC_REQUESTS,
    TRANSACTIONS_RAW,
)
from tests.conftest import module_database
from tests.faults import bank_lines, pipeline_groups, run_async, settle, sync_completes, wait_idle

pytestmark = pytest.mark.engines

REPLICAS = 2
USERS = 4
# every user's savings and card accounts (about 190 lines a connection); the first user of each connector
# replica also its checking account (about 1,000 lines, and transfers with the savings account, whose two
# legs are on different partitions, so often in different categorizer replicas)
SYNCED_KINDS = ("savings", "card")
CHECKING_USERS = REPLICAS


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, engines: Engines, log_dir: Path) -> Iterator[Stack]:
    database = module_database(request)
    with pipeline_stack(engines, ensure_dir(log_dir / database), database, replicas=REPLICAS) as running:
        yield running


def service_groups(database: str) -> dict[str, dict[str, str]]:
    """Each service's consumer groups (group → topic) as `pipeline_stack(database)` names them."""
    return {
        "entitlements": {
            f"entitlements-erasures-{database}": ENTITLEMENTS,
            f"entitlements-erasures-{database}-answers": ENTITLEMENTS,
        },
        "connector": {
            f"connector-entitlements-{database}": ENTITLEMENTS,
            f"connector-sync-{database}": SYNC_REQUESTS,
            f"connector-importer-events-{database}": OPERATIONS,
            f"connector-erasures-{database}": ENTITLEMENTS,
        },
        "importer": {
            f"{database}-imp": TRANSACTIONS_RAW,
            f"{database}-imp-cat": CATEGORIZATIONS,
            f"{database}-imp-conn": CONNECTIONS,
            f"importer-erasures-{database}": ENTITLEMENTS,
        },
        "categorizer": {
            f"{database}-cat": OPERATIONS,
            f"categorizer-erasures-{database}": ENTITLEMENTS,
        },
    }


@dataclass(frozen=True)
class Membership:
    """One group as the broker describes it: its state, and each member's partitions of its topic."""

    group: str
    state: str
    partitions: frozenset[int]  # the topic's
    partitions_by_member: dict[str, frozenset[int]]
    client_ids: frozenset[str]
    committed: dict[int, int]

    @property
    def split_between_replicas(self) -> bool:
        """Stable, with REPLICAS members each holding some of the topic's partitions, all of them held."""
        shares = list(self.partitions_by_member.values())
        return (
            self.state == "Stable"
            and len(shares) == REPLICAS
            and all(shares)
            and sorted(p for share in shares for p in share) == sorted(self.partitions)
        )


def membership(snapshot: GroupSnapshot, topic: str, partitions: list[int]) -> Membership:
    by_member: dict[str, set[int]] = {}
    for (assigned_topic, partition), member in snapshot.assignments.items():
        if assigned_topic == topic:
            by_member.setdefault(member.consumer_id, set()).add(partition)
    return Membership(
        snapshot.group,
        snapshot.state,
        frozenset(partitions),
        {m: frozenset(p) for m, p in by_member.items()},
        frozenset(m.client_id for m in snapshot.assignments.values()),
        {p: offset for (t, p), offset in snapshot.committed.items() if t == topic},
    )


async def memberships(bootstrap: str, groups: dict[str, str]) -> dict[str, Membership]:
    async with inspector(bootstrap) as kafka:
        snapshots = await kafka.group_snapshots(list(groups))
        partitions = await kafka.partitions(set(groups.values()))
    return {s.group: membership(s, groups[s.group], partitions[groups[s.group]]) for s in snapshots}


async def broker_groups(bootstrap: str, database: str) -> set[str]:
    async with inspector(bootstrap) as kafka:
        return {g for g in await kafka.group_ids() if database in g}


def stable_memberships(stack: Stack, timeout: float = 90) -> dict[str, Membership]:
    """Every consumer group of the stack once each has REPLICAS members sharing all its partitions."""
    groups = {g: t for by_group in service_groups(stack.database).values() for g, t in by_group.items()}
    found: dict[str, Membership] = wait_for(
        lambda: run_async(memberships(stack.engines.kafka_bootstrap, groups)),
        timeout,
        f"every group with {REPLICAS} members sharing its topic's partitions",
        every=1.0,
        until=lambda got: all(m.split_between_replicas for m in got.values()),
    )
    return found


def test_every_replica_is_a_member_of_its_services_groups_and_they_split_the_partitions(stack):
    for service in service_groups(stack.database):
        assert len(stack.replicas(service)) == REPLICAS
        assert all(proc.running for proc in stack.replicas(service))
    assert len(stack.replicas("sandbox")) == 1, "the sandbox stays single"

    found = stable_memberships(stack)
    for service, groups in service_groups(stack.database).items():
        for group in groups:
            # each replica's clients say which replica it is (SERVICE_REPLICA)
            assert found[group].client_ids == {f"banksync-{service}", f"banksync-{service}-2"}, found[group]
            shares = [len(p) for p in found[group].partitions_by_member.values()]
            assert max(shares) - min(shares) <= 1, f"{group}: {found[group].partitions_by_member}"
    # replicas share their service's groups: no group of a replica's own (erasures included)
    expected = {g for groups in service_groups(stack.database).values() for g in groups}
    assert run_async(broker_groups(stack.engines.kafka_bootstrap, stack.database)) == expected


def consumed(proc_url: str, topic: str) -> float:
    """Records of `topic` one process consumed, whatever their outcome (its /metrics)."""
    text = httpx.get(f"{proc_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "banksync_events_consumed"
        for sample in family.samples
        if sample.name == "banksync_events_consumed_total" and sample.labels["topic"] == topic
    )


def records_per_member(before: Membership, after: Membership) -> list[int]:
    """Records each member committed between the two snapshots (its partitions' offsets moved)."""
    assert after.partitions_by_member == before.partitions_by_member, "the group rebalanced meanwhile"
    return sorted(
        sum(after.committed.get(p, 0) - before.committed.get(p, 0) for p in partitions)
        for partitions in after.partitions_by_member.values()
    )


def accounts_of(stack: Stack, importer: str, user: str) -> dict[str, dict[str, object]]:
    with stack.client(importer, user) as api:
        answer = api.get(f"/v1/users/{user}/accounts")
        answer.raise_for_status()
        return {a["aggregator_account_id"]: a for a in answer.json() if a["aggregator_account_id"]}


def test_users_synced_through_both_connectors_get_each_bank_line_once_categorised_with_no_gap(stack):
    connectors = stack.replica_names("connector")
    entitlements = stack.replica_names("entitlements")
    importers = stack.replica_names("importer")
    bootstrap = stack.engines.kafka_bootstrap
    watched = {
        TRANSACTIONS_RAW: (f"{stack.database}-imp", "importer"),
        OPERATIONS: (f"{stack.database}-cat", "categorizer"),
    }
    wait_idle(bootstrap, pipeline_groups(stack.database), 60)
    before = stable_memberships(stack)
    consumed_before = {
        topic: {proc.url: consumed(proc.url, topic) for proc in stack.replicas(service)}
        for topic, (_, service) in watched.items()
    }

    # each user's webview started at one connector replica, the next user's at the other; the callback
    # comes back to the first (the sandbox's redirect URI), the selection and the sync at the user's own
    users: dict[str, tuple[str, list[str]]] = {}
    cards: set[str] = set()
    for index in range(USERS):
        user = new_user("replicas")
        connector = connectors[index % REPLICAS]
        stack.entitle(user, entitlements=entitlements[index % REPLICAS])
        connection = stack.link_bank(user, bank_index=index % 4, connector=connector)
        kinds = (*SYNCED_KINDS, "checking") if index < CHECKING_USERS else SYNCED_KINDS
        accounts = [a["aggregator_account_id"] for a in connection["accounts"] if a["type"] in kinds]
        assert len(accounts) == len(kinds), connection["accounts"]
        cards |= {a["aggregator_account_id"] for a in connection["accounts"] if a["type"] == "card"}
        with stack.client(connector, user) as api:
            api.put(
                f"/v1/users/{user}/connections/{connection['connection_id']}/accounts",
                json={"selected": accounts},
            ).raise_for_status()  # each account's first sync starts at once
        users[user] = (connector, accounts)
    for user, (connector, _) in users.items():
        sync_completes(stack, user, re_request_after=1e9)
        # and an on-demand sync at the other replica: nothing new at the bank, nothing new in the app
        other = connectors[(connectors.index(connector) + 1) % REPLICAS]
        run = stack.sync(user, connector=other)
        stack.wait_run(user, run)

    for user, (_, accounts) in users.items():
        truth = bank_lines(stack, accounts)
        result = settle(stack, user, truth)
        assert result.operations == sum(len(ids) for ids in truth.values()) > 0
        assert result.categorised == result.expected_categorised > 0
        # each importer replica and the connector find no balance gap (a deferred card's balance is its
        # outstanding total: never checked)
        status = {s["aggregator_account_id"]: s for s in stack.status(user)}
        for shown in [*(accounts_of(stack, importer, user) for importer in importers), status]:
            for account in accounts:
                gap = shown[account]["balance_gap"]
                if account in cards:
                    assert gap is None, shown[account]
                else:
                    assert gap is not None, shown[account]
                    assert Decimal(str(gap)) == 0, shown[account]

    # the work was split by partition: each replica handled exactly the records of the partitions it owns
    after = stable_memberships(stack)
    for topic, (group, service) in watched.items():
        per_member = records_per_member(before[group], after[group])
        per_process = sorted(
            round(consumed(proc.url, topic) - consumed_before[topic][proc.url])
            for proc in stack.replicas(service)
        )
        assert sum(per_member) > 0, f"{group} had nothing to do"
        assert per_process == per_member, (
            f"{service} on {topic}: processes {per_process}, members {per_member}"
        )
