"""The live operations dashboard: one HTML page fed by server-sent events, built from Kafka alone.

GET /             the page (vanilla JS, no build step, nothing fetched from outside)
GET /events       server-sent events: a `snapshot` event whenever something changed (and every few s)
GET /api/snapshot the same snapshot as JSON
GET/POST /login   the login form: an ops token in, a session cookie out;  POST /logout
GET /asyncapi.json  the AsyncAPI document of every topic and event
GET /healthz      process up;  GET /readyz  Kafka answered the last poll

The page, the stream and the snapshot need an ops token (ops.dashboard.auth): a session cookie from
/login, or `Authorization: Bearer`. The probes, the AsyncAPI document and /docs hold no data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import cache
from html import escape
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from ops.dashboard import auth as dashboard_auth
from ops.dashboard.auth import DashboardAuth, Operator, html_page, login_page
from ops.dashboard.follower import Follower, poll
from ops.dashboard.state import DashboardState
from shared.auth import TokenPolicy
from shared.docs import serve_docs_locally
from shared.http_problems import install_problem_handlers
from shared.problems import PROBLEM_CONTENT_TYPE, Problem
from shared.settings import ServiceSettings

PAGE = Path(__file__).resolve().parent / "index.html"
SNAPSHOT_EVERY_S = 5.0


@cache
def asyncapi_document() -> dict[str, Any]:
    from ops.asyncapi import document

    return document()


def create_app(
    bootstrap: str,
    *,
    history: timedelta = timedelta(minutes=30),
    poll_interval_s: float = 3.0,
    state: DashboardState | None = None,
    follow: bool = True,
    tokens: TokenPolicy | None = None,
) -> FastAPI:
    """`tokens`: how ops tokens are checked (default: the environment's `BANKSYNC_JWT_*` settings)."""
    live = state or DashboardState()
    auth = DashboardAuth(tokens or ServiceSettings().token_policy())
    ops_operator = Depends(auth)  # a default, not an Annotated alias: these annotations are strings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        if follow:
            tasks = [
                asyncio.create_task(Follower(bootstrap, live, history=history).run(), name="follow"),
                asyncio.create_task(poll(bootstrap, live, poll_interval_s), name="poll"),
            ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(
        title="banksync ops dashboard", version="1.0.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.dashboard = live
    serve_docs_locally(app)
    install_problem_handlers(app, "dashboard")

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return dashboard_auth.refusal(request, exc)

    app.add_exception_handler(Problem, refused)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(operator: Operator = ops_operator) -> HTMLResponse:
        until = time.strftime("%H:%M UTC", time.gmtime(operator.expires_at))
        signed_in = f"{escape(operator.subject)} · until {until}"
        return html_page(PAGE.read_text(encoding="utf-8").replace("<!--OPERATOR-->", signed_in))

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form() -> HTMLResponse:
        return login_page()

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        return await dashboard_auth.login(request, auth)

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        return await dashboard_auth.logout(request)

    @app.get("/api/snapshot")
    async def snapshot(_: Operator = ops_operator) -> dict[str, Any]:
        return live.snapshot()

    @app.get("/events", response_class=EventSourceResponse)
    async def events(request: Request, operator: Operator = ops_operator) -> AsyncIterable[ServerSentEvent]:
        sent_version = -1
        sent_at = 0.0
        # the stream ends with its session: the browser's reconnection then meets the login
        while not await request.is_disconnected() and time.time() < operator.expires_at:
            if live.version != sent_version or time.monotonic() - sent_at > SNAPSHOT_EVERY_S:
                sent_version, sent_at = live.version, time.monotonic()
                yield ServerSentEvent(
                    data=live.snapshot(), event="snapshot", id=str(sent_version), retry=2000
                )
            await asyncio.sleep(0.5)

    @app.get("/asyncapi.json")
    async def asyncapi() -> JSONResponse:
        return JSONResponse(asyncapi_document())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "dashboard"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if live.kafka_state == "connected":
            return JSONResponse({"status": "ready", "service": "dashboard", "checks": {"kafka": "ok"}})
        return JSONResponse(
            {
                "type": "https://budgetfacile.fr/problems/not_ready",
                "title": "Service Unavailable",
                "status": 503,
                "detail": f"Not ready: kafka {live.kafka_state}"
                + (f" ({live.kafka_error})" if live.kafka_error else ""),
                "code": "not_ready",
                "checks": {"kafka": live.kafka_state},
            },
            status_code=503,
            media_type=PROBLEM_CONTENT_TYPE,
        )

    return app
