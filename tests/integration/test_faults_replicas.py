"""Faults with several replicas of each service: nothing lost, nothing doubled, no stale write (issue #16).

The stack runs two processes each of the connector, the importer and the categorizer (and of
entitlements), sharing their databases and consumer groups, so Kafka splits every topic's partitions
between them. Every test counts exactly, as test_faults_pipeline.py does (tests/faults.py `settle`): the
bank's live lines are the operations the importer lists, one each, each with the category the
categorizer gives its memo, and every account's balance gap is zero.

- SIGKILL of one replica of each service in the middle of a large sync, not restarted: the other
  replicas take its partitions after Kafka's session timeout and finish the work.
- SIGSTOP of an importer and a categorizer replica in the middle of a sync, for longer than the session
  timeout: their partitions move; meanwhile the bank books its pending lines (in place and under new
  ids), deletes some and adds some, and a new sync brings it all through the other replicas. Then the
  paused replicas wake with the batches they were holding, decided on states the others have moved
  past: the fencing of the importer's writes (`src_rev`) refuses what they would overwrite or bring
  back, and they decide again on the newer state.
- Replicas added and removed during a large sync: each join and leave moves partitions while records
  are being handled (the hand-over waits for the batch in hand).
The same user's on-demand sync sent to two connector replicas at once is test_connector_replicas.py.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.devstack import Engines, Stack, ensure_dir, pipeline_stack
from harness.waiting import wait_for
from shared.contract.topics import CATEGORIZATIONS, OPERATIONS, TRANSACTIONS_RAW
from tests.conftest import module_database
from tests.faults import (
    TopicTail,
    account_ids,
    announced_once,
    bank_lines,
    faults_cleared,
    linked,
    select,
    set_faults,
    settle,
    sync_completes,
)

pytestmark = pytest.mark.engines

REPLICATED = ("entitlements", "connector", "importer", "categorizer")
# aiokafka's default: a member that sends no heartbeat for this long leaves its group
SESSION_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, engines: Engines, log_dir: Path) -> Iterator[Stack]:
    database = module_database(request)
    with pipeline_stack(engines, ensure_dir(log_dir / database), database) as running:
        for name in REPLICATED:
            running.add_replica(name)
        yield running


def reached(tail: TopicTail, topic: str, user: str, name: str, at: int) -> bool:
    return tail.count(topic, user, name) >= at


def wait_reached(tail: TopicTail, topic: str, user: str, name: str, at: int) -> None:
    wait_for(
        functools.partial(reached, tail, topic, user, name, at), 180, f"{at} {name} on {topic}", every=0.05
    )


def log_events(stack: Stack, name: str, event: str) -> list[str]:
    """The log lines of the process `name` that record `event` (structlog's JSON or console lines)."""
    text = stack.processes[name].log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if re.search(rf"\b{re.escape(event)}\b", line)]


def restarted(stack: Stack, names: list[str]) -> None:
    for name in names:
        proc = stack.processes[name]
        if not proc.running:
            proc.start(wait_ready=False)
    for name in names:
        stack.processes[name].wait_until("/readyz", 200, 90)


def large_sync(stack: Stack, prefix: str, banks: tuple[int, ...]) -> tuple[str, dict[str, set[str]], int]:
    """A user with demo banks linked; the first sync starts when the accounts are selected (below)."""
    user, first = linked(stack, prefix, banks[0])
    connections = [first] + [stack.link_bank(user, bank_index=bank) for bank in banks[1:]]
    accounts = [a for c in connections for a in account_ids(c)]
    truth = bank_lines(stack, accounts)
    for connection in connections:
        select(stack, user, connection, account_ids(connection))
    return user, truth, sum(len(ids) for ids in truth.values())


@pytest.mark.timeout(480)
def test_a_replica_of_each_service_sigkilled_mid_sync_the_others_finish_it(stack: Stack) -> None:
    # the second replicas: the test reads through the first ones (stack.client, stack.status)
    killed = ["connector-2", "importer-2", "categorizer-2"]
    with TopicTail(stack.engines.kafka_bootstrap, [TRANSACTIONS_RAW, OPERATIONS, CATEGORIZATIONS]) as tail:
        with faults_cleared(stack):
            set_faults(stack, latency_ms=300)  # the sync lasts long enough to be cut
            user, truth, total = large_sync(stack, "kill", (0,))
            assert total > 1000
            wait_reached(tail, OPERATIONS, user, "operation.imported", total // 4)
            for name in killed:
                stack.stop(name, kill=True)  # SIGKILL: no commit, no goodbye, not started again
            assert tail.distinct(OPERATIONS, user, "operation.imported") < total, "the import had ended"
        sync_completes(stack, user, timeout=240)
        result = settle(stack, user, truth)
        assert result.operations == total
        assert result.categorised == result.expected_categorised > total // 2
        announced_once(tail, user, total)
    # the survivors took the partitions over
    assert log_events(stack, "importer", "partitions_assigned")
    restarted(stack, killed)


def bank_changes(stack: Stack, truth: dict[str, set[str]]) -> dict[str, int]:
    """What the bank does while replicas sleep: books every pending line (every other one under a new
    id, the old one deleted), deletes a few booked lines and adds new ones, on every account."""
    done = {"booked": 0, "rebooked": 0, "deleted": 0, "added": 0}
    with stack.sandbox() as sandbox:
        for account in truth:
            answer = sandbox.get(f"/sandbox/accounts/{account}/transactions/all")
            answer.raise_for_status()
            body = answer.json()
            lines: list[dict[str, Any]] = body["transactions"] if isinstance(body, dict) else body
            live = [t for t in lines if not t.get("deleted")]
            for i, line in enumerate(t for t in live if t.get("coming")):
                new_id = i % 2 == 1
                sandbox.post(
                    f"/sandbox/transactions/{line['id']}/book", json={"new_id": new_id}
                ).raise_for_status()
                done["rebooked" if new_id else "booked"] += 1
            for line in [t for t in live if not t.get("coming")][:3]:
                sandbox.post(f"/sandbox/transactions/{line['id']}/delete").raise_for_status()
                done["deleted"] += 1
            added = [
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "value": -12.5 - i,
                    "original_wording": f"CB MONOPRIX {i}",
                }
                for i in range(4)
            ]
            sandbox.post(f"/sandbox/accounts/{account}/transactions", json=added).raise_for_status()
            done["added"] += len(added)
    return done


