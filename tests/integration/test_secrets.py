"""No secret leaks: a real journey, then every log line, every event and every error answer is searched.

The journey, on the whole pipeline with a token key of its own: a user subscribes, links a bank through
the aggregator's webview (a password typed there), selects the accounts, syncs, the bank lines are
imported and categorised; then syncs fail (the bank asks for the password again, then the aggregator
breaks down), and requests are refused (no token, forged or expired tokens, another user's token, no
ops scope, a wrong webhook secret, a forged activation state, bodies that are not JSON).

The secrets: the aggregator's permanent token of the user (read back from what the connector stored,
decrypted with the key, and checked live at the sandbox), every JWT the test sent, BANKSYNC_TOKEN_KEY,
the JWT secret, the webhook secret, the aggregator client secret and the bank password. Where they are
searched: the log file of every process of the stack, every record (key, value, headers) of every
contract topic, every document of the services' databases, and the bodies and headers of the error
answers. Each secret is searched as written, percent-encoded, JSON-escaped and base64-encoded; the search
is first shown to find each of them in a control text, so that an empty result means something.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import secrets
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import jwt
import pytest
from bson import json_util

from harness.devstack import CLIENT_SECRET, WEBHOOK_SECRET, Stack, WebviewForm, new_user, pipeline_stack
from harness.waiting import wait_for
from services.connector.domain.secrets import StateSigner, TokenCipher
from shared.auth import issue_token
from shared.contract.topics import CATEGORIZATIONS, DLQ, TOPICS
from shared.mongo import make_client
from shared.settings import DEV_JWT_SECRET
from tests.kafka_helpers import events_where, read_raw, use_vault

pytestmark = pytest.mark.engines

TOKEN_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
PASSWORD = f"Pw-{secrets.token_urlsafe(12)}"
DATABASE = "secrets"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    # sync tests run inside pytest-asyncio's loop-less context; a worker thread gives a fresh loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# ---- the search ----------------------------------------------------------------------------------------


def forms_of(secret: str) -> dict[str, str]:
    """The ways a secret can be written down: as is, in a URL, in JSON, in base64."""
    raw = secret.encode()
    forms = {
        "as is": secret,
        "percent-encoded": quote(secret, safe=""),
        "form-encoded": quote_plus(secret),
        "JSON-escaped": json.dumps(secret)[1:-1],
        "base64": base64.b64encode(raw).decode().rstrip("="),
        "url-safe base64": base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    distinct: dict[str, str] = {}
    for how, text in forms.items():
        if len(text) >= 8 and text not in distinct.values():
            distinct[how] = text
    return distinct


def find(text: str, secrets_: dict[str, str]) -> list[str]:
    """'<secret name> (<form>)' for each secret found in `text`."""
    return [
        f"{name} ({how})"
        for name, secret in secrets_.items()
        for how, form in forms_of(secret).items()
        if form in text
    ]


class Findings:
    def __init__(self, secrets_: dict[str, str]) -> None:
        self.secrets = secrets_
        self.found: list[str] = []
        self.places = 0

    def scan(self, where: str, text: str) -> None:
        self.places += 1
        for hit in find(text, self.secrets):
            self.found.append(f"{hit} in {where}")


# ---- a user's side of things ---------------------------------------------------------------------------


class Caller:
    """Requests with tokens the test mints itself (so that it knows every JWT sent), error answers kept."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.jwts: list[str] = []
        self.errors: list[httpx.Response] = []

    def token(self, user: str, scopes: str = "", secret: str = DEV_JWT_SECRET, ttl_s: int = 3600) -> str:
        minted = issue_token(secret, user, scopes=scopes, ttl_s=ttl_s)
        self.jwts.append(minted)
        return minted

    def call(
        self, service: str, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        answer = httpx.request(method, self.stack.url(service) + path, headers=headers, timeout=60, **kwargs)
        if answer.status_code >= 400:
            self.errors.append(answer)
        return answer

    def ok(self, service: str, method: str, path: str, token: str, **kwargs: Any) -> Any:
        answer = self.call(service, method, path, token, **kwargs)
        assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json() if answer.content else None


def link_bank(caller: Caller, user: str, token: str) -> dict[str, Any]:
    """Activation, the webview as a browser fills it (the password typed there), the callback."""
    activation = caller.ok("connector", "POST", f"/v1/users/{user}/sync/activate", token)
    with httpx.Client(timeout=30, follow_redirects=False) as browser:
        page = browser.get(activation["connect_url"])
        page.raise_for_status()
        form = WebviewForm()
        form.feed(page.text)
        action = httpx.URL(activation["connect_url"]).join(form.action or activation["connect_url"])
        fields = {**form.fields, "connector_id": form.banks[0], "login": "demo", "password": PASSWORD}
        posted = browser.post(action, data=fields)
        assert posted.status_code == 303, posted.text
        linked = browser.get(posted.headers["location"])
        linked.raise_for_status()
        result: dict[str, Any] = linked.json()
        return result


def sync_and_wait(caller: Caller, user: str, token: str) -> list[dict[str, Any]]:
    run_id = caller.ok("connector", "POST", f"/v1/users/{user}/sync", token)["sync_run_id"]

    def finished() -> list[dict[str, Any]] | None:
        status: list[dict[str, Any]] = caller.ok("connector", "GET", f"/v1/users/{user}/sync/status", token)
        done = status and all(
            s["last_run"] and s["last_run"]["sync_run_id"] == run_id and s["state"] != "syncing"
            for s in status
        )
        return status if done else None

    result: list[dict[str, Any]] = wait_for(finished, timeout=120, every=0.5)
    return result


def journey(stack: Stack, caller: Caller) -> dict[str, Any]:
    user, intruder = new_user("secret"), new_user("intruder")
    token = caller.token(user)
    caller.ok(
        "entitlements", "POST", f"/v1/users/{user}/options/auto_import", caller.token("billing", "billing")
    )
    connection = link_bank(caller, user, token)
    connection_id = connection["connection_id"]
    selected = [a["aggregator_account_id"] for a in connection["accounts"]]
    caller.ok(
        "connector",
        "PUT",
        f"/v1/users/{user}/connections/{connection_id}/accounts",
        token,
        json={"selected": selected},
    )
    assert {s["state"] for s in sync_and_wait(caller, user, token)} == {"ok"}

    # the lines reach the importer and the categorizer, so that their topics and logs hold this user
    async def categorized() -> bool:
        found = await events_where(
            stack.engines.kafka_bootstrap, CATEGORIZATIONS, lambda k, e: e.userid == user
        )
        return bool(found)

    wait_for(lambda: run(categorized()), timeout=180, every=2)
    accounts = caller.ok("importer", "GET", f"/v1/users/{user}/accounts", token)
    assert accounts

    with stack.sandbox() as sandbox:
        # the bank wants the password again: the sync fails with action_needed
        sandbox.post(
            f"/sandbox/connections/{connection_id}/state", json={"state": "wrongpass"}
        ).raise_for_status()
        assert {s["state"] for s in sync_and_wait(caller, user, token)} == {"action_needed"}
        sandbox.post(f"/sandbox/connections/{connection_id}/state", json={"state": None}).raise_for_status()
        # the aggregator breaks down: retried within the budget, then error
        sandbox.post("/sandbox/faults", json={"error_rate": 1.0, "latency_ms": 0, "rate_limit": False})
        try:
            assert {s["state"] for s in sync_and_wait(caller, user, token)} == {"error"}
        finally:
            sandbox.post("/sandbox/faults", json={"error_rate": 0.0, "latency_ms": 0, "rate_limit": False})
    caller.call(
        "connector", "GET", f"/v1/users/{user}/sync/status", token
    )  # the failures, as the user sees them

    # refused requests: each answer is kept and searched
    ops = caller.token(new_user("ops"), scopes="ops")
    caller.ok("connector", "POST", "/v1/ops/nightly-run", ops)
    now = int(time.time())
    expired = jwt.encode(
        {"sub": user, "iat": now - 7200, "exp": now - 3600}, DEV_JWT_SECRET, algorithm="HS256"
    )
    caller.jwts.append(expired)
    forged = caller.token(user, scopes="ops", secret="not-the-real-secret-0123456789abcdef")
    for bad in (None, expired, forged, "not-a-jwt", caller.token(intruder)):
        for service, method, path in (
            ("connector", "GET", f"/v1/users/{user}/connections"),
            ("importer", "GET", f"/v1/users/{user}/accounts"),
            ("connector", "POST", "/v1/ops/nightly-run"),
        ):
            assert caller.call(service, method, path, bad).status_code in (401, 403)
    assert caller.call("importer", "POST", "/v1/ops/replay", token, json={}).status_code == 403
    for body in (b'{"name": ', b'{"name": "\xff'):
        answer = caller.call(
            "importer",
            "POST",
            f"/v1/users/{user}/accounts",
            token,
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 422
    answer = caller.call(
        "connector", "POST", "/v1/webhooks/aggregator", json={}, headers={"X-Webhook-Secret": "wrong"}
    )
    assert answer.status_code == 401
    state, _ = StateSigner("not-our-secret").issue(user)
    answer = caller.call(
        "connector",
        "GET",
        "/v1/callback",
        params={"connection_id": connection_id, "code": "x", "state": state},
    )
    assert answer.status_code == 400
    return {"user": user, "connection_id": connection_id}


# ---- the test ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(engines, log_dir) -> Iterator[Stack]:
    use_vault(engines.mongodb_url, TOKEN_KEY)  # its users' keys are wrapped under its own token key
    # every service shares the token key: it wraps the users' data keys, which they all read
    with pipeline_stack(engines, log_dir, DATABASE, common_env={"BANKSYNC_TOKEN_KEY": TOKEN_KEY}) as running:
        yield running


def aggregator_token(stack: Stack, user: str) -> str:
    async def stored() -> dict[str, Any] | None:
        client = make_client(stack.engines.mongodb_url)
        try:
            found: dict[str, Any] | None = await client[f"{DATABASE}_conn"]["aggregator_users"].find_one(
                {"_id": user}
            )
            return found
        finally:
            await client.close()

    doc = run(stored())
    assert doc is not None, "the connector stored no aggregator user"
    token = TokenCipher(TOKEN_KEY).decrypt(doc["token_enc"], user)
    with stack.sandbox() as sandbox:  # the real, live permanent token
        assert sandbox.get("/2.0/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    return token


def database_dumps(stack: Stack) -> list[tuple[str, str]]:
    async def dump() -> list[tuple[str, str]]:
        client = make_client(stack.engines.mongodb_url)
        out: list[tuple[str, str]] = []
        try:
            for suffix in ("ent", "conn", "imp", "cat"):
                db = client[f"{DATABASE}_{suffix}"]
                for name in await db.list_collection_names():
                    docs = await db[name].find({}).to_list()
                    out.append((f"MongoDB {db.name}.{name}", json_util.dumps(docs)))
        finally:
            await client.close()
        return out

    result: list[tuple[str, str]] = run(dump())
    return result


def test_the_search_finds_a_planted_secret(tmp_path: Path):
    planted = {
        "jwt": issue_token(DEV_JWT_SECRET, "someone"),
        "token key": TOKEN_KEY,
        "password": PASSWORD,
        "webhook secret": WEBHOOK_SECRET,
    }
    for name, secret in planted.items():
        for how, form in forms_of(secret).items():
            control = f'{{"event": "oops", "detail": "...{form}..."}}'
            assert f"{name} ({how})" in find(control, planted), (name, how)
    log = tmp_path / "control.log"
    log.write_text('{"event": "http_request", "authorization": "Bearer ' + planted["jwt"] + '"}\n')
    findings = Findings(planted)
    findings.scan(str(log), log.read_text())
    assert findings.found == [f"jwt (as is) in {log}"]
    assert find('{"event": "fine", "user_id": "someone"}', planted) == []


def test_no_secret_in_logs_events_databases_or_error_answers(stack: Stack):
    caller = Caller(stack)
    journey_ = journey(stack, caller)
    secrets_ = {
        "aggregator token": aggregator_token(stack, journey_["user"]),
        "BANKSYNC_TOKEN_KEY": TOKEN_KEY,
        "BANKSYNC_JWT_SECRET": DEV_JWT_SECRET,
        "webhook secret": WEBHOOK_SECRET,
        "aggregator client secret": CLIENT_SECRET,
        "bank password": PASSWORD,
        **{f"JWT #{i}": token for i, token in enumerate(caller.jwts)},
    }
    findings = Findings(secrets_)

    for answer in caller.errors:
        where = f"the {answer.status_code} answer to {answer.request.method} {answer.request.url.path}"
        findings.scan(where, answer.text)
        findings.scan(f"the headers of {where}", json.dumps(dict(answer.headers)))

    time.sleep(1)  # the last log lines reach the files
    for name, process in stack.processes.items():
        findings.scan(f"the {name} log {process.log_path}", process.log_path.read_text(errors="replace"))

    of_the_user: dict[str, int] = {}
    for topic in TOPICS:
        for key, value, headers, partition, offset in run(
            read_raw(stack.engines.kafka_bootstrap, topic.name)
        ):
            record = f"{key}\n{value.decode(errors='replace')}\n{json.dumps(headers)}"
            findings.scan(f"{topic.name} {partition}:{offset}", record)
            of_the_user[topic.name] = of_the_user.get(topic.name, 0) + (journey_["user"] in record)

    for where, text in database_dumps(stack):
        findings.scan(where, text)

    # the search did cover the journey: its error answers, and its records on every topic but the DLQ's
    assert len(caller.errors) >= 20
    assert all(of_the_user.get(t.name) for t in TOPICS if t.name != DLQ), of_the_user
    assert not findings.found, "\n".join(findings.found[:50])
