"""Per-caller rate limits on the `/v1/` routes of every service (an ASGI middleware, `create_service_app`,
where it runs first: a refusal costs about 0.2 ms, an eighth of a request through the rest).

Each caller has a token bucket: it holds at most `burst` requests and refills at `per_s` a second; a request
takes one, and a caller whose bucket is empty is answered 429 `rate_limited` (a problem document) with
`Retry-After`, the whole seconds until one is back, before any route runs. Who the caller is:

- a bearer token that verifies (the same `TokenPolicy` the routes use): its subject. The token is verified
  here and the routes' `shared.auth.principal` reuses the result (`VERIFIED_TOKEN_KEY`), so it is checked
  once. Only a verified subject names a bucket: keyed on a token's unverified `sub`, anyone could empty
  another user's bucket with forged tokens; keyed on the raw token, anyone could have a new bucket per
  request with made-up ones. A user's tokens share one bucket (the phone and the web app together);
- no token, or one that does not verify (it is then answered 401 by the route): the client's address
  (an IPv6 address by its /64, what one host is given). Behind a proxy, that is the proxy's address unless
  uvicorn is told to trust its `X-Forwarded-For` (`FORWARDED_ALLOW_IPS`);
- the aggregator's webhooks (`/v1/webhooks/`, signed with an HMAC, not a JWT): their source address.

Budgetfacile's own callers, tokens with the `ops` or `billing` scope (the ops tools, the billing backend,
the connector asking entitlements) and the aggregator's webhooks (every user's notices come from its few
addresses), have the `service` budget; everyone else the `user` budget (`RateLimits`).

The buckets live in the replica's memory (`TokenBuckets`): with N replicas behind a load balancer a caller
gets up to N times the rate. At most `max_buckets` are kept, the least recently used dropped first; a bucket
that has refilled is dropped as soon as it is the oldest (it is the same as none). Refused requests take
nothing, so a caller that keeps sending still gets `per_s` requests a second through.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.auth import VERIFIED_TOKEN_KEY, Principal, TokenPolicy
from shared.http_problems import problem_response
from shared.logging import get_logger
from shared.metrics import ERRORS, HTTP_REQUESTS
from shared.problems import Problem
from shared.settings import ServiceSettings

LIMITED_PREFIX = "/v1/"
WEBHOOK_PREFIXES = ("/v1/webhooks/",)
# a caller refused again and again is logged once in this long
NOTE_EVERY_S = 60.0
log = get_logger(__name__)


@dataclass(frozen=True)
class Budget:
    per_s: float
    burst: int


@dataclass(frozen=True)
class RateLimits:
    user: Budget
    service: Budget
    max_buckets: int

    @classmethod
    def of_settings(cls, settings: ServiceSettings) -> RateLimits:
        return cls(
            Budget(settings.rate_limit_per_s, settings.rate_limit_burst),
            Budget(settings.rate_limit_service_per_s, settings.rate_limit_service_burst),
            settings.rate_limit_max_buckets,
        )


@dataclass(frozen=True)
class Refusal:
    retry_after_s: int  # whole seconds until the bucket holds a request again, at least 1
    noted: bool  # the first refusal of this caller in NOTE_EVERY_S: worth a log line


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # when `tokens` was counted
    full_at: float  # when it will have refilled (from then on it is the same as no bucket)
    noted_at: float


class TokenBuckets:
    """Token buckets by caller key, at most `max_buckets` of them (pure: the clock is given)."""

    def __init__(self, max_buckets: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: str) -> bool:
        return key in self._buckets

    def take(self, key: str, budget: Budget) -> Refusal | None:
        """Takes one request from `key`'s bucket: None when there was one, else how long to wait."""
        now = self.clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(budget.burst), now, now, -math.inf)
        else:
            bucket.tokens = min(float(budget.burst), bucket.tokens + (now - bucket.at) * budget.per_s)
            bucket.at = now
        refusal = None
        if bucket.tokens >= 1:
            bucket.tokens -= 1
        else:
            noted = now - bucket.noted_at >= NOTE_EVERY_S
            if noted:
                bucket.noted_at = now
            refusal = Refusal(max(1, math.ceil((1 - bucket.tokens) / budget.per_s)), noted)
        bucket.full_at = now + (budget.burst - bucket.tokens) / budget.per_s
        self._buckets[key] = bucket
        self._drop_old(now)
        return refusal

    def _drop_old(self, now: float) -> None:
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if len(self._buckets) <= self.max_buckets and oldest.full_at > now:
                return
            self._buckets.popitem(last=False)


def rate_limited(retry_after_s: int) -> Problem:
    return Problem(
        429,
        "rate_limited",
        f"Too many requests from this caller: try again in {retry_after_s} s.",
        headers={"Retry-After": str(retry_after_s)},
        retry_after=retry_after_s,
    )


def address_of(scope: Scope) -> str:
    """The client's address as a bucket names it: an IPv6 address by its /64, anything else as it is."""
    client = scope.get("client")
    host = str(client[0]) if client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def verified_principal(scope: Scope) -> Principal | None:
    """The principal of the request's bearer token when it verifies with the app's `TokenPolicy` (left in
    the scope for the routes' auth), else None."""
    app = scope.get("app")
    policy = getattr(getattr(app, "state", None), "token_policy", None)
    if not isinstance(policy, TokenPolicy):
        return None
    scheme, token = get_authorization_scheme_param(Headers(scope=scope).get("authorization"))
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        found = policy.decode(token)
    except Problem:
        return None
    scope[VERIFIED_TOKEN_KEY] = (token, found)
    return found


def caller_of(scope: Scope, limits: RateLimits) -> tuple[str, Budget]:
    """The bucket key of the request's caller and its budget."""
    if str(scope.get("path", "")).startswith(WEBHOOK_PREFIXES):
        return f"webhook:{address_of(scope)}", limits.service
    found = verified_principal(scope)
    if found is None:
        return f"address:{address_of(scope)}", limits.user
    if found.is_ops or found.may_bill:
        return f"service:{found.subject}", limits.service
    return f"user:{found.subject}", limits.user


class RateLimit:
    """Pure ASGI: the refusal is made before the route, its body unread."""

    def __init__(
        self,
        app: ASGIApp,
        limits: RateLimits,
        service: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.limits = limits
        self.service = service
        self.buckets = TokenBuckets(limits.max_buckets, clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(LIMITED_PREFIX):
            await self.app(scope, receive, send)
            return
        key, budget = caller_of(scope, self.limits)
        refusal = self.buckets.take(key, budget)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        if refusal.noted:
            log.warning("rate_limited", caller=key, per_s=budget.per_s, burst=budget.burst)
        problem = rate_limited(refusal.retry_after_s)
        ERRORS.labels(self.service, "http", problem.code).inc()
        # counted as the request context counts the requests that reach it (no route matched yet)
        HTTP_REQUESTS.labels(self.service, scope.get("method", ""), "unmatched", "429").inc()
        await problem_response(problem)(scope, receive, send)
