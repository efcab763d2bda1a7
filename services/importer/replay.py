"""Rebuilding one aggregator account from the raw topic, through the same import path.

The raw topic is the source of truth for what the bank said. Everything about one aggregator account
is keyed `<user>:<aggregator account>`, so it sits on one partition: the one the producer's default
partitioner chose (murmur2 of the key, as Kafka's and aiokafka's `DefaultPartitioner`). A replay reads
only that partition, from its start or from the first record at or after a date (`offsets_for_times`),
up to an end, keeps the records of that key, and imports them in batches like the consumer does (lines,
and the balances of `account.synced` in their order). The import is idempotent: what is already known
changes nothing, what was deleted (an app account deleted by its user) comes back, balance checks
included (a revived account fixes its opening balance again).

Two ways in:
- The API (`POST /v1/ops/replay`, `Replays`, any replica) records the request's status in MongoDB and
  publishes `replay.requested` keyed by the account, so it lands on the account's partition. The raw
  consumer that owns that partition meets it in order with the lines (`ReplayRunner`, called from
  `services.importer.consumers`) and replays the partition up to the request's own offset: everything
  after it is consumed as usual afterwards. So the account has one writer at a time, the partition's
  owner, and the status (`GET /v1/ops/replays/{id}`) is the same on every replica. A request read again
  (a crash, a rebalance: at-least-once) runs again unless it succeeded; each run claims the status with a
  token of its own, and a run whose token was replaced (its partition moved to another replica, which
  claimed it) stops at its next progress write.
- `replay_account(settings, ...)` is the same replay as a function for an ops command (`banksync replay
  --direct`): it opens its own Kafka and MongoDB clients and runs in the caller's process, up to the
  partition's end, beside whatever consumer runs: it is for when the importers are stopped.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from services.importer.adapters.kafka import KafkaAnnouncements
from services.importer.adapters.locks import KeyLocks
from services.importer.adapters.mongo import AccountStore, MongoOperations, OperationStore, StateStore
from services.importer.domain.intake import ImportStats, RawRecord, raw_record
from services.importer.handlers.intake import Importer
from services.importer.ports import ReplayClaim, ReplayRequests, ReplayStatus, ReplayStatuses
from shared.consumer import TRANSIENT_ERRORS
from shared.contract.catalog import IMPORTER_RAW_LINE_READS
from shared.contract.envelope import CloudEvent, account_key
from shared.contract.payloads import ReplayRequested
from shared.contract.topics import TRANSACTIONS_RAW
from shared.kafka import EventPublisher, make_broker, topic_partitions
from shared.logging import get_logger
from shared.mongo import make_client
from shared.settings import ServiceSettings
from shared.vault import VAULT_COLLECTION, EventSealer, KeyVault, NotOpened, Shredded

log = get_logger(__name__)
BATCH = 500
# offsets without a record (transaction markers) must not make a replay wait forever
MAX_IDLE_POLLS = 10
# how often a running replay writes its progress to its status (and learns whether it was taken over)
PROGRESS_EVERY_S = 2.0
# a request read this long after it was made is not run: a consumer group reset to the earliest offset, or
# a new deployment reading the topic from its start, must not run again every replay of 400 days
REQUEST_EXPIRES_AFTER = dt.timedelta(days=1)
REQUEST = "replay.requested"


@dataclass
class ReplayResult:
    user_id: str
    aggregator_account_id: str
    since: dt.date | None
    partition: int = -1
    start_offset: int = 0
    end_offset: int = 0
    position: int = 0
    records_read: int = 0
    # the account's records in the range (its replay requests aside)
    records_matched: int = 0
    records_rejected: int = 0
    # records of an erased user: their key is gone, they are skipped (shared.vault)
    records_shredded: int = 0
    stats: ImportStats = field(default_factory=ImportStats)
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    finished_at: dt.datetime | None = None

    @property
    def processed(self) -> int:
        """Offsets of the partition read so far (every key's), out of `total`."""
        return max(0, self.position - self.start_offset)

    @property
    def total(self) -> int:
        return max(0, self.end_offset - self.start_offset)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["processed"], data["total"] = self.processed, self.total
        data["since"] = self.since.isoformat() if self.since else None
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return data


Progress = Callable[[ReplayResult], Awaitable[None]]


def partition_for(key: str, partitions: list[int]) -> int:
    """The partition the producers' default partitioner puts `key` on."""
    ordered = sorted(partitions)
    chosen: int = DefaultPartitioner()(key.encode(), ordered, ordered)
    return chosen


def _parse(opened: CloudEvent | Exception, key: str) -> RawRecord | None:
    """A line or a balance (`account.synced`), as the consumer reads them; None for anything else."""
    if isinstance(opened, Exception):
        return None
    try:
        model = IMPORTER_RAW_LINE_READS.get(opened.name)
        if model is None:
            return None
        return raw_record(opened, model.model_validate(opened.data), key)
    except (ValidationError, ValueError):
        return None


async def _opened(
    sealer: EventSealer | None, topic: str, values: list[bytes | None]
) -> list[CloudEvent | Shredded | NotOpened | Exception]:
    if sealer is not None:
        return await sealer.open_many(topic, values)
    opened: list[CloudEvent | Shredded | NotOpened | Exception] = []
    for value in values:
        try:
            opened.append(CloudEvent.from_json_bytes(value or b""))
        except ValueError as exc:
            opened.append(exc)
    return opened


async def replay_into(
    importer: Importer,
    bootstrap_servers: str,
    user_id: str,
    aggregator_account_id: str,
    since: dt.date | None = None,
    *,
    topic: str = TRANSACTIONS_RAW,
    batch: int = BATCH,
    result: ReplayResult | None = None,
    sealer: EventSealer | None = None,
    partition: int | None = None,
    end_offset: int | None = None,
    on_progress: Progress | None = None,
) -> ReplayResult:
    """Replays into `importer`; `result` (updated as it goes) and `on_progress` (awaited after each read)
    let a caller follow the progress. `partition` (default: the key's) is read up to `end_offset`
    (exclusive; default: its end when the replay begins)."""
    key = account_key(user_id, aggregator_account_id)
    result = result or ReplayResult(user_id, aggregator_account_id, since)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        client_id="banksync-importer-replay",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        if partition is None:
            partition = partition_for(key, await topic_partitions(bootstrap_servers, topic))
        tp = TopicPartition(topic, partition)
        result.partition = tp.partition
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        if end_offset is not None:
            end = min(end, end_offset)
        if since is None:
            start = (await consumer.beginning_offsets([tp]))[tp]
        else:
            moment = dt.datetime.combine(since, dt.time(), tzinfo=dt.UTC)
            found = (await consumer.offsets_for_times({tp: int(moment.timestamp() * 1000)}))[tp]
            start = found.offset if found is not None else end
        start = min(start, end)
        result.start_offset, result.end_offset = start, end
        result.position = start
        consumer.seek(tp, start)
        position = start
        pending: list[RawRecord] = []
        idle_polls = 0
        while position < end and idle_polls < MAX_IDLE_POLLS:
            fetched = await consumer.getmany(tp, timeout_ms=1000, max_records=batch)
            records = fetched.get(tp, [])
            idle_polls = 0 if records else idle_polls + 1
            values: list[bytes | None] = []
            for record in records:
                if record.offset >= end:
                    position = result.position = end
                    break
                position = result.position = record.offset + 1
                result.records_read += 1
                if record.key is not None and record.key.decode(errors="replace") == key:
                    values.append(record.value)
            for opened in await _opened(sealer, topic, values):
                if isinstance(opened, CloudEvent) and opened.name == REQUEST:
                    continue  # an earlier replay request of the account: nothing the bank said
                result.records_matched += 1
                if isinstance(opened, Shredded):
                    result.records_shredded += 1
                    continue
                if isinstance(opened, NotOpened):  # (only with `types`, which a replay does not pass)
                    continue
                raw = _parse(opened, key)
                if raw is None:
                    result.records_rejected += 1
                    continue
                pending.append(raw)
            if len(pending) >= batch or (position >= end and pending):
                await _import(importer, pending, result)
                pending = []
            if on_progress is not None:
                await on_progress(result)
        if pending:
            await _import(importer, pending, result)
    finally:
        await consumer.stop()
    result.finished_at = dt.datetime.now(dt.UTC)
    log.info(
        "replay_finished",
        **{k: v for k, v in result.as_dict().items() if k != "stats"},
        **asdict(result.stats),
    )
    return result


async def _import(importer: Importer, records: list[RawRecord], result: ReplayResult) -> None:
    outcome = await importer.import_records(records)
    result.stats.add(outcome.stats)
    result.records_rejected += len(outcome.rejected)


async def replay_account(
    settings: ServiceSettings, user_id: str, aggregator_account_id: str, since: dt.date | None = None
) -> ReplayResult:
    """For an ops command: rebuilds one aggregator account's operations from the raw topic."""
    broker = make_broker(settings.kafka_bootstrap_servers, client_id="banksync-importer-replay")
    mongo = make_client(settings.mongodb_url)
    await broker.start()
    try:
        db = mongo[settings.mongodb_database]
        vault = KeyVault(
            mongo[settings.banksync_vault_database][VAULT_COLLECTION],
            settings.banksync_token_key.get_secret_value(),
        )
        sealer = EventSealer(vault, "importer")
        importer = Importer(
            StateStore(db),
            MongoOperations(OperationStore(db)),
            AccountStore(db),
            KafkaAnnouncements(EventPublisher(broker, "importer", sealer)),
            locks=KeyLocks(),
            op_locks=KeyLocks(),
        )
        return await replay_into(
            importer, settings.kafka_bootstrap_servers, user_id, aggregator_account_id, since, sealer=sealer
        )
    finally:
        await broker.stop()
        await mongo.close()


# ---- replays requested through the API, run by the partition's owner ----------------------------------


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def this_process() -> str:
    """`<host>:<pid>`: the replica a replay ran on (a pod's host name is the pod's)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ReplayNotRequested(Exception):
    """The request could not be published: nothing will run it (its status says failed)."""


class Replays:
    """The API's side: records a request's status, publishes it, and reads statuses (any replica)."""

    def __init__(
        self,
        statuses: ReplayStatuses,
        requests: ReplayRequests,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.statuses = statuses
        self.requests = requests
        self.clock = clock

    async def request(
        self, user_id: str, aggregator_account_id: str, since: dt.date | None, correlation_id: str
    ) -> ReplayStatus:
        now = self.clock()
        status = ReplayStatus(str(uuid.uuid4()), user_id, aggregator_account_id, since, requested_at=now)
        await self.statuses.requested(status)
        request = ReplayRequested(
            replay_id=status.replay_id,
            user_id=user_id,
            aggregator_account_id=aggregator_account_id,
            since=since,
            requested_at=now,
        )
        try:
            await self.requests.publish(request, correlation_id)
        except Exception as exc:
            error = f"the request could not be published: {type(exc).__name__}: {exc}"
            log.error("replay_not_requested", replay_id=status.replay_id, error=error)
            # unless a run claimed it meanwhile (the record was written after all)
            await self.statuses.finish(
                status.replay_id, None, replace(status, state="failed", finished_at=self.clock(), error=error)
            )
            raise ReplayNotRequested(error) from exc
        log.info(
            "replay_requested",
            replay_id=status.replay_id,
            user_id=user_id,
            aggregator_account_id=aggregator_account_id,
            since=since.isoformat() if since else None,
        )
        return status

    async def view(self, replay_id: str) -> ReplayStatus | None:
        return await self.statuses.get(replay_id)


class PartitionReplay(Protocol):
    """Replays the request's account from `partition`, up to `end_offset` (exclusive), into `result`."""

    async def __call__(
        self,
        request: ReplayRequested,
        partition: int,
        end_offset: int,
        result: ReplayResult,
        on_progress: Progress,
    ) -> ReplayResult: ...


def kafka_partition_replay(
    importer: Importer, bootstrap_servers: str, sealer: EventSealer
) -> PartitionReplay:
    """`replay_into` the consumer's own importer, reading the raw topic with a consumer of its own."""

    async def replay(
        request: ReplayRequested,
        partition: int,
        end_offset: int,
        result: ReplayResult,
        on_progress: Progress,
    ) -> ReplayResult:
        return await replay_into(
            importer,
            bootstrap_servers,
            request.user_id,
            request.aggregator_account_id,
            request.since,
            result=result,
            sealer=sealer,
            partition=partition,
            end_offset=end_offset,
            on_progress=on_progress,
        )

    return replay


class ReplayTakenOver(Exception):
    """Another run claimed the request (its partition moved to another replica): this one stops."""


def request_problem(request: ReplayRequested, event_user: str, key: str) -> str | None:
    """Why a valid `replay.requested` record still cannot run (it goes to the DLQ), or None."""
    expected = account_key(request.user_id, request.aggregator_account_id)
    if key != expected:
        return f"key {key!r} is not <user>:<aggregator account> {expected!r}"
    if event_user != request.user_id:
        return f"event user {event_user!r} differs from data user {request.user_id!r}"
    return None


class ReplayRunner:
    """The raw consumer's side: runs a replay request where it lies in its partition, and keeps its
    status. Errors of the engines (TRANSIENT_ERRORS) go up, so the consumer retries the batch and the
    request with it; any other error ends the run `failed`. A request read more than `expires_after`
    after it was made is not run: `failed` (expired) if it has a status that did not succeed, nothing
    at all if it has none (nothing of an erased user comes back)."""

    def __init__(
        self,
        statuses: ReplayStatuses,
        replay: PartitionReplay,
        *,
        runner: str | None = None,
        progress_every_s: float = PROGRESS_EVERY_S,
        expires_after: dt.timedelta = REQUEST_EXPIRES_AFTER,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.statuses = statuses
        self.replay = replay
        self.runner = runner or this_process()
        self.progress_every_s = progress_every_s
        self.expires_after = expires_after
        self.clock = clock

    async def run(self, request: ReplayRequested, partition: int, offset: int) -> ReplayStatus | None:
        """The run's end; None when there was nothing to run (it had succeeded, or expired without a
        status) or another run took it."""
        context = {"replay_id": request.replay_id, "partition": partition, "offset": offset}
        claim = ReplayClaim(uuid.uuid4().hex, self.runner, partition, offset, self.clock())
        late = claim.at - request.requested_at
        if late > self.expires_after:
            return await self._expire(request, claim, late, context)
        claimed = await self.statuses.claim(request, claim)
        if claimed is None:
            log.info("replay_already_succeeded", **context)
            return None
        log.info("replay_started", attempt=claimed.attempts, runner=self.runner, **context)
        result = ReplayResult(request.user_id, request.aggregator_account_id, request.since)
        written_at = time.monotonic()

        async def progress(now: ReplayResult) -> None:
            nonlocal written_at
            if time.monotonic() - written_at < self.progress_every_s:
                return
            written_at = time.monotonic()
            if not await self.statuses.progress(request.replay_id, claim.run, now.processed, now.total):
                raise ReplayTakenOver(request.replay_id)

        try:
            await self.replay(request, partition, offset, result, progress)
        except ReplayTakenOver:
            log.warning("replay_taken_over", **context)
            return None
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            log.exception("replay_failed", **context)
            outcome = replace(
                claimed,
                state="failed",
                finished_at=self.clock(),
                processed=result.processed,
                total=result.total if result.partition >= 0 else None,
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            outcome = replace(
                claimed,
                state="succeeded",
                finished_at=self.clock(),
                processed=result.processed,
                total=result.total,
                result=result.as_dict(),
            )
        if not await self.statuses.finish(request.replay_id, claim.run, outcome):
            log.warning("replay_taken_over", **context)
            return None
        return outcome

    async def _expire(
        self, request: ReplayRequested, claim: ReplayClaim, late: dt.timedelta, context: dict[str, Any]
    ) -> ReplayStatus | None:
        log.warning("replay_request_expired", late_s=round(late.total_seconds()), **context)
        if await self.statuses.get(request.replay_id) is None:
            return None
        claimed = await self.statuses.claim(request, claim)
        if claimed is None:
            return None
        error = f"expired: read {late} after it was requested (more than {self.expires_after}); ask again"
        outcome = replace(claimed, state="failed", finished_at=self.clock(), error=error)
        return outcome if await self.statuses.finish(request.replay_id, claim.run, outcome) else None
