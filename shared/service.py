"""One composition root shape for all four services.

`create_service_app` builds the FastAPI app with /healthz, /readyz, /metrics, problem errors, the
correlation-id middleware and a lifespan that starts the Kafka broker and the MongoDB client and stops
them again. A service passes what is its own: routers, and `wire`, which creates its indexes, registers
its subscribers (it runs before the broker starts, so subscribers join at start) and returns the
service's components (its own typed object: routes reach it with `components(request, Kind)`), then
`background` jobs that run while the app is up (started after the broker, cancelled at shutdown) and
`on_shutdown` hooks, both given the components.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from shared.auth import install_auth_before_validation, only_known_query_parameters, plain_inputs
from shared.consumer import SUBSCRIPTIONS
from shared.http_problems import install_problem_handlers
from shared.kafka import EventPublisher, make_broker
from shared.kafka_offsets import offset_reader
from shared.limits import BodyLimits, BodySizeLimit, RequestTimeout
from shared.logging import bind_context, clear_context, configure_logging, get_logger
from shared.metrics import CONSUMER_LAG, HTTP_LATENCY, HTTP_REQUESTS
from shared.mongo import make_client, ping
from shared.problems import PROBLEM_CONTENT_TYPE, problem_responses
from shared.ratelimit import RateLimit, RateLimits
from shared.settings import ServiceSettings
from shared.vault import VAULT_COLLECTION, EventSealer, KeyVault

CORRELATION_HEADER = "X-Correlation-ID"
# a client's correlation id is kept when it looks like one (a UUID, a trace id); anything else (too long,
# tabs, quotes, CR/LF) is replaced by a new UUID, since it goes into logs, headers and events
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CORRELATION_KEY = "banksync.correlation_id"
log = get_logger(__name__)


class WeakSecrets(RuntimeError):
    """A service outside the local stack was given a development default or a short secret."""


@dataclass
class Runtime:
    """What handlers and adapters of one service process share."""

    service: str
    settings: ServiceSettings
    broker: KafkaBroker
    mongo: AsyncMongoClient[dict[str, Any]]
    publisher: EventPublisher
    # seals the payloads that carry bank data with the user's key, and opens them (shared.vault)
    sealer: EventSealer

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        return self.mongo[self.settings.mongodb_database]


C = TypeVar("C")


class _RequestContextMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: Any, service: str) -> None:
        super().__init__(app)
        self.service = service

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        clear_context()
        given = request.headers.get(CORRELATION_HEADER, "")
        correlation_id = given if _CORRELATION_ID.fullmatch(given) else str(uuid.uuid4())
        request.scope[_CORRELATION_KEY] = correlation_id
        bind_context(correlation_id=correlation_id)
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        route_path = getattr(route, "path", "unmatched")
        HTTP_REQUESTS.labels(self.service, request.method, route_path, str(response.status_code)).inc()
        HTTP_LATENCY.labels(self.service, request.method, route_path).observe(time.perf_counter() - started)
        response.headers[CORRELATION_HEADER] = correlation_id
        return response


def components(request: Request, kind: type[C]) -> C:
    """The components `wire` returned for this process (a route's way to its handlers)."""
    found = getattr(request.app.state, "components", None)
    if not isinstance(found, kind):
        raise RuntimeError(f"{kind.__name__} is not wired in this app")
    return found


def correlation_id_of(request: Request) -> str:
    """The request's correlation id, as the middleware accepted or made it (and answers it)."""
    found = request.scope.get(_CORRELATION_KEY)
    return found if isinstance(found, str) else str(uuid.uuid4())


def refuse_weak_secrets(
    service: str, settings: ServiceSettings, names: Collection[str] | None = None
) -> None:
    """Outside the local stack a default or short secret (of those named, or all) stops the service;
    locally it is one warning."""
    weak = settings.weak_secrets(names)
    if not weak:
        return
    if settings.banksync_env != "local":
        raise WeakSecrets(
            f"banksync {service} refuses to start in {settings.banksync_env}: {'; '.join(weak)}. "
            "Set real secrets (at least 32 random bytes each)."
        )
    log.warning("development_secrets", env=settings.banksync_env, weak=weak)


def create_service_app(
    service: str,
    settings: ServiceSettings,
    *,
    routers: Sequence[APIRouter] = (),
    wire: Callable[[Runtime], Awaitable[C]] | None = None,
    on_shutdown: Sequence[Callable[[C], Awaitable[None]]] = (),
    background: Sequence[Callable[[C], Coroutine[Any, Any, None]]] = (),
    description: str = "",
) -> FastAPI:
    kafka_outages = configure_logging(service, settings.log_level)
    refuse_weak_secrets(service, settings)
    replica = "" if settings.service_replica == 1 else f"-{settings.service_replica}"
    broker = make_broker(settings.kafka_bootstrap_servers, client_id=f"banksync-{service}{replica}")
    kafka_outages.probe = lambda: broker.ping(settings.readiness_timeout_s)
    mongo = make_client(settings.mongodb_url)
    vault = KeyVault(
        mongo[settings.banksync_vault_database][VAULT_COLLECTION],
        settings.banksync_token_key.get_secret_value(),
    )
    sealer = EventSealer(vault, service)
    runtime = Runtime(service, settings, broker, mongo, EventPublisher(broker, service, sealer), sealer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if wire is not None:
            wired = await wire(runtime)
            app.state.components = wired
        await broker.start()
        tasks = [asyncio.create_task(report_consumer_lag(runtime), name="report_consumer_lag")]
        if wire is not None:
            tasks += [
                asyncio.create_task(job(wired), name=getattr(job, "__name__", "job")) for job in background
            ]
        log.info("service_started", kafka=settings.kafka_bootstrap_servers)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # the consumers first: a batch in hand still has the publishers and clients the hooks close
            # (closed under it, it would fail and be dead-lettered instead of handed over)
            await broker.stop()
            if wire is not None:
                for hook in on_shutdown:
                    await hook(wired)
            await mongo.close()
            log.info("service_stopped")

    app = FastAPI(
        title=f"banksync {service}",
        version="1.0.0",
        description=description,
        lifespan=lifespan,
        dependencies=[Depends(only_known_query_parameters), Depends(plain_inputs)],
        # what any route may answer before it runs: shed by the rate limit, or stopped by the timeout
        responses=problem_responses(429, 503),
        docs_url=None,  # served by shared.docs, without a CDN
        redoc_url=None,
    )
    from shared.docs import serve_docs_locally

    serve_docs_locally(app)
    app.state.runtime = runtime
    app.state.token_policy = settings.token_policy()
    install_problem_handlers(app, service)
    install_auth_before_validation(app)
    # the last added runs first. The rate limit before anything else: a refusal costs an eighth of a request
    # through the request context's BaseHTTPMiddleware (measured), which is what lets a flood be shed
    app.add_middleware(BodySizeLimit, limits=BodyLimits.of_settings(settings), service=service)
    app.add_middleware(RequestTimeout, seconds=settings.request_timeout_s, service=service)
    app.add_middleware(_RequestContextMiddleware, service=service)
    app.add_middleware(RateLimit, limits=RateLimits.of_settings(settings), service=service)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["health"], responses=problem_responses(503))
    async def readyz() -> JSONResponse:
        checks = await _readiness_checks(runtime)
        ready = all(v == "ok" for v in checks.values())
        if ready:
            return JSONResponse({"status": "ready", "service": service, "checks": checks})
        failing = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        return JSONResponse(
            {
                "type": "https://budgetfacile.fr/problems/not_ready",
                "title": "Service Unavailable",
                "status": 503,
                "detail": f"Not ready: {failing}",
                "code": "not_ready",
                "checks": checks,
            },
            status_code=503,
            media_type=PROBLEM_CONTENT_TYPE,
        )

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text exposition format."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app


async def _readiness_checks(runtime: Runtime) -> dict[str, str]:
    timeout = runtime.settings.readiness_timeout_s

    async def kafka() -> str:
        try:
            return "ok" if await runtime.broker.ping(timeout) else "unreachable"
        except Exception as exc:
            return f"error: {type(exc).__name__}"

    async def mongodb() -> str:
        try:
            await asyncio.wait_for(ping(runtime.mongo), timeout)
            return "ok"
        except TimeoutError:
            return "unreachable"
        except Exception as exc:
            return f"error: {type(exc).__name__}"

    kafka_state, mongo_state = await asyncio.gather(kafka(), mongodb())
    return {"kafka": kafka_state, "mongodb": mongo_state}


async def report_consumer_lag(runtime: Runtime) -> None:
    """Keeps `banksync_consumer_lag` current for the groups this process consumes in.

    Lag is read from the broker (committed offsets against log end offsets), the same figure as
    `banksync lag` and Kafka's `kafka-consumer-groups --describe`: it keeps growing when a consumer is
    stuck, which a figure computed inside the consumer would not show.
    """
    interval = runtime.settings.consumer_lag_interval_s
    failing_since: float | None = None  # one warning per stretch of failures (Kafka down: one outage)
    while True:
        await asyncio.sleep(interval)
        groups = sorted(SUBSCRIPTIONS)
        if not groups:
            return
        try:
            async with offset_reader(runtime.settings.kafka_bootstrap_servers, runtime.service) as kafka:
                lags = {group: await kafka.committed_lag(group) for group in groups}
        except Exception as exc:
            if failing_since is None:
                failing_since = time.monotonic()
                log.warning("consumer_lag_unavailable", error=f"{type(exc).__name__}: {exc}")
            continue
        if failing_since is not None:
            log.info("consumer_lag_available_again", after_s=round(time.monotonic() - failing_since, 1))
            failing_since = None
        for group, partitions in lags.items():
            for (topic, partition), lag in partitions.items():
                if topic in SUBSCRIPTIONS.get(group, ()):
                    CONSUMER_LAG.labels(runtime.service, group, topic, str(partition)).set(lag)
