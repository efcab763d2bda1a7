"""Replays requested through the API and run by the raw consumer that owns the account's partition.

The status store runs twice, as in test_handlers.py: in memory (`MemoryReplayStatuses`) and on the
engines (`MongoReplayStatuses` in a fresh database). The partition is a list in memory (`Partition`):
what reading it from Kafka does is the integration tests' business (test_replay_replicas.py).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from pymongo.errors import AutoReconnect

from services.importer.adapters.locks import KeyLocks
from services.importer.adapters.replays import KafkaReplayRequests, MongoReplayStatuses, request_event
from services.importer.consumers import RawConsumerHandler
from services.importer.domain.identities import auto_account_id
from services.importer.domain.intake import RawLine, RawRecord, raw_record
from services.importer.handlers.accounts import AccountService
from services.importer.handlers.intake import Importer
from services.importer.ports import ReplayClaim, ReplayStatus, ReplayStatuses
from services.importer.replay import Progress, ReplayNotRequested, ReplayResult, ReplayRunner, Replays
from shared.consumer import Incoming, PoisonRecord
from shared.contract.envelope import account_key, event_type
from shared.contract.payloads import ReplayRequested, TransactionObserved
from shared.contract.topics import TRANSACTIONS_RAW
from shared.kafka import EventPublisher
from shared.mongo import make_client
from tests.importer_support import Txn, raw_event
from tests.unit.importer.fakes import (
    MemoryAccounts,
    MemoryAnnouncements,
    MemoryCategorizations,
    MemoryOperations,
    MemoryReplayRequests,
    MemoryReplayStatuses,
    MemoryStates,
)

DAY = dt.date(2026, 10, 5)
T0 = dt.datetime(2026, 10, 5, 8, tzinfo=dt.UTC)
PARTITION = 3


@pytest.fixture(params=["memory", pytest.param("engines", marks=pytest.mark.engines)])
async def statuses(request: pytest.FixtureRequest) -> AsyncIterator[ReplayStatuses]:
    if request.param == "memory":
        yield MemoryReplayStatuses()
        return
    engines = request.getfixturevalue("engines")
    client = make_client(engines.mongodb_url)
    db = client[f"replays_{uuid.uuid4().hex[:8]}"]
    store = MongoReplayStatuses(db)
    await store.create_indexes()
    try:
        yield store
    finally:
        await client.drop_database(db.name)
        await client.close()


def new_importer() -> Importer:
    filing = MemoryCategorizations()
    return Importer(
        MemoryStates(),
        MemoryOperations(filing),
        MemoryAccounts(),
        MemoryAnnouncements(),
        locks=KeyLocks(),
        op_locks=KeyLocks(),
        today=lambda: DAY,
    )


def line(user: str, account: str, txid: int) -> RawRecord:
    txn = Txn(txid, account, DAY, Decimal(f"-{txid % 100 + 1}.50"), f"CB BOULANGERIE {txid}", "BOULANGERIE")
    event = raw_event(user, "bnp", txn)
    return raw_record(event, TransactionObserved.model_validate(event.data), account_key(user, account))


def replay_request(user: str, account: str, since: dt.date | None = None) -> ReplayRequested:
    return ReplayRequested(
        replay_id=str(uuid.uuid4()),
        user_id=user,
        aggregator_account_id=account,
        since=since,
        requested_at=T0,
    )


def requested(request: ReplayRequested) -> ReplayStatus:
    return ReplayStatus(
        request.replay_id,
        request.user_id,
        request.aggregator_account_id,
        request.since,
        requested_at=request.requested_at,
    )


class Partition:
    """One partition of the raw topic in memory, replayed as `replay_into` does (the account's records
    before the end offset, into the importer), with a progress call after each offset read."""

    def __init__(self, importer: Importer) -> None:
        self.importer = importer
        self.records: list[RawRecord | ReplayRequested] = []
        self.calls: list[tuple[str, int]] = []
        self.fail: Exception | None = None
        # awaited once the replay has read this many offsets
        self.midway: tuple[int, Callable[[], Awaitable[object]]] | None = None
        # what the account's dedup state held when a replay began
        self.known_at_start: list[set[str]] = []

    def append(self, record: RawRecord | ReplayRequested) -> int:
        self.records.append(record)
        return len(self.records) - 1

    async def __call__(
        self,
        request: ReplayRequested,
        partition: int,
        end_offset: int,
        result: ReplayResult,
        on_progress: Progress,
    ) -> ReplayResult:
        assert partition == PARTITION
        key = account_key(request.user_id, request.aggregator_account_id)
        self.calls.append((request.replay_id, end_offset))
        self.known_at_start.append(set((await self.importer.states.load(key)).lines))
        result.partition, result.start_offset, result.end_offset = partition, 0, end_offset
        for offset, record in enumerate(self.records[:end_offset]):
            result.position = offset + 1
            result.records_read += 1
            if isinstance(record, RawLine) and record.key == key:
                result.records_matched += 1
                outcome = await self.importer.import_records([record])
                result.stats.add(outcome.stats)
            if self.midway is not None and self.midway[0] == offset + 1:
                await self.midway[1]()
            await on_progress(result)
        if self.fail is not None:
            raise self.fail
        return result


def runner_on(statuses: ReplayStatuses, partition: Partition, name: str = "host-a:1") -> ReplayRunner:
    return ReplayRunner(statuses, partition, runner=name, progress_every_s=0, clock=lambda: T0)


async def operations(importer: Importer, user: str, account: str) -> int:
    state = await importer.states.load(account_key(user, account))
    return len(state.lines)


# ---- the API's side ------------------------------------------------------------------------------------


async def test_a_request_is_recorded_then_published_and_read_back_from_the_store(statuses):
    requests = MemoryReplayRequests()
    replays = Replays(statuses, requests, clock=lambda: T0)
    status = await replays.request("u1", "7", DAY, "corr-1")
    assert (status.state, status.user_id, status.aggregator_account_id, status.since) == (
        "requested",
        "u1",
        "7",
        DAY,
    )
    assert await replays.view(status.replay_id) == status
    [(published, correlation)] = requests.published
    assert (published.replay_id, published.user_id, published.aggregator_account_id) == (
        status.replay_id,
        "u1",
        "7",
    )
    assert (published.since, published.requested_at, correlation) == (DAY, T0, "corr-1")
    assert await replays.view("nope") is None


async def test_a_request_that_cannot_be_published_fails_and_says_why(statuses):
    requests = MemoryReplayRequests()
    requests.fail = ConnectionError("kafka away")
    replays = Replays(statuses, requests, clock=lambda: T0)
    with pytest.raises(ReplayNotRequested, match="kafka away"):
        await replays.request("u1", "7", None, "corr-1")
    [stored] = [s for s in [await statuses.get(i) for i in await all_ids(statuses)] if s]
    assert stored.state == "failed"
    assert stored.error is not None
    assert "ConnectionError: kafka away" in stored.error


async def all_ids(statuses: ReplayStatuses) -> list[str]:
    if isinstance(statuses, MemoryReplayStatuses):
        return list(statuses.statuses)
    assert isinstance(statuses, MongoReplayStatuses)
    return [doc["_id"] for doc in await statuses.coll.find({}, {"_id": 1}).to_list()]


def test_the_request_record_is_keyed_by_the_account_in_clear_with_a_deterministic_id():
    request = replay_request("u1", "7", DAY)
    event = request_event(request, "corr-1")
    assert (event.type, event.userid, event.correlationid) == (event_type("replay.requested"), "u1", "corr-1")
    assert event.id == request_event(request, "other").id  # the same request, restated: the same id
    assert ReplayRequested.model_validate(json.loads(event.to_json_bytes())["data"]) == request

    class Sealer:  # any sealer at all is refused: the record must stay readable after an erasure
        pass

    with pytest.raises(ValueError, match="not sealed"):
        KafkaReplayRequests(EventPublisher(None, "importer", Sealer()))  # type: ignore[arg-type]


# ---- the partition owner's side ------------------------------------------------------------------------


async def test_the_owner_runs_a_request_once_and_a_redelivery_changes_nothing(statuses):
    importer = new_importer()
    partition = Partition(importer)
    for txid in (1, 2, 3):
        partition.append(line("u1", "7", txid))
    partition.append(line("u1", "8", 4))  # another account of the partition
    request = replay_request("u1", "7")
    await statuses.requested(requested(request))  # as the API records it
    offset = partition.append(request)
    runner = runner_on(statuses, partition)

    ended = await runner.run(request, PARTITION, offset)
    assert ended is not None
    stored = await statuses.get(request.replay_id)
    assert stored == ended
    assert (stored.state, stored.runner, stored.attempts, stored.started_at, stored.finished_at) == (
        "succeeded",
        "host-a:1",
        1,
        T0,
        T0,
    )
    assert (stored.partition, stored.offset, stored.processed, stored.total) == (PARTITION, offset, 4, 4)
    assert stored.result is not None
    assert (stored.result["records_matched"], stored.result["stats"]["imported"]) == (3, 3)
    assert await operations(importer, "u1", "7") == 3
    assert await operations(importer, "u1", "8") == 0  # not this replay's account

    assert await runner.run(request, PARTITION, offset) is None  # read again: it succeeded
    assert partition.calls == [(request.replay_id, offset)]
    assert await statuses.get(request.replay_id) == stored


async def test_a_request_whose_run_died_runs_again_and_one_without_status_is_created(statuses):
    importer = new_importer()
    partition = Partition(importer)
    partition.append(line("u1", "7", 1))
    died = replay_request("u1", "7")
    offset = partition.append(died)
    dead_run = ReplayClaim("dead-run", "host-b:9", PARTITION, offset, T0 - dt.timedelta(minutes=5))
    assert (await statuses.claim(died, dead_run)) is not None  # B claimed it, then was killed
    ended = await runner_on(statuses, partition).run(died, PARTITION, offset)
    assert ended is not None
    assert (ended.state, ended.runner, ended.attempts, ended.started_at) == ("succeeded", "host-a:1", 2, T0)

    unknown = replay_request("u1", "7", since=DAY)  # published by another tool: no status yet
    assert await statuses.get(unknown.replay_id) is None
    offset = partition.append(unknown)
    ended = await runner_on(statuses, partition).run(unknown, PARTITION, offset)
    stored = await statuses.get(unknown.replay_id)
    assert ended is not None
    assert stored == ended
    assert (stored.state, stored.since, stored.requested_at, stored.attempts) == ("succeeded", DAY, T0, 1)


async def test_a_failed_run_says_why_and_runs_again_when_read_again(statuses):
    importer = new_importer()
    partition = Partition(importer)
    partition.append(line("u1", "7", 1))
    request = replay_request("u1", "7")
    offset = partition.append(request)
    partition.fail = ValueError("boom")
    runner = runner_on(statuses, partition)
    failed = await runner.run(request, PARTITION, offset)
    assert failed is not None
    assert (failed.state, failed.error, failed.processed, failed.total) == (
        "failed",
        "ValueError: boom",
        1,
        1,
    )
    assert await statuses.get(request.replay_id) == failed

    partition.fail = None
    again = await runner.run(request, PARTITION, offset)
    assert again is not None
    assert (again.state, again.error, again.attempts) == ("succeeded", None, 2)


async def test_an_engine_error_goes_up_and_leaves_the_request_to_run_again(statuses):
    partition = Partition(new_importer())
    request = replay_request("u1", "7")
    offset = partition.append(request)
    partition.fail = AutoReconnect("mongodb away")
    with pytest.raises(AutoReconnect):
        await runner_on(statuses, partition).run(request, PARTITION, offset)
    stored = await statuses.get(request.replay_id)
    assert stored is not None
    assert stored.state == "running"


async def test_a_run_taken_over_stops_and_leaves_the_status_to_its_successor(statuses):
    importer = new_importer()
    partition = Partition(importer)
    for txid in range(1, 6):
        partition.append(line("u1", "7", txid))
    request = replay_request("u1", "7")
    offset = partition.append(request)
    successor = ReplayClaim("run-b", "host-b:2", PARTITION, offset, T0)
    # the partition moved to B while A read its second offset, and B met the request
    partition.midway = (2, lambda: statuses.claim(request, successor))

    assert await runner_on(statuses, partition).run(request, PARTITION, offset) is None
    assert await operations(importer, "u1", "7") == 2  # A stopped at its next progress write
    stored = await statuses.get(request.replay_id)
    assert stored is not None
    assert (stored.state, stored.runner, stored.attempts) == ("running", "host-b:2", 2)
    # A's end would have matched nothing either: the status is B's to write
    assert not await statuses.finish(request.replay_id, "a-run", stored)
    assert await statuses.progress(request.replay_id, "run-b", 3, 6)


async def test_a_request_read_a_day_late_is_not_run(statuses):
    """A group reset or a new deployment reads the topic from its start: old requests do not run again."""
    partition = Partition(new_importer())
    partition.append(line("u1", "7", 1))
    asked = [replay_request("u1", "7").model_copy(update={"requested_at": T0 - dt.timedelta(days=2)})]
    asked.append(asked[0].model_copy(update={"replay_id": "with-status"}))
    offsets = [partition.append(request) for request in asked]
    await statuses.requested(requested(asked[1]))
    runner = runner_on(statuses, partition)

    assert await runner.run(asked[0], PARTITION, offsets[0]) is None
    assert await statuses.get(asked[0].replay_id) is None  # none made: it may be an erased user's
    expired = await runner.run(asked[1], PARTITION, offsets[1])
    assert expired is not None
    assert expired.state == "failed"
    assert expired.error is not None
    assert expired.error.startswith("expired: read 2 days, 0:00:00 after it was requested")
    assert await statuses.get("with-status") == expired
    assert partition.calls == []


async def test_erasing_a_user_removes_their_replay_statuses(statuses):
    replays = Replays(statuses, MemoryReplayRequests(), clock=lambda: T0)
    mine = [await replays.request("gone", "7", None, "c") for _ in range(2)]
    kept = await replays.request("kept", "7", None, "c")
    assert await statuses.erase_user("gone") == 2
    assert [await statuses.get(s.replay_id) for s in mine] == [None, None]
    assert await statuses.get(kept.replay_id) == kept


# ---- the raw consumer: a request runs where it lies --------------------------------------------------------


def incoming(record: RawRecord | ReplayRequested, offset: int, *, key: str | None = None) -> Incoming:
    if isinstance(record, ReplayRequested):
        event = request_event(record, "corr")
        data: Any = record
        key = key or account_key(record.user_id, record.aggregator_account_id)
    else:
        event, data, key = record.event, record.data, key or record.key
    consumed: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        TRANSACTIONS_RAW, PARTITION, offset, 0, 0, key.encode(), event.to_json_bytes(), None, 0, 0, ()
    )
    return Incoming(event, data, key, TRANSACTIONS_RAW, PARTITION, offset, consumed)


async def test_the_consumer_runs_a_request_after_the_records_before_it_and_before_those_after(statuses):
    importer = new_importer()
    partition = Partition(importer)
    handler = RawConsumerHandler(importer, runner_on(statuses, partition))
    dead: list[tuple[int, str]] = []

    async def dead_letter(record: ConsumerRecord[bytes, bytes], error: str, code: str) -> None:
        dead.append((record.offset, error))

    handler.dead_letter = dead_letter
    first = [line("u1", "7", 1), line("u1", "7", 2), line("u1", "8", 3)]
    await handler([incoming(r, partition.append(r)) for r in first])
    assert (await operations(importer, "u1", "7"), await operations(importer, "u1", "8")) == (2, 1)
    # the user deletes the app account of 7: its operations go, and its lines are forgotten
    await AccountService(importer).delete_account("u1", auto_account_id(account_key("u1", "7")), "c")
    assert await operations(importer, "u1", "7") == 0

    request, wrong = replay_request("u1", "7"), replay_request("u1", "7")
    batch = [line("u1", "7", 4), request, line("u1", "7", 5), wrong]
    offsets = [partition.append(r) for r in batch]
    await handler(
        [incoming(r, o, key="u1:8" if r is wrong else None) for r, o in zip(batch, offsets, strict=True)]
    )
    # the replay read the partition up to its request, after the line before it was imported
    assert partition.calls == [(request.replay_id, offsets[1])]
    assert partition.known_at_start == [{"4"}]
    stored = await statuses.get(request.replay_id)
    assert stored is not None
    assert stored.state == "succeeded"
    assert stored.result is not None
    assert stored.result["stats"]["imported"] == 2
    assert await operations(importer, "u1", "7") == 4  # 1 and 2 back, 4, then 5 after the request
    assert await operations(importer, "u1", "8") == 1
    # a request on another account's key would replay the wrong partition: a dead letter, not a run
    assert [offset for offset, _ in dead] == [offsets[3]]
    assert "is not <user>:<aggregator account>" in dead[0][1]
    assert await statuses.get(wrong.replay_id) is None

    with pytest.raises(PoisonRecord):  # alone (the consumer's retry one by one): a poison record
        await handler([incoming(wrong, offsets[3], key="u1:8")])
