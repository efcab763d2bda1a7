"""Wiring of the entitlements service: repository, handlers, API and the outbox relay."""

from __future__ import annotations

from fastapi import FastAPI

from services.entitlements.adapters import EntitlementsRepository
from services.entitlements.api import ops_router, router
from services.entitlements.components import EntitlementsComponents
from services.entitlements.erasure import wire_erasures
from services.entitlements.handlers import EntitlementsHandlers
from shared.service import Runtime, create_service_app
from shared.settings import ServiceSettings

SERVICE = "entitlements"


async def wire(runtime: Runtime) -> EntitlementsComponents:
    repository = EntitlementsRepository(runtime.db)
    await repository.create_indexes()
    return EntitlementsComponents(
        EntitlementsHandlers(repository, runtime.publisher), wire_erasures(runtime, repository)
    )


async def relay_outbox(components: EntitlementsComponents) -> None:
    await components.handlers.run_relay()


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return create_service_app(
        SERVICE,
        settings or ServiceSettings(),
        routers=[router, ops_router],
        wire=wire,
        background=[relay_outbox],
        description="Plans, the Auto-Import option and the sync gate.",
    )
