"""NUL characters and control characters never reach a store: PostgreSQL, under FerretDB, refuses NUL in
any text it stores or compares (a 500 before), so the edge answers 422 (found by the hostile-string items
of test_schemathesis: `GET /v1/ops/erasures/a%00b` was a 500)."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.auth import OpsPrincipal, UserPrincipal, issue_token
from shared.service import create_service_app
from shared.settings import DEV_JWT_SECRET, ServiceSettings

router = APIRouter()


class Note(BaseModel):
    label: str
    tags: list[str] = []


@router.post("/v1/users/{user_id}/notes/{note_id}")
async def put_note(user_id: str, note_id: str, note: Note, _: UserPrincipal) -> dict[str, str]:
    return {"note_id": note_id, "label": note.label}


@router.get("/v1/ops/things/{thing_id}")
async def get_thing(thing_id: str, _: OpsPrincipal, q: str = "") -> dict[str, str]:
    return {"thing_id": thing_id, "q": q}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_service_app("probe", ServiceSettings(), routers=[router]))


def bearer(subject: str, scopes: str = "") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(DEV_JWT_SECRET, subject, scopes=scopes)}"}


def code_of(answer) -> tuple[int, str]:
    return answer.status_code, answer.json().get("code", "")


def test_plain_text_passes(client):
    answer = client.post(
        "/v1/users/alice/notes/n1", json={"label": "Café \\u00e9", "tags": ["a"]}, headers=bearer("alice")
    )
    assert answer.status_code == 200, answer.text
    # a backslash then "u0000" written out is no NUL
    answer = client.post(
        "/v1/users/alice/notes/n1",
        content=b'{"label": "C:\\\\u0000"}',
        headers={**bearer("alice"), "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["label"] == "C:\\u0000"


@pytest.mark.parametrize(
    "body", [{"label": "a\x00b"}, {"label": "x", "tags": ["ok", "\x00"]}, {"label": "x", "\x00": 1}]
)
def test_nul_in_a_json_body_is_422(client, body):
    answer = client.post("/v1/users/alice/notes/n1", json=body, headers=bearer("alice"))
    assert code_of(answer) == (422, "invalid_text")


def test_nul_in_a_query_parameter_is_422(client):
    answer = client.get("/v1/ops/things/t1", params={"q": "a\x00b"}, headers=bearer("ops", "ops"))
    assert code_of(answer) == (422, "invalid_text")


@pytest.mark.parametrize("thing", ["a%00b", "a%0D%0Ab", "a%09b", "x" * 201])
def test_control_characters_or_a_long_path_id_is_422(client, thing):
    answer = client.get(f"/v1/ops/things/{thing}", headers=bearer("ops", "ops"))
    assert code_of(answer) == (422, "invalid_id")


def test_the_refusal_comes_first(client):
    assert code_of(client.get("/v1/ops/things/a%00b")) == (401, "unauthorized")
    assert code_of(client.get("/v1/ops/things/a%00b", headers=bearer("alice"))) == (403, "forbidden")
    answer = client.post("/v1/users/alice/notes/n1", json={"label": "a\x00b"}, headers=bearer("mallory"))
    assert code_of(answer) == (403, "forbidden")
