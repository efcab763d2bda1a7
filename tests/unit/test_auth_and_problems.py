"""JWT rules and problem documents of the contract, on a small app built with the shared pieces."""

import time

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from shared.auth import OpsPrincipal, UserPrincipal, issue_token
from shared.problems import PROBLEM_CONTENT_TYPE, Problem, install_problem_handlers

SECRET = "unit-test-secret-unit-test-secret-0123"


class Body(BaseModel):
    amount: str = Field(pattern=r"^-?\d+\.\d{2}$")


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.jwt_secret = SECRET
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
