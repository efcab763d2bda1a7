"""`banksync topics|lag|dlq` on the real Kafka: run as a process, as an operator would."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.consumer import TopicConsumer
from shared.contract.envelope import CLOUDEVENTS_CONTENT_TYPE, CloudEvent
from shared.contract.payloads import TransactionObserved
from shared.contract.topics import TOPICS, TRANSACTIONS_RAW
from shared.kafka import make_broker
from tests.cli import run_banksync
from tests.faults import consumer_groups
from tests.kafka_helpers import opened, read_raw

pytestmark = pytest.mark.engines

DAY_MS = 86_400_000


async def banksync(bootstrap: str, *args: str) -> tuple[int, str, str]:
    """Runs `banksync ARGS --bootstrap B` in its own process; (exit code, stdout, stderr)."""
    return await run_banksync(*args, "--bootstrap", bootstrap)


# --- topics --------------------------------------------------------------------------------------
async def test_topics_lists_the_contract_topics_with_their_partitions_and_retention(engines):
    code, out, err = await banksync(engines.kafka_bootstrap, "topics", "--json")
    assert code == 0, err
    infos = {info["name"]: info for info in json.loads(out)}
    assert set(infos) == {spec.name for spec in TOPICS}
    assert all(info["partitions"] == 6 for info in infos.values())
    assert infos[TRANSACTIONS_RAW]["retention_ms"] >= 400 * DAY_MS
    assert infos[TRANSACTIONS_RAW]["cleanup_policy"] == "delete"
    assert all(info["size_bytes"] is not None for info in infos.values())

    code, table, _ = await banksync(engines.kafka_bootstrap, "topics")
    assert code == 0
    raw_line = next(line for line in table.splitlines() if line.startswith(TRANSACTIONS_RAW))
    assert raw_line.split()[1:5] == ["6", "1", "delete", "400d"]


# --- lag -----------------------------------------------------------------------------------------
@pytest.fixture
async def lag_groups(engines) -> AsyncIterator[tuple[str, str, str]]:
    """A private topic with records, an idle group with known commits, and a live group with a member."""
    bootstrap = engines.kafka_bootstrap
    suffix = uuid.uuid4().hex[:8]
    topic, idle, live = f"ops-test-lag-{suffix}", f"ops-lag-idle-{suffix}", f"ops-lag-live-{suffix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    for partition, count in ((0, 5), (1, 3), (2, 8)):
        for i in range(count):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=partition)
    await producer.stop()

    committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=idle, enable_auto_commit=False)
    await committer.start()
    committer.assign([TopicPartition(topic, 0), TopicPartition(topic, 2)])
    await committer.commit({TopicPartition(topic, 0): 2, TopicPartition(topic, 2): 8})
    await committer.stop()

    member = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=live,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await member.start()
    read = 0
    for _ in range(20):
        batches = await member.getmany(timeout_ms=500, max_records=5)
        read += sum(len(r) for r in batches.values())
        if read >= 5:
            break
    await member.commit()
    try:
        yield topic, idle, live
    finally:
        await member.stop()


def parse_consumer_group_command(text: str) -> dict[tuple[str, str, int], tuple]:
    """The table of `kafka-consumer-groups --describe --all-groups`, keyed by group, topic, partition."""
    rows: dict[tuple[str, str, int], tuple] = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) != 9 or cells[0] == "GROUP":
            continue
        group, topic, partition, *rest = cells
        rows[(group, topic, int(partition))] = tuple(None if c == "-" else c for c in rest)
    return rows


def ours(rows_json: str) -> dict[tuple[str, str, int], tuple]:
    return {
        (r["group"], r["topic"], r["partition"]): tuple(
            None if r[k] is None else str(r[k])
            for k in ("current_offset", "log_end_offset", "lag", "consumer_id", "host", "client_id")
        )
        for r in json.loads(rows_json)
    }


async def test_lag_matches_kafkas_consumer_group_command(engines, lag_groups):
    topic, idle, live = lag_groups
    mismatch = None
    for attempt in range(3):
        if attempt:
            await asyncio.sleep(2)  # a group was moving or rebalancing: let it settle
        code, before, err = await banksync(engines.kafka_bootstrap, "lag", "--json")
        assert code == 0, err
        tool = parse_consumer_group_command(
            await asyncio.to_thread(consumer_groups, engines, "--describe", "--all-groups")
        )
        _, after, _ = await banksync(engines.kafka_bootstrap, "lag", "--json")
        if ours(before) != ours(after):
            continue  # something moved while the tool ran: measure again
        mismatch = {k: (v, tool.get(k)) for k, v in ours(before).items() if tool.get(k) != v}
        missing = set(tool) - set(ours(before))
        if not mismatch and not missing:
            break
        mismatch = {**mismatch, **{k: (None, tool[k]) for k in missing}}
    assert mismatch == {}, mismatch
    assert tool[(idle, topic, 0)] == ("2", "5", "3", None, None, None)  # the tool did see our groups

    rows = ours(before)
    # the idle group: what was committed, against the end offsets, no member
    assert rows[(idle, topic, 0)] == ("2", "5", "3", None, None, None)
    assert rows[(idle, topic, 2)] == ("8", "8", "0", None, None, None)
    assert (idle, topic, 1) not in rows
    # the live group: every partition assigned to its one member
    live_rows = [v for k, v in rows.items() if k[0] == live]
    assert len(live_rows) == 3
    assert len({v[3] for v in live_rows}) == 1
    assert live_rows[0][3] is not None

    code, summary, _ = await banksync(engines.kafka_bootstrap, "lag", "--summary", "--group", idle)
    assert code == 0
    assert summary.splitlines()[1].split() == [idle, "Empty", topic, "3", "0"]
    code, _, err = await banksync(
        engines.kafka_bootstrap, "lag", "--group", f"no-such-group-{uuid.uuid4().hex}"
    )
    assert code == 1
    assert "no consumer group" in err


# --- dead letters --------------------------------------------------------------------------------
async def dead_letter_one(bootstrap: str, key: str, data: dict) -> None:
    """Produces a record to the raw topic, then has shared.consumer reject it into the DLQ as a
    service would: the real parse/validate path, the real dead_letter."""
    event = CloudEvent.new(
        service="connector",
        name="transaction.observed",
        data=data,
        user_id=key.split(":")[0],
        correlation_id=f"corr-{key}",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    sent = await producer.send_and_wait(
        TRANSACTIONS_RAW,
        event.to_json_bytes(),
        key=key.encode(),
        headers=[("content-type", CLOUDEVENTS_CONTENT_TYPE.encode()), ("ce_id", event.id.encode())],
    )
    await producer.stop()
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    tp = TopicPartition(sent.topic, sent.partition)
    reader.assign([tp])
    reader.seek(tp, sent.offset)
    batch = await reader.getmany(tp, timeout_ms=5000)
    await reader.stop()
    record = batch[tp][0]
    assert record.offset == sent.offset

    async def never_called(batch):
        raise AssertionError("an invalid record must not reach the handler")

    broker = make_broker(bootstrap, "ops-test-dlq")
    await broker.connect()
    try:
        consumer = TopicConsumer(
            broker, "importer", TRANSACTIONS_RAW, {"transaction.observed": TransactionObserved}, never_called
        )
        await consumer.process([record])
    finally:
        await broker.stop()


def valid_data(user: str) -> dict:
    return {
        "user_id": user,
        "connection_id": "c1",
        "aggregator_account_id": "acct-1",
        "bank": {"id": "demo", "name": "Banque Démo"},
        "sync_run_id": "run-1",
        "initial": False,
        "transaction": {"id": 991, "id_account": "acct-1", "date": "2026-01-15", "value": "-12.30"},
    }


async def raw_records_of(bootstrap: str, key: str):
    return [r for r in await read_raw(bootstrap, TRANSACTIONS_RAW) if r[0] == key]


async def test_dlq_list_show_and_redrive_once(engines, tmp_path):
    bootstrap = engines.kafka_bootstrap
    user = f"ops-dlq-{uuid.uuid4().hex[:8]}"
    key = f"{user}:acct-1"
    broken = {**valid_data(user), "transaction": {"id": 991, "id_account": "acct-1", "value": "-12.30"}}
    await dead_letter_one(bootstrap, key, broken)  # no date: TransactionObserved refuses it

    code, out, err = await banksync(bootstrap, "dlq", "list", "--json", "--topic", TRANSACTIONS_RAW)
    assert code == 0, err
    [letter] = [d for d in json.loads(out) if d["key"] == key]
    assert letter["original_topic"] == TRANSACTIONS_RAW
    assert letter["service"] == "importer"
    assert "invalid record" in letter["error"]
    assert "date" in letter["error"]
    assert letter["redriven"] is None
    ref = letter["id"]
    original = await raw_records_of(bootstrap, key)
    assert len(original) == 1
    assert (letter["original_partition"], letter["original_offset"]) == (original[0][3], original[0][4])

    code, shown, _ = await banksync(bootstrap, "dlq", "show", ref)
    assert code == 0
    assert f"original:         {TRANSACTIONS_RAW} partition {original[0][3]} offset {original[0][4]}" in shown
    assert '"id_account": "acct-1"' in shown

    code, out, err = await banksync(bootstrap, "dlq", "redrive", ref)
    assert code == 0, err
    assert out.startswith(f"redriven {ref} -> {TRANSACTIONS_RAW} partition {original[0][3]}")
    after = await raw_records_of(bootstrap, key)
    assert len(after) == 2
    _, value, headers, partition, _offset = after[1]
    assert value == original[0][1]
    assert partition == original[0][3]  # same key, same partition: per-account order holds
    assert not any(h.startswith("dlq.") for h in headers)
    assert headers["ce_id"] == original[0][2]["ce_id"]

    # once only: the second redrive is refused and sends nothing
    code, _, err = await banksync(bootstrap, "dlq", "redrive", ref)
    assert code == 1
    assert "already redriven" in err
    assert len(await raw_records_of(bootstrap, key)) == 2

    # an offset with nothing there is refused too
    code, _, err = await banksync(bootstrap, "dlq", "redrive", f"{ref.split(':')[0]}:987654321")
    assert code == 1
    assert "no dead letter" in err

    code, listing, _ = await banksync(bootstrap, "dlq", "list", "--waiting")
    assert ref not in [line.split()[0] for line in listing.splitlines()[1:] if line.strip()]
    code, listing, _ = await banksync(bootstrap, "dlq", "list")
    assert any(line.startswith(f"{ref} ") and "redriven ->" in line for line in listing.splitlines())


async def test_dlq_redrive_of_a_fixed_record_sends_the_fixed_value(engines, tmp_path):
    bootstrap = engines.kafka_bootstrap
    user = f"ops-fix-{uuid.uuid4().hex[:8]}"
    key = f"{user}:acct-1"
    await dead_letter_one(bootstrap, key, {**valid_data(user), "transaction": {"id": 5, "value": "x"}})
    code, out, _ = await banksync(bootstrap, "dlq", "list", "--json")
    [letter] = [d for d in json.loads(out) if d["key"] == key]

    event = json.loads(letter["value"])
    event["data"] = valid_data(user)
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(event))
    code, out, err = await banksync(bootstrap, "dlq", "redrive", letter["id"], "--value-file", str(fixed))
    assert code == 0, err
    assert "(fixed value)" in out
    records = await raw_records_of(bootstrap, key)
    assert len(records) == 2
    redriven = opened(records[1][1])
    assert TransactionObserved.model_validate(redriven.data).transaction.date.isoformat() == "2026-01-15"
    assert redriven.id == event["id"]  # the same event, fixed: a consumer recognises a re-send

    code, shown, _ = await banksync(bootstrap, "dlq", "show", letter["id"])
    assert "(with a fixed value)" in shown
    # a DLQ mark is not a dead letter
    code, _, err = await banksync(bootstrap, "dlq", "redrive", letter["id"])
    assert code == 1
    assert "already redriven" in err
