"""Per-caller rate limits on the `/v1/` routes (issue #16): token buckets with an injected clock, their
memory bound, who a caller is, and the 429 problem with `Retry-After` from a service app."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from shared.auth import OpsPrincipal, TokenPolicy, UserPrincipal
from shared.ratelimit import NOTE_EVERY_S, Budget, RateLimits, TokenBuckets, address_of, caller_of
from shared.service import create_service_app
from shared.settings import DEV_JWT_SECRET, ServiceSettings

BUDGET = Budget(per_s=2.0, burst=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def takes(buckets: TokenBuckets, key: str, n: int, budget: Budget = BUDGET) -> list[int | None]:
    """The Retry-After of each of `n` requests at once (None: let through)."""
    return [refusal.retry_after_s if (refusal := buckets.take(key, budget)) else None for _ in range(n)]


# ---- the buckets ---------------------------------------------------------------------------------------


def test_a_new_caller_has_its_burst_then_waits_for_the_rate():
    clock = Clock()
    buckets = TokenBuckets(100, clock)
    assert takes(buckets, "alice", 5) == [None] * 5
    assert takes(buckets, "alice", 3) == [1, 1, 1]  # one request back in 0.5 s: Retry-After 1
    clock.now += 0.5
    assert takes(buckets, "alice", 2) == [None, 1]
    clock.now += 1.0
    assert takes(buckets, "alice", 3) == [None, None, 1]


def test_refusals_take_nothing():
    clock = Clock()
    buckets = TokenBuckets(100, clock)
    takes(buckets, "flood", 5)
    for _ in range(16):  # a caller that keeps sending while empty (steps that floats hold exactly)
        clock.now += 0.0625
        takes(buckets, "flood", 5)
    # 16 x 0.0625 s at 2/s refilled two requests, taken along the way; no debt was left behind
    clock.now += 0.5
    assert takes(buckets, "flood", 2) == [None, 1]


def test_the_bucket_refills_up_to_its_burst_only():
    clock = Clock()
    buckets = TokenBuckets(100, clock)
    takes(buckets, "alice", 5)
    clock.now += 3600
    assert takes(buckets, "alice", 6) == [None] * 5 + [1]


@pytest.mark.parametrize(
    ("per_s", "expected"),
    [(2.0, 1), (1.0, 1), (0.5, 2), (0.25, 4), (0.1, 10), (1000.0, 1)],
)
def test_retry_after_is_the_whole_seconds_until_one_request_is_back(per_s, expected):
    buckets = TokenBuckets(100, Clock())
    budget = Budget(per_s=per_s, burst=1)
    assert buckets.take("bob", budget) is None
    refusal = buckets.take("bob", budget)
    assert refusal is not None
    assert refusal.retry_after_s == expected


def test_retry_after_counts_what_has_refilled_already():
    clock = Clock()
    buckets = TokenBuckets(100, clock)
    budget = Budget(per_s=0.1, burst=1)  # one request every 10 s
    buckets.take("carol", budget)
    clock.now += 7.5
    refusal = buckets.take("carol", budget)
    assert refusal is not None
    assert refusal.retry_after_s == 3  # 2.5 s left, rounded up
    clock.now += 2.5
    assert buckets.take("carol", budget) is None


def test_callers_do_not_share_buckets():
    buckets = TokenBuckets(100, Clock())
    takes(buckets, "flood", 10)
    assert takes(buckets, "alice", 5) == [None] * 5


def test_a_caller_refused_again_and_again_is_noted_once_a_minute():
    clock = Clock()
    buckets = TokenBuckets(100, clock)
    takes(buckets, "flood", 5)
    noted = []
    for _ in range(1500):  # 150 s of a flood at 10 requests a second, 5 times the rate
        clock.now += 0.1
        refusal = buckets.take("flood", BUDGET)
        if refusal is not None and refusal.noted:
            noted.append(clock.now)
    assert len(noted) == 3
    assert noted[1] - noted[0] >= NOTE_EVERY_S


# ---- memory -------------------------------------------------------------------------------------------


def test_at_most_max_buckets_the_least_recently_used_dropped_first():
    clock = Clock()
    buckets = TokenBuckets(3, clock)
    for key in ("a", "b", "c"):
        takes(buckets, key, 5)  # all empty: none would be dropped for being refilled
    takes(buckets, "a", 1)  # a is used again: b is now the least recently used
    takes(buckets, "d", 1)
    assert len(buckets) == 3
    assert "b" not in buckets
    assert {"a", "c", "d"} == {key for key in ("a", "b", "c", "d") if key in buckets}
    # a dropped caller starts over with a full bucket: the price of the bound, paid by the oldest
    assert takes(buckets, "b", 5) == [None] * 5


def test_a_refilled_bucket_is_dropped_when_it_is_the_oldest():
    clock = Clock()
    buckets = TokenBuckets(100, clock)
    takes(buckets, "idle", 1)
    takes(buckets, "busy", 5)
    clock.now += 0.4  # idle has refilled (one request at 2/s: 0.5 s)... not yet
    takes(buckets, "busy", 1)
    assert "idle" in buckets
    clock.now += 0.2
    takes(buckets, "busy", 1)
    assert "idle" not in buckets  # full again: the same as no bucket, so it is gone
    assert "busy" in buckets  # still short of its burst


def test_many_one_off_callers_leave_a_bounded_memory():
    clock = Clock()
    buckets = TokenBuckets(1000, clock)
    for n in range(50_000):
        clock.now += 0.001
        buckets.take(f"address:{n}", BUDGET)
    assert len(buckets) <= 1000


# ---- who the caller is ------------------------------------------------------------------------------


LIMITS = RateLimits(user=Budget(1.0, 3), service=Budget(100.0, 50), max_buckets=1000)
POLICY = TokenPolicy(DEV_JWT_SECRET)


APP = SimpleNamespace(state=SimpleNamespace(token_policy=POLICY))  # what the middleware reads of the app


def scope_of(path: str, token: str | None = None, client: str = "203.0.113.7") -> dict[str, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return {"type": "http", "path": path, "headers": headers, "client": (client, 51000), "app": APP}


def test_a_verified_token_is_its_subject_and_left_for_the_routes():
    token = POLICY.issue("alice")
    scope = scope_of("/v1/users/alice/payees", token)
    assert caller_of(scope, LIMITS) == ("user:alice", LIMITS.user)
    remembered_token, principal = scope["banksync.verified_token"]
    assert remembered_token == token
    assert principal.subject == "alice"


def test_a_forged_token_never_reaches_the_subjects_bucket():
    forged = TokenPolicy("another-secret-entirely-0123456789abcdef").issue("alice")
    expired = POLICY.issue("alice", ttl_s=-10)
    for token in (forged, expired, "not-a-jwt"):
        scope = scope_of("/v1/users/alice/payees", token)
        assert caller_of(scope, LIMITS) == ("address:203.0.113.7", LIMITS.user)
        assert "banksync.verified_token" not in scope


def test_no_token_is_the_address():
    assert caller_of(scope_of("/v1/callback"), LIMITS) == ("address:203.0.113.7", LIMITS.user)


def test_ops_and_billing_tokens_have_the_service_budget_in_buckets_of_their_own():
    for scopes in ("ops", "billing", "billing other"):
        key, budget = caller_of(scope_of("/v1/ops/replay", POLICY.issue("alice", scopes=scopes)), LIMITS)
        assert (key, budget) == ("service:alice", LIMITS.service)  # never the user alice's bucket


def test_webhooks_are_their_source_address_with_the_service_budget():
    scope = scope_of("/v1/webhooks/aggregator", POLICY.issue("alice"), client="198.51.100.4")
    assert caller_of(scope, LIMITS) == ("webhook:198.51.100.4", LIMITS.service)


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same host's /64: the same bucket
        ("::ffff:192.0.2.9", "192.0.2.9"),
        ("192.0.2.9", "192.0.2.9"),
        ("testclient", "testclient"),
    ],
)
def test_addresses(client, expected):
    assert address_of(scope_of("/v1/x", client=client)) == expected


# ---- in a service app ---------------------------------------------------------------------------------

router = APIRouter()


@router.get("/v1/users/{user_id}/things")
async def things(user_id: str, who: UserPrincipal) -> dict[str, str]:
    return {"by": who.subject}


@router.get("/v1/ops/things")
async def ops_things(who: OpsPrincipal) -> dict[str, str]:
    return {"by": who.subject}


@pytest.fixture
def client() -> TestClient:
    settings = ServiceSettings.model_validate(
        {
            "rate_limit_per_s": 0.001,  # nothing refills during a test
            "rate_limit_burst": 3,
            "rate_limit_service_per_s": 0.001,
            "rate_limit_service_burst": 6,
        }
    )
    return TestClient(create_service_app("ratelimit-probe", settings, routers=[router]))


def bearer(user: str, scopes: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {POLICY.issue(user, scopes=scopes)}"}


def refused_count() -> tuple[float, float]:
    """The refusals counted as errors, and as requests answered."""
    errors = REGISTRY.get_sample_value(
        "banksync_errors_total", {"service": "ratelimit-probe", "kind": "http", "code": "rate_limited"}
    )
    requests = REGISTRY.get_sample_value(
        "banksync_http_requests_total",
        {"service": "ratelimit-probe", "method": "GET", "route": "unmatched", "status": "429"},
    )
    return errors or 0.0, requests or 0.0


def test_past_its_burst_a_token_is_429_with_retry_after_and_others_are_served(client):
    before = refused_count()
    alice = bearer("alice")
    assert [client.get("/v1/users/alice/things", headers=alice).status_code for _ in range(3)] == [200] * 3
    answer = client.get("/v1/users/alice/things", headers=alice)
    assert answer.status_code == 429, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) >= 1
    problem = answer.json()
    assert problem["code"] == "rate_limited"
    assert problem["status"] == 429
    assert problem["retry_after"] == int(answer.headers["retry-after"])
    assert refused_count() == (before[0] + 1, before[1] + 1)
    # another token of alice's shares her bucket; bob has his own
    assert client.get("/v1/users/alice/things", headers=bearer("alice")).status_code == 429
    assert client.get("/v1/users/bob/things", headers=bearer("bob")).json() == {"by": "bob"}


def test_health_metrics_and_documents_are_never_limited(client):
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert [client.get(path).status_code for _ in range(10)] == [200] * 10


def test_requests_without_a_valid_token_share_their_address_bucket(client):
    forged = {"Authorization": f"Bearer {TokenPolicy('x' * 40).issue('alice')}"}
    answers = [client.get("/v1/users/alice/things", headers=forged).status_code for _ in range(3)]
    assert answers == [401] * 3
    assert client.get("/v1/users/alice/things").status_code == 429  # no token: the same address
    # alice herself was never touched
    assert client.get("/v1/users/alice/things", headers=bearer("alice")).status_code == 200


def test_an_ops_token_has_the_service_budget(client):
    ops = bearer("ops-bot", "ops")
    answers = [client.get("/v1/ops/things", headers=ops).status_code for _ in range(7)]
    assert answers == [200] * 6 + [429]


def test_the_token_is_verified_once_per_request(client, monkeypatch):
    decoded: list[str] = []
    original = TokenPolicy.decode

    def counting(self: TokenPolicy, token: str) -> Any:
        decoded.append(token)
        return original(self, token)

    monkeypatch.setattr(TokenPolicy, "decode", counting)
    assert client.get("/v1/users/carol/things", headers=bearer("carol")).status_code == 200
    assert len(decoded) == 1
    # a refused request does not reach the route at all
    decoded.clear()
    mallory = bearer("mallory")
    for _ in range(4):
        client.get("/v1/users/mallory/things", headers=mallory)
    assert len(decoded) == 4


def test_the_defaults_are_generous():
    settings = ServiceSettings()
    limits = RateLimits.of_settings(settings)
    assert limits.user == Budget(200.0, 2000)
    assert limits.service == Budget(2000.0, 20000)
    assert limits.max_buckets == 10_000
