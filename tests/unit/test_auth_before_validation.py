"""A malformed body never earns an unauthorised caller more than 401/403 (FastAPI parses bodies first)."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.auth import (
    OpsPrincipal,
    TokenPolicy,
    UserPrincipal,
    install_auth_before_validation,
    issue_token,
)
from shared.http_problems import install_problem_handlers

SECRET = "unit-test-secret-0123456789abcdef0123"


class Body(BaseModel):
    name: str


def make_client() -> TestClient:
    router = APIRouter()

    @router.post("/v1/users/{user_id}/things")
    async def post_thing(user_id: str, body: Body, _: UserPrincipal) -> dict[str, str]:
        return {"name": body.name}

    @router.post("/v1/ops/things")
    async def post_ops(body: Body, _: OpsPrincipal) -> dict[str, str]:
        return {"name": body.name}

    @router.post("/v1/public")
    async def post_public(body: Body) -> dict[str, str]:
        return {"name": body.name}

    app = FastAPI()
    app.state.token_policy = TokenPolicy(SECRET)
    install_problem_handlers(app)
    install_auth_before_validation(app)
    app.include_router(router)
    return TestClient(app)


def bearer(user: str, scopes: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, user, scopes=scopes)}"}


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("content", [b'{"name": ', b'{"name": "\xff\xfe'], ids=["not_json", "not_utf8"])
@pytest.mark.parametrize(
    ("path", "auth", "status", "code"),
    [
        ("/v1/users/alice/things", {}, 401, "unauthorized"),
        ("/v1/users/alice/things", {"Authorization": "Bearer nope"}, 401, "unauthorized"),
        ("/v1/users/alice/things", bearer("mallory"), 403, "forbidden"),
        ("/v1/users/alice/things", bearer("alice"), 422, "validation_error"),
        ("/v1/users/alice/things", bearer("ops-bot", "ops"), 422, "validation_error"),
        ("/v1/ops/things", {}, 401, "unauthorized"),
        ("/v1/ops/things", bearer("alice"), 403, "forbidden"),
        ("/v1/ops/things", bearer("ops-bot", "ops"), 422, "validation_error"),
        ("/v1/public", {}, 422, "validation_error"),
    ],
)
def test_malformed_body_is_refused_as_the_caller_deserves(path, auth, status, code, content):
    with make_client() as client:
        answer = client.post(path, content=content, headers={**JSON, **auth})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["code"] == code


def test_invalid_but_well_formed_body_is_refused_too():
    with make_client() as client:
        answer = client.post("/v1/users/alice/things", json={"name": 5}, headers=bearer("mallory"))
        assert answer.status_code == 403
        assert client.post("/v1/users/alice/things", json={"name": "x"}, headers=bearer("alice")).json() == {
            "name": "x"
        }


def test_an_unknown_query_parameter_is_a_problem_not_silence():
    """A misspelt filter is named back, after the auth refusal (which comes first, as for every bad input)."""
    from fastapi.testclient import TestClient

    from services.importer.app import create_app
    from shared.auth import issue_token
    from shared.settings import DEV_JWT_SECRET

    client = TestClient(create_app())
    own = {"Authorization": f"Bearer {issue_token(DEV_JWT_SECRET, 'u1')}"}
    misspelt = client.get("/v1/users/u1/operations", params={"catgory": "energie"}, headers=own)
    assert misspelt.status_code == 422
    assert misspelt.json()["code"] == "unknown_parameter"
    assert "'catgory'" in misspelt.json()["detail"]
    assert "category" in misspelt.json()["detail"]
    assert client.get("/v1/users/u2/operations", params={"catgory": "x"}, headers=own).status_code == 403
    assert client.get("/v1/users/u1/operations", params={"catgory": "x"}).status_code == 401
