"""The engines themselves fail under the whole pipeline: nothing lost, nothing doubled (issue #8).

These tests stop Kafka and FerretDB and reset consumer groups to the earliest offset, so they run on a
private pair of engines (not the session's, which other tests share): Kafka keeps its data directory
across a stop and a start (`deploy/local/kafka.sh` formats it once), FerretDB its SQLite files.

- a consumer group reset to the earliest offset with Kafka's own `kafka-consumer-groups` tool, every
  group of the pipeline, then a restart: everything is read again and nothing is doubled (the importer
  alone, with aiokafka commits: test_importer_resilience). It runs first: "earliest" is then this
  test's own records, not the other tests'.
- the Kafka broker stopped in the middle of a sync, then started again.
- FerretDB stopped for 10 s in the middle of an import, then started again (the importer alone behind
  a cut TCP proxy: test_importer_resilience): the consumers wait, nothing goes to the DLQ.

Counting is exact as in test_faults_pipeline (tests/faults.py).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness.devstack import Engines, Stack, ensure_dir, new_user, pipeline_stack
from harness.waiting import wait_for
from shared.contract.topics import CATEGORIZATIONS, DLQ, OPERATIONS, TRANSACTIONS_RAW
from tests.faults import (
    TopicTail,
    bank_lines,
    consumer_groups,
    faults_cleared,
    lags,
    pipeline_groups,
    run_async,
    set_faults,
    settle,
    sync_completes,
)
from tests.kafka_helpers import drop_vault, read_all, read_raw, use_vault

pytestmark = pytest.mark.engines

DATABASE = "engfaults"


@pytest.fixture(scope="module")
def private_engines() -> Iterator[Engines]:
    started = Engines.start()
    if not started.owned:
        started.stop()
        pytest.skip("external engines (KAFKA_BOOTSTRAP_SERVERS, MONGODB_URL) cannot be stopped by the tests")
    use_vault(started.mongodb_url)  # the records these engines' services seal open with their keys
    try:
        yield started
    finally:
        drop_vault(started.mongodb_url)
        started.stop()


@pytest.fixture(scope="module")
def stack(private_engines, log_dir) -> Iterator[Stack]:
    with pipeline_stack(private_engines, ensure_dir(log_dir / "faults-engines"), DATABASE) as running:
        yield running


def linked(stack: Stack, prefix: str, bank: int) -> tuple[str, dict[str, Any], list[str]]:
    user = new_user(prefix)
    stack.entitle(user)
    connection = stack.link_bank(user, bank_index=bank)
    return user, connection, [a["aggregator_account_id"] for a in connection["accounts"]]


def select(stack: Stack, user: str, connection: dict[str, Any], accounts: list[str]) -> None:
    with stack.client("connector", user) as api:
        api.put(
            f"/v1/users/{user}/connections/{connection['connection_id']}/accounts",
            json={"selected": accounts},
        ).raise_for_status()


def dead_letters(stack: Stack) -> list[dict[str, str]]:
    return [headers for _, _, headers, _, _ in run_async(read_raw(stack.engines.kafka_bootstrap, DLQ))]


def every_line_once_and_categorised(stack: Stack, user: str, truth: dict[str, set[str]]) -> None:
    """After the fault: the sync ends well, and the app holds each bank line once, categorised as the
    categorizer says, with nothing dead-lettered."""
    sync_completes(stack, user)
    result = settle(stack, user, truth)
    assert result.operations == sum(len(ids) for ids in truth.values())
    assert result.categorised == result.expected_categorised
    assert dead_letters(stack) == []


@pytest.mark.timeout(420)
def test_group_reset_to_earliest_with_kafkas_tool_doubles_nothing(stack, private_engines):
    user, connection, _ = linked(stack, "reset", 0)
    small = [a["aggregator_account_id"] for a in connection["accounts"] if a["type"] in ("savings", "card")]
    select(stack, user, connection, small)
    sync_completes(stack, user)
    truth = bank_lines(stack, small)
    first = settle(stack, user, truth)

    bootstrap = private_engines.kafka_bootstrap
    said_before = {
        event.id for _, event, _ in run_async(read_all(bootstrap, CATEGORIZATIONS)) if event.userid == user
    }
    assert len(said_before) >= first.operations
    with TopicTail(bootstrap, [TRANSACTIONS_RAW, OPERATIONS, CATEGORIZATIONS]) as tail:
        # the runbook: stop the group's consumers (the tool refuses while a group has members), reset, restart
        consumers = ("connector", "importer", "categorizer")
        for name in consumers:
            stack.stop(name)
        groups = pipeline_groups(DATABASE)
        for group, topic in groups:
            planned = consumer_groups(
                private_engines,
                "--group",
                group,
                "--topic",
                topic,
                "--reset-offsets",
                "--to-earliest",
                "--dry-run",
            )
            assert group in planned
            consumer_groups(
                private_engines,
                "--group",
                group,
                "--topic",
                topic,
                "--reset-offsets",
                "--to-earliest",
                "--execute",
            )
        described = consumer_groups(private_engines, "--describe", "--group", f"{DATABASE}-imp")
        offsets = [line.split() for line in described.splitlines() if TRANSACTIONS_RAW in line]
        assert offsets
        assert all(cells[3] in ("0", "-") for cells in offsets), described
        # every record of every topic is to be read again (this module's records only: it runs first)
        behind = run_async(lags(bootstrap, groups))
        assert behind[f"{DATABASE}-imp"] >= first.operations
        assert behind[f"{DATABASE}-cat"] >= first.operations
        assert behind[f"{DATABASE}-imp-cat"] >= first.operations
        for name in consumers:
            stack.processes[name].start()
        again = settle(stack, user, truth)  # waits until every group has read everything again
        # nothing new was announced: no new bank line, no new operation; categorisations restated
        # (the categorizer read every operation.imported again) keep their event ids
        assert tail.count(TRANSACTIONS_RAW, user, "transaction.observed") == 0
        assert tail.count(OPERATIONS, user) == 0
        restated = {e.id for e in tail.events(CATEGORIZATIONS, user)}
    assert (again.operations, again.categorised) == (first.operations, first.categorised)
    assert restated <= said_before


@pytest.mark.timeout(420)
def test_kafka_stopped_and_started_again_mid_sync(stack, private_engines):
    user, connection, _ = linked(stack, "kafka", 1)
    accounts = [a["aggregator_account_id"] for a in connection["accounts"] if a["type"] == "checking"]
    truth = bank_lines(stack, accounts)
    total = sum(len(ids) for ids in truth.values())
    with TopicTail(private_engines.kafka_bootstrap, [TRANSACTIONS_RAW]) as tail, faults_cleared(stack):
        set_faults(stack, latency_ms=400)
        select(stack, user, connection, accounts)
        wait_for(
            lambda: tail.count(TRANSACTIONS_RAW, user, "transaction.observed") >= 200,
            120,
            "200 raw lines",
            every=0.05,
        )
        private_engines.stop_kafka()
        at_stop = tail.count(TRANSACTIONS_RAW, user, "transaction.observed")
        time.sleep(5)
        private_engines.start_kafka()
    assert at_stop < total, "the sync ended before Kafka stopped: nothing was tested"
    every_line_once_and_categorised(stack, user, truth)


@pytest.mark.timeout(420)
def test_ferretdb_stopped_10s_mid_import(stack, private_engines):
    user, connection, _ = linked(stack, "ferret", 2)
    accounts = [a["aggregator_account_id"] for a in connection["accounts"] if a["type"] == "checking"]
    truth = bank_lines(stack, accounts)
    total = sum(len(ids) for ids in truth.values())
    topics = [TRANSACTIONS_RAW, OPERATIONS]
    with TopicTail(private_engines.kafka_bootstrap, topics) as tail, faults_cleared(stack):

        def imported() -> int:
            return tail.count(OPERATIONS, user, "operation.imported")

        # the importer is held (SIGSTOP) while the connector publishes the whole sync, FerretDB stops,
        # then the importer goes on with every line still to store and no database for 10 s
        importer = stack.processes["importer"].process
        assert importer is not None
        importer.send_signal(signal.SIGSTOP)
        try:
            select(stack, user, connection, accounts)
            wait_for(
                lambda: tail.count(TRANSACTIONS_RAW, user, "transaction.observed") >= total,
                120,
                "every line published",
            )
            private_engines.stop_ferretdb()
        finally:
            importer.send_signal(signal.SIGCONT)
        time.sleep(10)
        at_stop = imported()
        private_engines.start_ferretdb()
    assert at_stop < total, "the import ended before FerretDB stopped: nothing was tested"
    every_line_once_and_categorised(stack, user, truth)
    logs = stack.processes["importer"].log_path.read_text()
    # whichever read met the outage first waited for it: the users' keys (sealed records are opened before
    # the batch is stored) or the importer's own collections
    assert "engine_unreachable_waiting" in logs or "vault_unreachable_waiting" in logs
