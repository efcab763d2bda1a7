"""Request bodies have a size limit in every service: 413 `payload_too_large` before the route runs, from
`Content-Length` or while a chunked body is read (issue #17, point 7)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.limits import BodyLimits, BodySizeLimit
from shared.service import create_service_app
from shared.settings import ServiceSettings

LIMIT = 1000
WEBHOOK_LIMIT = 5000
CALLS: list[str] = []


class Note(BaseModel):
    text: str


router = APIRouter()


@router.post("/v1/notes")
async def post_note(body: Note) -> dict[str, int]:
    CALLS.append("notes")
    return {"length": len(body.text)}


@router.post("/v1/webhooks/aggregator")
async def webhook(body: dict[str, Any]) -> dict[str, int]:
    CALLS.append("webhook")
    return {"keys": len(body)}


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = ServiceSettings.model_validate(
        {"max_request_body_bytes": LIMIT, "max_webhook_body_bytes": WEBHOOK_LIMIT}
    )
    return TestClient(create_service_app("probe", settings, routers=[router]))


@pytest.fixture(autouse=True)
def no_calls() -> None:
    CALLS.clear()


def note(size: int) -> bytes:
    """A JSON body of exactly `size` bytes."""
    head, tail = b'{"text": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def chunks(body: bytes, size: int = 100) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def assert_too_large(answer: Any, limit: int = LIMIT) -> None:
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == "payload_too_large"
    assert problem["status"] == 413
    assert problem["type"].endswith("/payload_too_large")
    assert problem["max_bytes"] == limit
    assert {"type", "title", "status", "detail", "code"} <= set(problem)


def test_a_body_at_the_limit_is_read(client):
    answer = client.post("/v1/notes", content=note(LIMIT), headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert CALLS == ["notes"]


def test_a_declared_larger_body_is_refused_before_the_route(client):
    answer = client.post("/v1/notes", content=note(LIMIT + 1), headers={"content-type": "application/json"})
    assert_too_large(answer)
    assert CALLS == []
    assert answer.headers["x-correlation-id"]  # the request context middleware saw it


def test_a_chunked_larger_body_is_refused_while_read(client):
    body = note(3 * LIMIT)
    answer = client.post("/v1/notes", content=chunks(body), headers={"content-type": "application/json"})
    assert_too_large(answer)
    assert CALLS == []
    small = client.post(
        "/v1/notes", content=chunks(note(LIMIT)), headers={"content-type": "application/json"}
    )
    assert small.status_code == 200, small.text


def test_a_body_that_is_not_json_is_still_too_large_first(client):
    answer = client.post(
        "/v1/notes", content=chunks(b"\xff" * 5000), headers={"content-type": "application/json"}
    )
    assert_too_large(answer)


def test_webhooks_have_their_own_larger_limit(client):
    body = b'{"a": "' + b"y" * (WEBHOOK_LIMIT - 20) + b'"}'
    answer = client.post(
        "/v1/webhooks/aggregator", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    assert CALLS == ["webhook"]
    assert_too_large(
        client.post(
            "/v1/webhooks/aggregator",
            content=b'{"a": "' + b"y" * WEBHOOK_LIMIT + b'"}',
            headers={"content-type": "application/json"},
        ),
        WEBHOOK_LIMIT,
    )
    assert_too_large(client.post("/v1/notes", content=body, headers={"content-type": "application/json"}))


def test_the_defaults():
    settings = ServiceSettings()
    assert settings.max_request_body_bytes == 1024 * 1024
    assert settings.max_webhook_body_bytes == 32 * 1024 * 1024
    limits = BodyLimits.of_settings(settings)
    assert limits.of("/v1/users/u/categorize/preview") == 1024 * 1024
    assert limits.of("/v1/webhooks/aggregator") == 32 * 1024 * 1024


def test_the_body_is_not_read_when_content_length_says_too_much():
    """At the ASGI level: the app is not called and not one `receive` happens."""
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append("app")

    async def receive() -> dict[str, Any]:
        called.append("receive")
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/notes",
        "headers": [(b"content-length", b"31457280")],
    }
    asyncio.run(BodySizeLimit(app, BodyLimits(LIMIT, WEBHOOK_LIMIT))(scope, receive, send))
    assert called == []
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413


def test_a_streamed_body_is_counted_and_the_routes_answer_replaced():
    """At the ASGI level: no Content-Length; the app's read stops past the limit, whatever it answers."""
    pieces = [{"type": "http.request", "body": b"z" * 400, "more_body": True} for _ in range(10)]
    read: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            while True:
                message = await receive()
                read.append(len(message["body"]))
                if not message.get("more_body"):
                    break
        except Exception:  # a route that swallows the error and answers something else
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"bad"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, Any]:
        return pieces.pop(0)

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/notes", "headers": []}
    asyncio.run(BodySizeLimit(app, BodyLimits(LIMIT, WEBHOOK_LIMIT))(scope, receive, send))
    assert read == [400, 400]  # the third piece went past 1000 bytes: never handed to the app
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]
    assert b"payload_too_large" in b"".join(m.get("body", b"") for m in sent)
