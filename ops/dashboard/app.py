"""The live operations dashboard: one HTML page fed by server-sent events, built from Kafka alone.

GET /             the page (vanilla JS, no build step, nothing fetched from outside)
GET /events       server-sent events: a `snapshot` event whenever something changed (and every few s)
GET /api/snapshot the same snapshot as JSON
GET /asyncapi.json  the AsyncAPI document of every topic and event
GET /healthz      process up;  GET /readyz  Kafka answered the last poll
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from ops.dashboard.follower import Follower, poll
from ops.dashboard.state import DashboardState
from shared.problems import PROBLEM_CONTENT_TYPE

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
) -> FastAPI:
    live = state or DashboardState()

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

    app = FastAPI(title="banksync ops dashboard", version="1.0.0", lifespan=lifespan)
    app.state.dashboard = live

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    @app.get("/api/snapshot")
    async def snapshot() -> dict[str, Any]:
        return live.snapshot()

    @app.get("/events", response_class=EventSourceResponse)
    async def events(request: Request) -> AsyncIterable[ServerSentEvent]:
        sent_version = -1
        sent_at = 0.0
        while not await request.is_disconnected():
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
