"""Wiring of the entitlements service: settings, routes and event subscribers on the shared runtime."""

from __future__ import annotations

from fastapi import FastAPI

from shared.service import create_service_app
from shared.settings import ServiceSettings

SERVICE = "entitlements"


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return create_service_app(
        SERVICE,
        settings or ServiceSettings(),
        description="Plans, the Auto-Import option and the sync gate.",
    )
