"""A limit on the size of request bodies, for every service (an ASGI middleware, `create_service_app`).

A body larger than the limit is answered 413 `payload_too_large` (a problem document) and never reaches
the route: from its `Content-Length` before a byte of it is read, and, for a body without one (chunked),
as soon as what was read goes past the limit (whatever the route made of its interrupted read, the answer
is the 413). Paths under `LARGE_BODY_PREFIXES` (the aggregator's webhooks, whose `CONNECTION_SYNCED`
bodies carry the lines changed since the last push: about 1 MB for a first push of 13 months of 3 accounts)
have their own, larger limit.

Settings (`ServiceSettings`): `MAX_REQUEST_BODY_BYTES` (default 1 MiB) and `MAX_WEBHOOK_BODY_BYTES`
(default 32 MiB).

And a limit on the time a request takes (`RequestTimeout`): a request that has not begun its answer after
`REQUEST_TIMEOUT_S` (default 90 s) is stopped (its task cancelled) and answered 503 `request_timeout`. 503
rather than 504: the service is no gateway, and what it says is what 503 means, "temporarily unable to
answer" (a stalled store, an overloaded replica); the `code` tells it from the other 503s. An answer that
has begun (the CSV export streams its pages, a slow client takes long to read them) is not cut: its status
is sent, and cutting it would only make a truncated file. `UNTIMED_PATHS` last as long as their work.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.http_problems import problem_response
from shared.logging import get_logger
from shared.metrics import ERRORS
from shared.problems import Problem
from shared.settings import ServiceSettings

# bodies that servers outside Budgetfacile send, which the services do not size
LARGE_BODY_PREFIXES = ("/v1/webhooks/",)
# routes whose request lasts as long as their work: the nightly run requests every user's sync before it
# answers (10.7 s for 10,000 users in the bench; stopping it halfway would leave half a night)
UNTIMED_PATHS = frozenset({"/v1/ops/nightly-run"})
log = get_logger(__name__)


@dataclass(frozen=True)
class BodyLimits:
    default: int
    webhooks: int

    @classmethod
    def of_settings(cls, settings: ServiceSettings) -> BodyLimits:
        return cls(settings.max_request_body_bytes, settings.max_webhook_body_bytes)

    def of(self, path: str) -> int:
        return self.webhooks if path.startswith(LARGE_BODY_PREFIXES) else self.default


class _TooLarge(Exception):
    """Raised into the route's read of a body without a `Content-Length` that goes past the limit."""


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "payload_too_large",
        f"The request body is larger than {limit} bytes.",
        title="Content Too Large",
        max_bytes=limit,
    )


class BodySizeLimit:
    """Pure ASGI (it must see `receive`, which a BaseHTTPMiddleware hides)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits, service: str = "") -> None:
        self.app = app
        self.limits = limits
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.of(str(scope.get("path", "")))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(limit, scope, receive, send)
            return
        received = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the route's answer to its interrupted read: the 413 replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await self._refuse(limit, scope, receive, send)

    async def _refuse(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        problem = too_large(limit)
        ERRORS.labels(self.service, "http", problem.code).inc()
        # the connection stays open: the server drops the rest of the body unread, and a client that sends
        # its whole body before it reads the answer (most do) still gets the 413 rather than a reset
        await problem_response(problem)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The largest `Content-Length` declared (None: none, or not a number, which the server refuses)."""
    found = None
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.strip().isdigit():
            found = max(found or 0, int(value))
    return found


def timed_out(seconds: float) -> Problem:
    return Problem(
        503,
        "request_timeout",
        f"The request was not answered within {seconds:g} s and was stopped.",
        timeout_s=seconds,
    )


class RequestTimeout:
    """Pure ASGI: the deadline runs from the request to the start of its answer."""

    def __init__(self, app: ASGIApp, seconds: float, service: str = "") -> None:
        self.app = app
        self.seconds = seconds
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNTIMED_PATHS:
            await self.app(scope, receive, send)
            return
        deadline = asyncio.timeout(self.seconds)
        started = False

        async def starting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, starting_send)
        except TimeoutError:
            if started or not deadline.expired():
                raise  # the route's own TimeoutError: not the deadline's doing
            problem = timed_out(self.seconds)
            route = getattr(scope.get("route"), "path", "unmatched")
            log.warning("request_timeout", method=scope.get("method"), route=route, timeout_s=self.seconds)
            ERRORS.labels(self.service, "http", problem.code).inc()
            await problem_response(problem)(scope, receive, send)
