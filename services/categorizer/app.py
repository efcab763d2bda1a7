"""The composition root of the categorizer: the MongoDB adapters, the Kafka publisher, the built-in
dictionary, the handlers over them, the operations consumer, the erasure subscription, the API and the
background re-examination of past operations after rule changes."""

from __future__ import annotations

from fastapi import FastAPI

from services.categorizer.adapters.kafka import CategorizationPublisher, operations_messages
from services.categorizer.adapters.mongo import (
    CategorizerEraser,
    OperationsRepository,
    RuleSetRepository,
    TransferRepository,
)
from services.categorizer.api import router
from services.categorizer.components import CategorizerComponents
from services.categorizer.domain.dictionary import builtin_dictionary, places
from services.categorizer.handlers import CategorizerHandlers
from shared.batch_publisher import BatchPublisher
from shared.consumer import Incoming, TopicConsumer
from shared.contract.catalog import CATEGORIZER_GROUP, CATEGORIZER_OPERATION_READS
from shared.contract.topics import OPERATIONS
from shared.erasure import subscribe_erasures
from shared.logging import get_logger
from shared.service import Runtime, create_service_app
from shared.settings import ServiceSettings

log = get_logger(__name__)

SERVICE = "categorizer"


class CategorizerSettings(ServiceSettings):
    """The shared settings, plus the consumer group of the operations topic."""

    categorizer_group_id: str = CATEGORIZER_GROUP


async def wire(runtime: Runtime) -> CategorizerComponents:
    settings = runtime.settings
    assert isinstance(settings, CategorizerSettings)
    rulesets = RuleSetRepository(runtime.db)
    operations = OperationsRepository(runtime.db)
    transfers = TransferRepository(runtime.db)
    await rulesets.create_indexes()
    await operations.create_indexes()
    await transfers.create_indexes()
    if moved := await operations.adopt_legacy():
        log.info("projection_moved_to_sheets", operations=moved)
    # thousands of categorisations at once after a rule change: a producer that sends them in batches
    publisher = BatchPublisher(
        runtime.settings.kafka_bootstrap_servers, f"banksync-{SERVICE}-batch", SERVICE, runtime.sealer
    )
    await publisher.start()
    handlers = CategorizerHandlers.build(
        rulesets,
        operations,
        CategorizationPublisher(publisher),
        builtin_dictionary(),
        places=places(),
        transfers=transfers,
    )

    async def on_operations(batch: list[Incoming]) -> None:
        await handlers.operations.on_operations(operations_messages(batch))

    TopicConsumer(
        runtime.broker,
        SERVICE,
        OPERATIONS,
        dict(CATEGORIZER_OPERATION_READS),
        on_operations,
        sealer=runtime.sealer,
    ).subscribe(settings.categorizer_group_id)
    subscribe_erasures(runtime, CategorizerEraser(runtime.db).erase_user)
    return CategorizerComponents(handlers, publisher)


async def stop_publisher(components: CategorizerComponents) -> None:
    await components.publisher.stop()


async def reexaminer(components: CategorizerComponents) -> None:
    await components.handlers.reexaminer.run()


def create_app(settings: CategorizerSettings | None = None) -> FastAPI:
    return create_service_app(
        SERVICE,
        settings or CategorizerSettings(),
        routers=[router],
        wire=wire,
        on_shutdown=[stop_publisher],
        background=[reexaminer],
        description="Payees, keywords and categories: recognises operations, past ones included.",
    )
