"""Replays with two importer processes on the same database and consumer groups (issue #16).

Every replay is requested through replica A. Each runs on the replica that owns its account's partition
of the raw topic (A for some accounts, B for the others), in order with the account's lines; its status
lives in MongoDB, so both replicas answer the same for it. After the replays the deleted accounts are
back with exactly one operation per bank line, lines sent after the requests included. A request put on
the topic by another tool, with no status yet, runs as well and gets one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.devstack import Engines, ServiceProcess, free_port, private_consumer_groups, user_client
from harness.paging import operations_by_account
from harness.waiting import wait_for, wait_for_async
from ops.kafka import inspector
from services.importer.replay import partition_for
from shared.contract.envelope import CloudEvent, account_key
from shared.contract.payloads import ReplayRequested
from shared.contract.topics import TRANSACTIONS_RAW
from shared.kafka import topic_partitions
from tests.kafka_helpers import publish as publish_events

pytestmark = pytest.mark.engines

LINES = 12  # per account, before the replays
FINISHED = {"succeeded", "failed"}


class Replicas:
    def __init__(self, a: ServiceProcess, b: ServiceProcess, raw_group: str) -> None:
        self.a, self.b, self.raw_group = a, b, raw_group

    @property
    def both(self) -> tuple[ServiceProcess, ServiceProcess]:
        return self.a, self.b


@pytest.fixture(scope="module")
def replicas(engines: Engines, log_dir: Path) -> Iterator[Replicas]:
    database = f"replayrep_{uuid.uuid4().hex[:6]}"
    groups = private_consumer_groups(engines, database.replace("_", "-"))
    env = engines.service_env(MONGODB_DATABASE=database, **groups)
    started: list[ServiceProcess] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            proc = ServiceProcess(
                "services.importer", port, env, log_dir / f"importer-replay-{name}-{port}.log"
            )
            started.append(proc.start())
        yield Replicas(started[0], started[1], groups["IMPORTER_GROUP_ID"])
    finally:
        for proc in started:
            proc.request_stop()
        for proc in started:
            proc.wait_stopped()


def pid_of(proc: ServiceProcess) -> int:
    assert proc.process is not None
    return proc.process.pid


def ops_api(proc: ServiceProcess) -> httpx.Client:
    return user_client(proc.url, "ops-replayer", scopes="ops")


async def raw_partitions_by_member(bootstrap: str, group: str) -> tuple[str, list[frozenset[int]]]:
    async with inspector(bootstrap) as kafka:
        [snapshot] = await kafka.group_snapshots([group])
    shares: dict[str, set[int]] = {}
    for (topic, partition), member in snapshot.assignments.items():
        if topic == TRANSACTIONS_RAW:
            shares.setdefault(member.consumer_id, set()).add(partition)
    return snapshot.state, sorted((frozenset(s) for s in shares.values()), key=sorted)


async def split_between_both(bootstrap: str, group: str, partitions: list[int]) -> list[frozenset[int]]:
    """The raw topic's partitions as the group shares them, once both replicas hold some."""

    def split(found: tuple[str, list[frozenset[int]]]) -> bool:
        state, shares = found
        return state == "Stable" and len(shares) == 2 and sorted(p for s in shares for p in s) == partitions

    _, shares = await wait_for_async(
        lambda: raw_partitions_by_member(bootstrap, group),
        90,
        "both importers holding partitions of the raw topic",
        1.0,
        until=split,
    )
    result: list[frozenset[int]] = shares
    return result


def one_account_per_partition(user: str, partitions: list[int]) -> dict[int, str]:
    """An aggregator account id of `user` whose key lands on each partition."""
    found: dict[int, str] = {}
    for n in range(10_000):
        found.setdefault(partition_for(account_key(user, f"ac{n}"), partitions), f"ac{n}")
        if len(found) == len(partitions):
            return found
    raise AssertionError("no account for some partition")


def line(user: str, account: str, n: int) -> CloudEvent:
    return CloudEvent.new(
        service="connector",
        name="transaction.observed",
        data={
            "user_id": user,
            "connection_id": "c1",
            "aggregator_account_id": account,
            "bank": {"id": "101", "name": "Banque Démo"},
            "sync_run_id": f"run-{n // LINES}",
            "initial": n < LINES,
            "transaction": {
                "id": f"{account}-{n}",
                "id_account": account,
                "date": f"2026-02-{1 + n % 27:02d}",
                "value": f"-{n + 1}.40",
                "original_wording": f"CB EPICERIE {n}",
            },
        },
        user_id=user,
        correlation_id=f"run-{n // LINES}",
    )


async def publish(bootstrap: str, items: list[tuple[str, CloudEvent]]) -> None:
    await publish_events(bootstrap, TRANSACTIONS_RAW, items, "replay-replicas-test")


def bank_ids_by_account(proc: ServiceProcess, user: str) -> dict[str, list[str]]:
    """Each aggregator account's operations, as the bank line ids they came from (a twice-imported line
    shows twice)."""
    with user_client(proc.url, user) as api:
        return {
            account["aggregator_account_id"]: sorted(op["aggregator_transaction_id"] for op in ops)
            for account, ops in operations_by_account(api, user, limit=500)
            if account.get("aggregator_account_id")
        }


