"""The composition root of the entitlements service: adapters, handlers, consumers, API, the outbox relay."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from services.entitlements.adapters.kafka import SERVICE, KafkaAnnouncer
from services.entitlements.adapters.locks import ProcessLocks
from services.entitlements.adapters.mongo import EntitlementsRepository, ErasureRegistry
from services.entitlements.api import ops_router, router
from services.entitlements.components import EntitlementsComponents
from services.entitlements.handlers import EntitlementsHandlers, ErasureHandlers
from shared.consumer import Incoming, TopicConsumer
from shared.contract.payloads import UserErased
from shared.contract.topics import ENTITLEMENTS
from shared.erasure import erasures_group, subscribe_erasures
from shared.logging import get_logger
from shared.service import Runtime, create_service_app
from shared.settings import ServiceSettings

log = get_logger(__name__)
RELAY_EVERY_S = 2.0


async def wire(runtime: Runtime) -> EntitlementsComponents:
    repository = EntitlementsRepository(runtime.db)
    await repository.create_indexes()
    announcer = KafkaAnnouncer(runtime.publisher)
    handlers = EntitlementsHandlers(repository, announcer, ProcessLocks())
    erasures = ErasureHandlers(ErasureRegistry(runtime.db), repository, runtime.sealer.vault, announcer)
    # this service's part of every erasure (shared.erasure answers `user.erased` for it)
    subscribe_erasures(runtime, erasures.erase_own)

    async def on_answers(batch: list[Incoming]) -> None:
        await erasures.on_answers([i.data for i in batch if isinstance(i.data, UserErased)])

    TopicConsumer(
        runtime.broker, SERVICE, ENTITLEMENTS, {"user.erased": UserErased}, on_answers, sealer=runtime.sealer
    ).subscribe(erasures_group(runtime) + "-answers")
    return EntitlementsComponents(handlers, erasures)


async def relay_outbox(components: EntitlementsComponents) -> None:
    """What an earlier crash or failure left in outboxes, every few seconds."""
    while True:
        try:
            await components.handlers.relay_pending()
        except Exception as exc:
            log.warning("outbox_relay_failed", error=repr(exc))
        await asyncio.sleep(RELAY_EVERY_S)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return create_service_app(
        SERVICE,
        settings or ServiceSettings(),
        routers=[router, ops_router],
        wire=wire,
        background=[relay_outbox],
        description="Plans, the Auto-Import option and the sync gate.",
    )
