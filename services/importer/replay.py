"""Rebuilding one aggregator account from the raw topic, through the same import path.

The raw topic is the source of truth for what the bank said. Everything about one aggregator account
is keyed `<user>:<aggregator account>`, so it sits on one partition: the one the producer's default
partitioner chose (murmur2 of the key, as Kafka's and aiokafka's `DefaultPartitioner`). A replay reads
only that partition, from its start or from the first record at or after a date (`offsets_for_times`),
up to the end it had when the replay began, keeps the records of that key, and imports them in
batches like the consumer does (lines, and the balances of `account.synced` in their order). The import
is idempotent: what is already known changes nothing, what was deleted (an app account deleted by its
user) comes back, balance checks included (a revived account fixes its opening balance again).

`replay_account(settings, ...)` is the same thing as a function for an ops command: it opens its own
Kafka and MongoDB clients and runs in the caller's process. `Replays` runs them in the service's own
process, for the API (`POST /v1/ops/replay`), and keeps how they went.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from services.importer.adapters.kafka import KafkaAnnouncements
from services.importer.adapters.locks import KeyLocks
from services.importer.adapters.mongo import AccountStore, MongoOperations, OperationStore, StateStore
from services.importer.domain.intake import ImportStats, RawRecord, raw_record
from services.importer.handlers.intake import Importer
from shared.contract.catalog import IMPORTER_RAW_READS
from shared.contract.envelope import CloudEvent, account_key
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
        model = IMPORTER_RAW_READS.get(opened.name)
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
) -> ReplayResult:
    """Replays into `importer`; `result` (updated as it goes) lets a caller follow the progress."""
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
        partitions = await topic_partitions(bootstrap_servers, topic)
        tp = TopicPartition(topic, partition_for(key, partitions))
        result.partition = tp.partition
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        if since is None:
            start = (await consumer.beginning_offsets([tp]))[tp]
        else:
            moment = dt.datetime.combine(since, dt.time(), tzinfo=dt.UTC)
            found = (await consumer.offsets_for_times({tp: int(moment.timestamp() * 1000)}))[tp]
            start = found.offset if found is not None else end
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
                position = result.position = record.offset + 1
                if record.offset >= end:
                    break
                result.records_read += 1
                if record.key is None or record.key.decode(errors="replace") != key:
                    continue
                result.records_matched += 1
                values.append(record.value)
            for opened in await _opened(sealer, topic, values):
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


@dataclass
class ReplayRun:
    """A replay started in this process, and how it went."""

    replay_id: str
    user_id: str
    aggregator_account_id: str
    since: dt.date | None
    status: Literal["running", "succeeded", "failed"] = "running"
    processed: int = 0  # records of the partition read so far
    total: int | None = None  # records of the partition to read (None: not known yet)
    result: dict[str, Any] | None = None
    error: str | None = None


class Replays:
    """Replays started through the API in this process, and how they ended (the last `KEEP`)."""

    KEEP = 100

    def __init__(self, importer: Importer, bootstrap_servers: str, sealer: EventSealer) -> None:
        self.importer = importer
        self.bootstrap_servers = bootstrap_servers
        self.sealer = sealer
        self.runs: dict[str, ReplayRun] = {}
        self.running: dict[str, ReplayResult] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, user_id: str, aggregator_account_id: str, since: dt.date | None) -> ReplayRun:
        replay_id = str(uuid.uuid4())
        run = ReplayRun(replay_id, user_id, aggregator_account_id, since)
        self.runs[replay_id] = run
        for old in [k for k, v in self.runs.items() if v.status != "running"][: -self.KEEP]:
            del self.runs[old]  # the finished ones beyond the last KEEP
        task = asyncio.create_task(self._run(run), name=f"replay-{replay_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return run

    def view(self, replay_id: str) -> ReplayRun | None:
        run = self.runs.get(replay_id)
        live = self.running.get(replay_id)
        if run is not None and live is not None:
            run.processed, run.total = live.processed, live.total if live.partition >= 0 else None
        return run

    async def _run(self, run: ReplayRun) -> None:
        live = self.running[run.replay_id] = ReplayResult(run.user_id, run.aggregator_account_id, run.since)
        try:
            await replay_into(
                self.importer,
                self.bootstrap_servers,
                run.user_id,
                run.aggregator_account_id,
                run.since,
                result=live,
                sealer=self.sealer,
            )
        except Exception as exc:
            log.exception("replay_failed", replay_id=run.replay_id)
            run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"
        else:
            run.status, run.result = "succeeded", live.as_dict()
        finally:
            run.processed, run.total = live.processed, live.total
            del self.running[run.replay_id]

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