def importing(stack: Stack, user: str) -> str:
    """The importer replica that logged the latest import of `user`'s lines (its partitions hold them)."""
    latest: dict[str, str] = {}
    for name in ("importer", "importer-2"):
        for line in log_events(stack, name, "lines_imported"):
            if user in line and (found := re.search(r'"timestamp": "([^"]+)"', line)):
                latest[name] = max(latest.get(name, ""), found.group(1))
    assert latest, f"no import of {user} logged yet"
    return max(latest, key=lambda name: latest[name])


@pytest.mark.timeout(480)
def test_replicas_paused_past_the_session_timeout_wake_and_overwrite_nothing(stack: Stack) -> None:
    with TopicTail(stack.engines.kafka_bootstrap, [OPERATIONS]) as tail:
        with faults_cleared(stack):
            set_faults(stack, latency_ms=200)
            user, truth, total = large_sync(stack, "pause", (1,))
            wait_reached(tail, OPERATIONS, user, "operation.imported", total // 3)
            # the replica importing this user's lines now, most likely in the middle of a batch
            sleeper = importing(stack, user)
            successor = "importer-2" if sleeper == "importer" else "importer"
            paused = [sleeper, "categorizer"]
            moved_before = len(log_events(stack, successor, "partitions_assigned"))
            for name in paused:
                stack.processes[name].pause()
            try:
                changes = bank_changes(stack, truth)
                assert changes["booked"] + changes["rebooked"] > 0, f"no pending line to book: {changes}"
                # the group notices the silence, then the other replica holds every partition
                wait_for(
                    lambda: len(log_events(stack, successor, "partitions_assigned")) > moved_before,
                    SESSION_TIMEOUT_S * 4,
                    f"the partitions of {sleeper} moved to {successor}",
                )
                stack.sync(user)  # a new sync, through the awake replicas, brings the bank's changes
                time.sleep(SESSION_TIMEOUT_S / 2)
            finally:
                for name in paused:
                    stack.processes[name].resume()
        sync_completes(stack, user, timeout=240)
        truth = bank_lines(stack, list(truth))
        result = settle(stack, user, truth)
    assert result.operations == sum(len(ids) for ids in truth.values())
    assert result.categorised == result.expected_categorised
    # whether the sleeper woke in the middle of a batch (it then decides again on the newer state) depends
    # on where SIGSTOP found it: said, not asserted (tests/unit/importer/test_handlers.py makes it certain)
    fenced = log_events(stack, sleeper, "import_conflict_retrying")
    print(f"bank changes while paused: {changes}; {sleeper} decided again {len(fenced)} times on waking")


@pytest.mark.timeout(480)
def test_replicas_added_and_removed_during_a_large_sync_change_nothing(stack: Stack) -> None:
    with TopicTail(stack.engines.kafka_bootstrap, [TRANSACTIONS_RAW, OPERATIONS, CATEGORIZATIONS]) as tail:
        with faults_cleared(stack):
            set_faults(stack, latency_ms=300)
            user, truth, total = large_sync(stack, "scale", (2,))
            wait_reached(tail, OPERATIONS, user, "operation.imported", total // 5)
            third_importer = stack.add_replica("importer", wait_ready=False)
            third_categorizer = stack.add_replica("categorizer", wait_ready=False)
            wait_reached(tail, OPERATIONS, user, "operation.imported", total // 2)
            stack.stop("importer-2")  # SIGTERM: it leaves the group, its partitions move
            stack.stop("categorizer")
            wait_reached(tail, OPERATIONS, user, "operation.imported", total * 3 // 4)
            restarted(stack, ["importer-2", "categorizer"])
            third_importer.stop()
            third_categorizer.stop()
        sync_completes(stack, user, timeout=240)
        result = settle(stack, user, truth)
        assert result.operations == total
        assert result.categorised == result.expected_categorised
        announced_once(tail, user, total)
