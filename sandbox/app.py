"""Composition root: settings from the environment, the store, faults, webhooks, routes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.base import RequestResponseEndpoint

from sandbox.api import control_router, error_response, powens_router, webview_router
from sandbox.clients import DEV_CLIENT_ID, DEV_CLIENT_SECRET, DEV_REDIRECT_URIS, ClientApp, Clients
from sandbox.clock import Clock, system_clock
from sandbox.faults import Faults
from sandbox.store import SandboxError, Store
from sandbox.views import error_json
from sandbox.webhooks import WebhookSender, WebhookTarget

DEFAULT_SEED = 42
DEV_WEBHOOK_SECRET = "dev-only-webhook-secret"
CONNECTOR_WEBHOOK_PATH = "/v1/webhooks/aggregator"
CONNECTOR_CALLBACK_PATH = "/v1/callback"


@dataclass(frozen=True)
class SandboxSettings:
    seed: int = DEFAULT_SEED
    webhook_url: str | None = None
    webhook_secret: str | None = DEV_WEBHOOK_SECRET
    today: date | None = None  # pins the last day of generated history (default: today in Paris)
    history_months: int | None = None  # shorter histories than the banks' 13 months (load tests)
    # the one registered client application (the connector): its id, secret and redirect URIs
    client_id: str = DEV_CLIENT_ID
    client_secret: str = DEV_CLIENT_SECRET
    redirect_uris: tuple[str, ...] = field(default=DEV_REDIRECT_URIS)

    def clients(self) -> Clients:
        return Clients([ClientApp(self.client_id, self.client_secret, frozenset(self.redirect_uris))])

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> SandboxSettings:
        env = dict(os.environ if environ is None else environ)
        webhook_url = env.get("SANDBOX_WEBHOOK_URL") or None
        if webhook_url is None and env.get("CONNECTOR_URL"):
            # `make up` and docker-compose give every process CONNECTOR_URL: webhooks go to the connector
            webhook_url = env["CONNECTOR_URL"].rstrip("/") + CONNECTOR_WEBHOOK_PATH
        if webhook_url and webhook_url.lower() in ("none", "off", "-"):
            webhook_url = None
        today = env.get("AGGREGATOR_SANDBOX_TODAY")
        redirect_uris = tuple(
            uri.strip() for uri in env.get("SANDBOX_REDIRECT_URIS", "").split(",") if uri.strip()
        )
        if not redirect_uris and env.get("CONNECTOR_URL"):
            # `make up` and docker-compose give every process CONNECTOR_URL: its callback is the client's
            redirect_uris = (env["CONNECTOR_URL"].rstrip("/") + CONNECTOR_CALLBACK_PATH,)
        return cls(
            seed=int(env.get("AGGREGATOR_SANDBOX_SEED", DEFAULT_SEED)),
            webhook_url=webhook_url,
            webhook_secret=env.get("SANDBOX_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET) or None,
            today=date.fromisoformat(today) if today else None,
            history_months=int(env["AGGREGATOR_SANDBOX_HISTORY_MONTHS"])
            if env.get("AGGREGATOR_SANDBOX_HISTORY_MONTHS")
            else None,
            client_id=env.get("SANDBOX_CLIENT_ID") or DEV_CLIENT_ID,
            client_secret=env.get("SANDBOX_CLIENT_SECRET") or DEV_CLIENT_SECRET,
            redirect_uris=redirect_uris or DEV_REDIRECT_URIS,
        )


def create_app(
    settings: SandboxSettings | None = None, *, clock: Clock = system_clock, store: Store | None = None
) -> FastAPI:
    settings = settings or SandboxSettings.from_env()
    store = store or Store(
        seed=settings.seed, clock=clock, today=settings.today, history_months=settings.history_months
    )
    faults = Faults(settings.seed)
    webhooks = WebhookSender(store, WebhookTarget(settings.webhook_url, settings.webhook_secret))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await webhooks.aclose()

    app = FastAPI(
        title="Budgetfacile aggregator sandbox",
        description="Powens-compatible (Budget Insight API 2.0) stand-in; control API under /sandbox.",
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,  # served by shared.docs, without a CDN
        redoc_url=None,
    )
    from shared.docs import serve_docs_locally

    serve_docs_locally(app)
    app.state.store = store
    app.state.faults = faults
    app.state.webhooks = webhooks

    @app.middleware("http")
    async def inject_faults(request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        if path.startswith("/2.0/") and not path.startswith("/2.0/auth/webview"):
            decision = faults.decide()
            if decision.latency_s > 0:
                await asyncio.sleep(decision.latency_s)
            if decision.status == 429:
                return JSONResponse(
                    error_json("tooManyRequests", "rate limit reached (sandbox fault injection)"),
                    status_code=429,
                    headers={"Retry-After": str(decision.retry_after_s or 1)},
                )
            if decision.status is not None:
                return JSONResponse(
                    error_json("internalServerError", "injected failure (sandbox fault injection)"),
                    status_code=decision.status,
                )
        return await call_next(request)

    @app.exception_handler(SandboxError)
    async def sandbox_error(_request: Request, exc: SandboxError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail: Any = exc.errors()
        if request.url.path.startswith("/2.0/"):
            return JSONResponse(error_json("invalidValue", str(detail)), status_code=400)
        return JSONResponse({"detail": detail}, status_code=422)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    clients = settings.clients()
    app.include_router(webview_router(store, webhooks, clients))
    app.include_router(powens_router(store, webhooks, clients))
    app.include_router(control_router(store, faults, webhooks))
    return app
