"""A request not answered within `REQUEST_TIMEOUT_S` is stopped and answered 503 `request_timeout`
(issue #16); an answer that has begun is never cut, and the routes that last as long as their work
(`UNTIMED_PATHS`) are not timed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from shared.limits import UNTIMED_PATHS, RequestTimeout
from shared.service import create_service_app
from shared.settings import ServiceSettings

DEADLINE_S = 0.2
EVENTS: list[str] = []

router = APIRouter()


@router.get("/v1/slow")
async def slow() -> dict[str, str]:
    EVENTS.append("slow started")
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        EVENTS.append("slow cancelled")
        raise
    return {"done": "yes"}


@router.get("/v1/quick")
async def quick() -> dict[str, str]:
    return {"done": "yes"}


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = ServiceSettings.model_validate({"request_timeout_s": DEADLINE_S})
    return TestClient(create_service_app("timeout-probe", settings, routers=[router]))


@pytest.fixture(autouse=True)
def no_events() -> None:
    EVENTS.clear()


def test_a_request_past_the_deadline_is_stopped_and_answered_503(client):
    started = time.monotonic()
    answer = client.get("/v1/slow")
    took = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == "request_timeout"
    assert problem["timeout_s"] == DEADLINE_S
    assert answer.headers["x-correlation-id"]
    assert EVENTS == ["slow started", "slow cancelled"]  # the route's work was stopped, not left running
    assert DEADLINE_S <= took < 2  # the deadline, not the route's 5 s


def test_a_request_within_the_deadline_is_answered(client):
    answer = client.get("/v1/quick")
    assert answer.status_code == 200
    assert answer.json() == {"done": "yes"}


def test_the_defaults():
    settings = ServiceSettings()
    assert settings.request_timeout_s == 90.0
    assert "/v1/ops/nightly-run" in UNTIMED_PATHS


# ---- at the ASGI level ----------------------------------------------------------------------------------


def run(app: Any, path: str = "/v1/x", seconds: float = DEADLINE_S) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    asyncio.run(RequestTimeout(app, seconds)(scope, receive, send))
    return sent


def test_an_answer_that_has_begun_is_not_cut():
    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await asyncio.sleep(DEADLINE_S)  # three times the deadline, in all
            await send({"type": "http.response.body", "body": b"page;", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = run(streaming)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]
    assert b"".join(m.get("body", b"") for m in sent) == b"page;page;page;"


def test_an_untimed_path_runs_to_its_end():
    async def long_work(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(2 * DEADLINE_S)
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    (path,) = UNTIMED_PATHS
    assert [m.get("status") for m in run(long_work, path) if m["type"] == "http.response.start"] == [202]
    assert run(long_work)[0]["status"] == 503


def test_the_routes_own_timeout_error_is_not_taken_for_the_deadline():
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise TimeoutError("the route's own wait")

    with pytest.raises(TimeoutError, match="the route's own wait"):
        run(failing, seconds=10)
