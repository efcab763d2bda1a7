"""JWT rules and problem documents of the contract, on a small app built with the shared pieces."""

import time

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from shared.auth import OpsPrincipal, TokenPolicy, UserPrincipal, issue_token
from shared.http_problems import install_problem_handlers
from shared.problems import PROBLEM_CONTENT_TYPE, Problem

SECRET = "unit-test-secret-unit-test-secret-0123"


class Body(BaseModel):
    amount: str = Field(pattern=r"^-?\d+\.\d{2}$")


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.token_policy = TokenPolicy(SECRET)
    install_problem_handlers(app)

    @app.get("/v1/users/{user_id}/things")
    async def things(user_id: str, who: UserPrincipal) -> dict[str, str]:
        return {"user_id": user_id, "by": who.subject}

    @app.post("/v1/users/{user_id}/things")
    async def create(user_id: str, body: Body, who: UserPrincipal) -> dict[str, str]:
        return {"amount": body.amount}

    @app.post("/v1/ops/things")
    async def ops(who: OpsPrincipal) -> dict[str, str]:
        return {"by": who.subject}

    @app.get("/v1/boom")
    async def boom() -> None:
        raise Problem(409, "already_there", "It exists.")

    @app.get("/v1/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(make_app(), raise_server_exceptions=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    body = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert body["status"] == status
    assert body["code"] == code


def test_own_user_allowed(client):
    r = client.get("/v1/users/alice/things", headers=bearer(issue_token(SECRET, "alice")))
    assert r.status_code == 200
    assert r.json() == {"user_id": "alice", "by": "alice"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic YWxpY2U6cHc="},
        bearer("not-a-jwt"),
        bearer(issue_token("another-secret-another-secret-0123", "alice")),
        bearer(issue_token(SECRET, "alice", ttl_s=-10)),
        bearer(jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")),  # no exp
        bearer(jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS512")),
    ],
    ids=["none", "basic", "garbage", "bad-signature", "expired", "no-exp", "wrong-alg"],
)
def test_unauthenticated_is_401(client, headers):
    r = client.get("/v1/users/alice/things", headers=headers)
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_other_user_is_403(client):
    r = client.get("/v1/users/alice/things", headers=bearer(issue_token(SECRET, "mallory")))
    assert_problem(r, 403, "forbidden")


def test_ops_scope_may_act_on_any_user(client):
    token = issue_token(SECRET, "ops-bot", scopes="read ops")
    assert client.get("/v1/users/alice/things", headers=bearer(token)).status_code == 200
    assert client.post("/v1/ops/things", headers=bearer(token)).json() == {"by": "ops-bot"}


def test_ops_route_without_scope_is_403(client):
    r = client.post("/v1/ops/things", headers=bearer(issue_token(SECRET, "alice", scopes="opsish")))
    assert_problem(r, 403, "forbidden")


def test_validation_error_is_422_problem(client):
    r = client.post(
        "/v1/users/alice/things", json={"amount": 12.5}, headers=bearer(issue_token(SECRET, "alice"))
    )
    assert_problem(r, 422, "validation_error")
    assert r.json()["errors"][0]["loc"] == ["body", "amount"]


def test_raised_problem_and_unknown_route(client):
    assert_problem(client.get("/v1/boom"), 409, "already_there")
    assert_problem(client.get("/v1/nowhere"), 404, "not_found")


def test_unexpected_error_is_500_problem_without_internals(client):
    r = client.get("/v1/crash")
    assert_problem(r, 500, "internal_error")
    assert "secret internals" not in r.text


# ---- what a hostile-input review found accepted (issue #17, points 4 and 6) -------------------------
def _signed(claims: dict[str, object], secret: str = SECRET) -> dict[str, str]:
    return bearer(jwt.encode(claims, secret, algorithm="HS256"))


def _soon() -> int:
    return int(time.time()) + 300


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice", "exp": str(_soon())},  # PyJWT alone takes a numeric string
        {"sub": "alice", "exp": 2**63},  # a token for ever
        {"sub": "alice", "exp": int(time.time()) + 2 * 24 * 3600},  # beyond the lifetime allowed
        {"sub": "alice", "exp": True},
        {"sub": "alice", "exp": _soon(), "scope": "ops\tread"},  # was read as "ops" and "read"
        {"sub": "alice", "exp": _soon(), "scope": "ops\nread"},
        {"sub": "alice", "exp": _soon(), "scope": "read  ops"},  # two spaces: an empty scope word
        {"sub": "alice", "exp": _soon(), "scope": ["ops"]},
        {"sub": "ali😀ce", "exp": _soon()},
        {"sub": "alice\r\nX-Injected: 1", "exp": _soon()},
        {"sub": "a" * 129, "exp": _soon()},
        {"sub": "", "exp": _soon()},
        {"sub": "alice\n", "exp": _soon()},  # `$` would have let a trailing newline by
    ],
    ids=[
        "exp-string",
        "exp-2^63",
        "exp-two-days",
        "exp-bool",
        "scope-tab",
        "scope-newline",
        "scope-double-space",
        "scope-list",
        "sub-emoji",
        "sub-crlf",
        "sub-too-long",
        "sub-empty",
        "sub-trailing-newline",
    ],
)
def test_strict_claims_are_401(client, claims):
    r = client.get("/v1/users/alice/things", headers=_signed(claims))
    assert_problem(r, 401, "unauthorized")


def test_scope_is_split_on_single_spaces_only(client):
    tabbed = _signed({"sub": "ops-bot", "exp": _soon(), "scope": "read\tops"})
    assert_problem(client.post("/v1/ops/things", headers=tabbed), 401, "unauthorized")
    spaced = _signed({"sub": "ops-bot", "exp": _soon(), "scope": "read ops"})
    assert client.post("/v1/ops/things", headers=spaced).status_code == 200


def test_ops_token_naming_an_invalid_user_is_422(client):
    ops = bearer(issue_token(SECRET, "ops-bot", scopes="ops"))
    for user in ("ali%F0%9F%98%80ce", "alice%0D%0A", "a" * 129, "-alice"):
        assert_problem(client.get(f"/v1/users/{user}/things", headers=ops), 422, "invalid_user_id")
    # a user token naming another (even invalid) id is 403 first: nothing about the id is told
    mine = bearer(issue_token(SECRET, "alice"))
    assert_problem(client.get("/v1/users/%F0%9F%98%80/things", headers=mine), 403, "forbidden")


def test_issuer_and_audience_when_configured():
    app = make_app()
    policy = TokenPolicy(SECRET, issuer="https://id.budgetfacile.fr", audience="banksync")
    app.state.token_policy = policy
    api = TestClient(app, raise_server_exceptions=False)
    assert api.get("/v1/users/alice/things", headers=bearer(policy.issue("alice"))).status_code == 200
    for claims in (
        {"sub": "alice", "exp": _soon()},
        {"sub": "alice", "exp": _soon(), "iss": "https://evil.example", "aud": "banksync"},
        {"sub": "alice", "exp": _soon(), "iss": "https://id.budgetfacile.fr", "aud": "another-app"},
    ):
        assert_problem(api.get("/v1/users/alice/things", headers=_signed(claims)), 401, "unauthorized")
