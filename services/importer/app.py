"""The importer's composition root: the adapters (MongoDB stores, Kafka announcements, the process's
locks), the handlers over them, its three consumers, the API and replays (requested by the API, run by
the raw consumer that owns the account's partition, their status in MongoDB)."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import Field

from services.importer.adapters.kafka import KafkaAnnouncements
from services.importer.adapters.locks import KeyLocks
from services.importer.adapters.mongo import (
    AccountStore,
    ImporterEraser,
    MongoCategorizations,
    MongoOperations,
    OperationStore,
    StateStore,
)
from services.importer.adapters.replays import KafkaReplayRequests, MongoReplayStatuses
from services.importer.api import ops, users
from services.importer.components import ImporterComponents
from services.importer.consumers import (
    CategorizedConsumerHandler,
    DiscoveredConsumerHandler,
    RawConsumerHandler,
)
from services.importer.domain.events import SERVICE
from services.importer.handlers.accounts import AccountService
from services.importer.handlers.categorizations import Categorizations
from services.importer.handlers.details import AccountDetails
from services.importer.handlers.intake import Importer
from services.importer.replay import ReplayRunner, Replays, kafka_partition_replay
from shared.consumer import TopicConsumer
from shared.contract.catalog import (
    IMPORTER_CATEGORIZATIONS_GROUP,
    IMPORTER_CONNECTION_READS,
    IMPORTER_CONNECTIONS_GROUP,
    IMPORTER_GROUP,
    IMPORTER_RAW_READS,
)
from shared.contract.payloads import OperationCategorized
from shared.contract.topics import CATEGORIZATIONS, CONNECTIONS, TRANSACTIONS_RAW
from shared.erasure import subscribe_erasures
from shared.kafka import EventPublisher
from shared.logging import get_logger
from shared.service import Runtime, create_service_app
from shared.settings import ServiceSettings

log = get_logger(__name__)


class ImporterSettings(ServiceSettings):
    """The shared settings, plus the consumer groups (a fresh group reads the topics from the start)."""

    importer_group_id: str = IMPORTER_GROUP
    importer_categorizations_group_id: str = IMPORTER_CATEGORIZATIONS_GROUP
    importer_connections_group_id: str = IMPORTER_CONNECTIONS_GROUP
    importer_max_records: int = Field(default=500, ge=1, le=10_000)
    # how long a batch of the raw topic may take (one that holds a replay request lasts as long as the
    # replay: about 46,000 records of the partition a second) before Kafka moves its partitions
    importer_max_batch_s: float = Field(default=1800, gt=0)
    # results are written a sheet (an account's month) at a time: the larger the batch, the fewer writes
    importer_categorizations_max_records: int = Field(default=2_000, ge=1, le=10_000)


def settings_of(runtime: Runtime) -> ImporterSettings:
    settings = runtime.settings
    return settings if isinstance(settings, ImporterSettings) else ImporterSettings()


async def wire(runtime: Runtime) -> ImporterComponents:
    settings = settings_of(runtime)
    state, operations, accounts = StateStore(runtime.db), OperationStore(runtime.db), AccountStore(runtime.db)
    await operations.create_indexes()
    if rewritten := await operations.add_search_keys():
        log.info("operations_given_search_keys", operations=rewritten)
    await accounts.create_indexes()
    importer = Importer(
        state,
        MongoOperations(operations),
        accounts,
        KafkaAnnouncements(runtime.publisher),
        locks=KeyLocks(),
        op_locks=KeyLocks(),
    )

    # the gauge of accounts in balance alarm holds from the start, not from the first account that changes
    await importer.recount_gaps()

    replay_statuses = MongoReplayStatuses(runtime.db)
    await replay_statuses.create_indexes()
    replay_runner = ReplayRunner(
        replay_statuses, kafka_partition_replay(importer, settings.kafka_bootstrap_servers, runtime.sealer)
    )
    raw_handler = RawConsumerHandler(importer, replay_runner)
    raw = TopicConsumer(
        runtime.broker,
        SERVICE,
        TRANSACTIONS_RAW,
        dict(IMPORTER_RAW_READS),
        raw_handler,
        sealer=runtime.sealer,
    )
    raw_handler.dead_letter = raw.dead_letter
    raw.subscribe(
        settings.importer_group_id,
        max_records=settings.importer_max_records,
        # a replay request is handled inside its batch: the batch lasts as long as the replay
        max_poll_interval_s=settings.importer_max_batch_s,
    )

    categorized = TopicConsumer(
        runtime.broker,
        SERVICE,
        CATEGORIZATIONS,
        {"operation.categorized": OperationCategorized},
        CategorizedConsumerHandler(Categorizations(MongoCategorizations(operations))),
        sealer=runtime.sealer,
    )
    categorized.subscribe(
        settings.importer_categorizations_group_id,
        max_records=settings.importer_categorizations_max_records,
    )

    discovered = TopicConsumer(
        runtime.broker,
        SERVICE,
        CONNECTIONS,
        dict(IMPORTER_CONNECTION_READS),
        DiscoveredConsumerHandler(AccountDetails(accounts, importer.locks)),
        sealer=runtime.sealer,
    )
    discovered.subscribe(settings.importer_connections_group_id)
    eraser = ImporterEraser(runtime.db)

    async def erase_user(user_id: str) -> int:
        return await eraser.erase_user(user_id) + await replay_statuses.erase_user(user_id)

    subscribe_erasures(runtime, erase_user)
    # a replay request carries no bank data: published in clear (see services.importer.adapters.replays)
    requests = KafkaReplayRequests(EventPublisher(runtime.broker, SERVICE))
    return ImporterComponents(importer, AccountService(importer), Replays(replay_statuses, requests))


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return create_service_app(
        SERVICE,
        settings or ImporterSettings(),
        routers=[users, ops],
        wire=wire,
        description="Deduplication, account mapping and operations.",
    )
