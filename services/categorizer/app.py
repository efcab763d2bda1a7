"""Wiring of the categorizer service: settings, routes and event subscribers on the shared runtime."""

from __future__ import annotations

from fastapi import FastAPI

from shared.service import create_service_app
from shared.settings import ServiceSettings

SERVICE = "categorizer"


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return create_service_app(
        SERVICE,
        settings or ServiceSettings(),
        description="Payees, keywords and categories.",
    )