def wait_bank_ids(proc: ServiceProcess, user: str, expected: dict[str, list[str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = wait_for(
        lambda: bank_ids_by_account(proc, user),
        90,
        "every bank line imported once",
        0.5,
        until=lambda got: got == expected,
    )
    return found


def statuses_from_both(replicas: Replicas, replay_ids: list[str]) -> list[tuple[dict[str, Any], ...]]:
    with ops_api(replicas.a) as a, ops_api(replicas.b) as b:
        return [tuple(client.get(f"/v1/ops/replays/{r}").json() for client in (a, b)) for r in replay_ids]


def all_finished(found: list[tuple[dict[str, Any], ...]]) -> bool:
    return all(view.get("state") in FINISHED for views in found for view in views)


async def test_replays_run_on_the_partitions_owner_and_every_replica_reads_their_status(engines, replicas):
    bootstrap = engines.kafka_bootstrap
    partitions = await topic_partitions(bootstrap, TRANSACTIONS_RAW)
    shares = await split_between_both(bootstrap, replicas.raw_group, partitions)
    user = f"rr-{uuid.uuid4().hex[:8]}"
    accounts = one_account_per_partition(user, partitions)
    await publish(
        bootstrap,
        [(account_key(user, acct), line(user, acct, n)) for acct in accounts.values() for n in range(LINES)],
    )
    first = {acct: sorted(f"{acct}-{n}" for n in range(LINES)) for acct in accounts.values()}
    await asyncio.to_thread(wait_bank_ids, replicas.b, user, first)

    with user_client(replicas.a.url, user) as api:
        for account in api.get(f"/v1/users/{user}/accounts").json():
            api.delete(f"/v1/users/{user}/accounts/{account['account_id']}").raise_for_status()
    assert await asyncio.to_thread(bank_ids_by_account, replicas.b, user) == {}

    replay_ids: dict[str, str] = {}
    with ops_api(replicas.a) as ops:
        for acct in accounts.values():
            asked = ops.post("/v1/ops/replay", json={"user_id": user, "aggregator_account_id": acct})
            assert asked.status_code == 202, asked.text
            view = asked.json()
            assert (view["status"], view["state"], view["attempts"]) == ("running", "requested", 0)
            assert asked.headers["location"] == f"/v1/ops/replays/{view['replay_id']}"
            replay_ids[acct] = view["replay_id"]
    # one more line per account, after its request: consumed as usual once the replay has run
    await publish(bootstrap, [(account_key(user, a), line(user, a, LINES)) for a in accounts.values()])

    found = await asyncio.to_thread(
        wait_for,
        lambda: statuses_from_both(replicas, list(replay_ids.values())),
        120,
        "every replay finished, as both replicas say",
        0.5,
        until=all_finished,
    )
    for from_a, from_b in found:
        assert from_a == from_b  # one status, whichever replica answers
        assert (from_a["status"], from_a["state"], from_a["error"]) == ("succeeded", "succeeded", None)
        assert from_a["result"]["records_matched"] == LINES  # up to its request: not the line after it
        assert from_a["result"]["stats"]["imported"] == LINES
        assert from_a["processed"] == from_a["total"] > 0
        assert None not in (from_a["requested_at"], from_a["started_at"], from_a["finished_at"])

    # each ran on the process that owns its account's partition: A for some, B for the others
    pids = {str(pid_of(replicas.a)): "a", str(pid_of(replicas.b)): "b"}
    partitions_by_runner: dict[str, set[int]] = {}
    for acct, (view, _) in zip(replay_ids, found, strict=True):
        assert view["result"]["partition"] == next(p for p, a in accounts.items() if a == acct)
        runner = pids[view["runner"].rsplit(":", 1)[1]]
        partitions_by_runner.setdefault(runner, set()).add(view["result"]["partition"])
    assert set(partitions_by_runner) == {"a", "b"}, partitions_by_runner
    assert sorted((frozenset(s) for s in partitions_by_runner.values()), key=sorted) == shares
    assert (await raw_partitions_by_member(bootstrap, replicas.raw_group))[1] == shares  # no rebalance

    after = {acct: sorted([*ids, f"{acct}-{LINES}"]) for acct, ids in first.items()}
    assert await asyncio.to_thread(wait_bank_ids, replicas.a, user, after) == after
    await asyncio.sleep(2)  # nothing arrives late
    assert await asyncio.to_thread(bank_ids_by_account, replicas.b, user) == after


async def test_a_request_without_status_runs_and_both_replicas_then_read_it(engines, replicas):
    """As `banksync` or any tool could put it on the topic: no status document until its owner runs it."""
    bootstrap = engines.kafka_bootstrap
    user, acct = f"rq-{uuid.uuid4().hex[:8]}", "solo"
    await publish(bootstrap, [(account_key(user, acct), line(user, acct, n)) for n in range(3)])
    await asyncio.to_thread(wait_bank_ids, replicas.a, user, {acct: [f"{acct}-{n}" for n in range(3)]})
    request = ReplayRequested(
        replay_id=f"tool-{uuid.uuid4().hex[:8]}",
        user_id=user,
        aggregator_account_id=acct,
        requested_at=dt.datetime.now(dt.UTC),
    )
    with ops_api(replicas.b) as ops:
        assert ops.get(f"/v1/ops/replays/{request.replay_id}").status_code == 404
    event = CloudEvent.new(
        service="importer",
        name="replay.requested",
        data=request.model_dump(mode="json"),
        user_id=user,
        correlation_id="by-a-tool",
    )
    await publish(bootstrap, [(account_key(user, acct), event)])
    [(from_a, from_b)] = await asyncio.to_thread(
        wait_for,
        lambda: statuses_from_both(replicas, [request.replay_id]),
        60,
        "the tool's replay finished",
        0.5,
        until=lambda got: all(v.get("state") in FINISHED for v in got[0]),
    )
    assert from_a == from_b
    assert (from_a["state"], from_a["attempts"], from_a["result"]["stats"]["unchanged"]) == (
        "succeeded",
        1,
        3,
    )
    assert from_a["runner"].rsplit(":", 1)[1] in {str(pid_of(p)) for p in replicas.both}
