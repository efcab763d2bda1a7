"""The sandbox over real HTTP: `python -m sandbox` in its own process, driven with httpx like a connector."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from harness.devstack import ServiceProcess, free_port
from harness.waiting import wait_for
from sandbox.banks import bank_by_id
from sandbox.generator import AccountKind, generate_connection
from sandbox.webhooks import sign

TODAY = "2025-03-14"
SECRET = "test-webhook-secret"
REDIRECT = "http://app.example.test/v1/callback?from=sandbox"
CLIENT_ID = "sandbox-test-client"
CLIENT_SECRET = "sandbox-test-client-secret"
CLIENT = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
OTHER_REDIRECT = "http://app.example.test/v1/other"


@dataclass
class Receiver:
    """A webhook receiver; answers, per connection, the statuses queued in `answers` (then 200)."""

    port: int
    answers: dict[int, list[int]] = field(default_factory=dict)
    received: list[tuple[dict[str, str], dict[str, Any], int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def answer(self, body: dict[str, Any]) -> int:
        with self.lock:
            queued = self.answers.get(body["connection"]["id"], [])
            return queued.pop(0) if queued else 200

    def wait_for(self, connection_id: int, count: int, timeout: float = 10):
        """The first `count` webhooks about one connection: (headers, body, status answered)."""

        def mine() -> list[tuple[dict[str, str], dict[str, Any], int]]:
            with self.lock:
                return [item for item in self.received if item[1]["connection"]["id"] == connection_id]

        return wait_for(
            mine,
            timeout,
            f"{count} webhooks for connection {connection_id}",
            0.05,
            until=lambda m: len(m) >= count,
        )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            body = json.loads(raw)
            status = state.answer(body)
            headers = {k.lower(): v for k, v in self.headers.items()}
            # what the signature is checked against: the exact bytes and path received
            headers[":raw"], headers[":path"] = raw.decode(), self.path
            with state.lock:
                state.received.append((headers, body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sandbox(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {key: value for key, value in os.environ.items() if key != "CONNECTOR_URL"}
    env.update(
        AGGREGATOR_SANDBOX_SEED="11",
        AGGREGATOR_SANDBOX_TODAY=TODAY,
        SANDBOX_WEBHOOK_URL=receiver.url,
        SANDBOX_WEBHOOK_SECRET=SECRET,
        SANDBOX_CLIENT_ID=CLIENT_ID,
        SANDBOX_CLIENT_SECRET=CLIENT_SECRET,
        SANDBOX_REDIRECT_URIS=f"{REDIRECT}, {OTHER_REDIRECT}",
    )
    port = free_port()
    log: Path = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    process = ServiceProcess("sandbox", port, env, log).start(wait_ready=True, timeout=30)
    try:
        yield process.url
    finally:
        process.stop()


@pytest.fixture
def http(sandbox: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox, timeout=10) as client:
        yield client


def new_user(http: httpx.Client) -> dict[str, str]:
    answer = http.post("/2.0/auth/init", json=CLIENT)
    assert answer.status_code == 200
    body = answer.json()
    assert body["type"] == "permanent"
    assert isinstance(body["id_user"], int)
    assert body["auth_token"]
    return {"Authorization": f"Bearer {body['auth_token']}"}


def link(
    http: httpx.Client, auth: dict[str, str], login: str = "demo", connector_id: int = 102
) -> dict[str, list[str]]:
    """The webview as a browser goes through it; returns the query of the 303 redirect."""
    code = http.get("/2.0/auth/token/code", headers=auth).json()["code"]
    query = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "state": "st-123", "code": code}
    page = http.get("/2.0/auth/webview/connect", params=query)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    form = {**query, "connector_id": str(connector_id), "login": login, "password": "s3cret-pass"}
    answer = http.post("/2.0/auth/webview/connect", data=form)
    assert answer.status_code == 303, answer.text
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT.split("?")[0]
    return parse_qs(location.query)


def connection_of(http: httpx.Client, auth: dict[str, str], connection_id: int, expand: str = "all_accounts"):
    answer = http.get(f"/2.0/users/me/connections/{connection_id}", params={"expand": expand}, headers=auth)
    assert answer.status_code == 200
    return answer.json()


def activated_checking(http: httpx.Client) -> tuple[dict[str, str], int, int]:
    auth = new_user(http)
    connection_id = int(link(http, auth)["connection_id"][0])
    checking = next(
        a for a in connection_of(http, auth, connection_id)["all_accounts"] if a["type"] == "checking"
    )
    answer = http.put(f"/2.0/users/me/accounts/{checking['id']}", json={"disabled": False}, headers=auth)
    assert answer.status_code == 200
    assert answer.json()["disabled"] is None
    return auth, connection_id, checking["id"]


def fetch_all(
    http: httpx.Client, auth: dict[str, str], account_id: int, **params: Any
) -> list[dict[str, Any]]:
    url: str | None = f"/2.0/users/me/accounts/{account_id}/transactions"
    query: dict[str, Any] | None = {"limit": 1000, **params}
    lines: list[dict[str, Any]] = []
    while url:
        body = http.get(url, params=query, headers=auth).json()
        lines += body["transactions"]
        url, query = (body["_links"]["next"] or {}).get("href"), None
    return lines


def test_auth_init_and_token_checks(http: httpx.Client):
    auth = new_user(http)
    assert http.get("/2.0/users/me/accounts", headers=auth).json() == {"accounts": [], "total": 0}
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}):
        answer = http.get("/2.0/users/me/connections", headers=headers)
        assert answer.status_code == 401
        assert answer.json()["code"] == "invalidToken"
        assert answer.json()["description"]


def test_connectors_are_demo_banks(http: httpx.Client):
    connectors = http.get("/2.0/connectors").json()["connectors"]
    assert len(connectors) >= 3
    assert {"Banque Démo Société", "Banque Démo Paribas", "Banque Démo Mutuel"} <= {
        c["name"] for c in connectors
    }
    for connector in connectors:
        assert {"id", "uuid", "name", "months_to_fetch", "sync_periodicity"} <= connector.keys()
        assert connector["months_to_fetch"] == 13


def test_webview_links_a_bank_and_redirects_with_connection_code_state(http: httpx.Client):
    auth = new_user(http)
    code = http.get("/2.0/auth/token/code", headers=auth).json()["code"]
    page = http.get(
        "/2.0/auth/webview/connect",
        params={"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "state": "abc", "code": code},
    ).text
    for name in ("connector_id", "login", "password"):
        assert f'name="{name}"' in page
    assert re.search(r'type="hidden" name="state" value="abc"', page)
    assert re.search(r'type="hidden" name="code" value="' + re.escape(code), page)
    assert "Banque Démo Paribas" in page

    refused = http.post(
        "/2.0/auth/webview/connect",
        data={
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT,
            "state": "abc",
            "code": code,
            "login": "demo",
            "password": "hunter2-secret",
        },
    )
    assert refused.status_code == 400
    assert "hunter2-secret" not in refused.text

    redirect = link(http, auth)
    assert redirect["state"] == ["st-123"]
    assert redirect["from"] == ["sandbox"]
    assert redirect["code"][0]
    connection_id = int(redirect["connection_id"][0])
    exchanged = http.post(
        "/2.0/auth/token/access", json={"code": redirect["code"][0], "redirect_uri": REDIRECT, **CLIENT}
    ).json()
    assert f"Bearer {exchanged['access_token']}" == auth["Authorization"]

    connection = connection_of(http, auth, connection_id, expand="accounts,all_accounts")
    assert connection["state"] is None
    assert connection["error"] is None
    assert connection["id_connector"] == 102
    assert connection["last_update"]
    assert connection["created"]
    assert connection["active"] is True
    assert (
        connection["accounts"] == []
    )  # Powens: `accounts` lists enabled ones only, and new ones start disabled
    assert sorted(a["type"] for a in connection["all_accounts"]) == ["card", "checking", "savings"]
    checking = next(a for a in connection["all_accounts"] if a["type"] == "checking")
    assert checking["disabled"]
    assert checking["currency"]["id"] == "EUR"
    assert checking["iban"].startswith("FR76")
    assert isinstance(checking["balance"], float)
    assert round(checking["balance"], 2) == checking["balance"]
    listed = http.get("/2.0/users/me/connections", params={"expand": "accounts"}, headers=auth).json()
    assert [c["id"] for c in listed["connections"]] == [connection_id]
    assert http.get("/2.0/users/me/accounts", headers=auth).json()["total"] == 0
    assert http.get("/2.0/users/me/accounts", params={"all": 1}, headers=auth).json()["total"] == 3


def test_login_wrongpass_gives_the_error_state(http: httpx.Client):
    auth = new_user(http)
    connection_id = int(link(http, auth, login="wrongpass")["connection_id"][0])
    connection = connection_of(http, auth, connection_id)
    assert connection["state"] == connection["error"] == "wrongpass"
    assert connection["error_message"]
    assert connection["all_accounts"] == []
    sync = http.post(f"/2.0/users/me/connections/{connection_id}", headers=auth)
    assert sync.status_code == 400
    assert sync.json()["code"] == "wrongpass"
    # the state can be cleared from the control API; the next sync then reaches the accounts
    http.post(f"/sandbox/connections/{connection_id}/state", json={"state": None}).raise_for_status()
    assert http.post(f"/2.0/users/me/connections/{connection_id}", headers=auth).status_code == 200
    assert len(connection_of(http, auth, connection_id)["all_accounts"]) == 3
    http.post(f"/sandbox/connections/{connection_id}/state", json={"state": "SCARequired"}).raise_for_status()
    assert (
        http.post(f"/2.0/users/me/connections/{connection_id}", headers=auth).json()["code"] == "SCARequired"
    )


def test_activation_and_paging(http: httpx.Client):
    auth, _connection_id, account_id = activated_checking(http)
    first = http.get(f"/2.0/users/me/accounts/{account_id}/transactions", headers=auth).json()
    total = first["total"]
    assert 800 <= total <= 1600
    assert len(first["transactions"]) == 50
    assert "2025-03-10" <= first["last_date"] <= TODAY  # history ends on the pinned day
    assert first["result_max_date"] == first["last_date"]
    assert first["first_date"] <= first["result_min_date"] <= first["result_max_date"]
    assert "offset=50" in first["_links"]["next"]["href"]
    assert http.get("/2.0/users/me/accounts", headers=auth).json()["total"] == 1

    lines = fetch_all(http, auth, account_id, limit=100)
    assert len(lines) == len({tx["id"] for tx in lines}) == total
    assert [tx["date"] for tx in lines] == sorted((tx["date"] for tx in lines), reverse=True)
    last = http.get(
        f"/2.0/users/me/accounts/{account_id}/transactions",
        params={"limit": 100, "offset": total - 10},
        headers=auth,
    ).json()
    assert len(last["transactions"]) == 10
    assert last["_links"]["next"] is None
    capped = http.get(
        f"/2.0/users/me/accounts/{account_id}/transactions", params={"limit": 5000}, headers=auth
    )
    assert len(capped.json()["transactions"]) == min(total, 1000)
    assert any(tx["coming"] for tx in lines)
    powens_fields = {
        "id", "id_account", "date", "rdate", "vdate", "bdate", "value", "gross_value", "original_value",
        "original_currency", "original_wording", "simplified_wording", "wording", "type", "coming",
        "active", "deleted", "last_update", "date_scraped", "card", "counterparty",
    }  # fmt: skip
    assert all(powens_fields <= tx.keys() for tx in lines)

    window = fetch_all(http, auth, account_id, min_date="2025-01-01", max_date="2025-01-31")
    assert window
    assert all("2025-01-01" <= tx["date"] <= "2025-01-31" for tx in window)
    everything = http.get("/2.0/users/me/transactions", params={"limit": 1}, headers=auth).json()
    assert everything["total"] == total  # only the enabled account's lines
    bad = http.get(
        f"/2.0/users/me/accounts/{account_id}/transactions", params={"min_date": "x"}, headers=auth
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalidValue"
    other = new_user(http)
    assert http.get(f"/2.0/users/me/accounts/{account_id}/transactions", headers=other).status_code == 404


def test_last_update_shows_appended_booked_and_deleted_lines(http: httpx.Client):
    auth, _connection_id, account_id = activated_checking(http)
    cursor = max(tx["last_update"] for tx in fetch_all(http, auth, account_id))
    changed = http.get(
        f"/2.0/users/me/accounts/{account_id}/transactions", params={"last_update": cursor}, headers=auth
    ).json()
    assert changed["total"] == 0

    appended = http.post(
        f"/sandbox/accounts/{account_id}/transactions",
        json=[
            {
                "date": TODAY,
                "value": -12.5,
                "original_wording": "CB BOULANGERIE NOUVELLE 14/03/25",
                "coming": True,
            },
            {"date": TODAY, "value": "-42.10", "original_wording": "CB SUPER U 14/03/25", "coming": True},
            {"date": TODAY, "value": 150, "original_wording": "VIR SEPA DE CLAIRE DURAND / CADEAU"},
        ],
    )
    assert appended.status_code == 201
    in_place_id, new_id_line, transfer_id = appended.json()["ids"]
    lines = fetch_all(http, auth, account_id, last_update=cursor)
    assert {tx["id"] for tx in lines} == {in_place_id, new_id_line, transfer_id}
    values = {tx["id"]: tx["value"] for tx in lines}
    assert values == {in_place_id: -12.5, new_id_line: -42.1, transfer_id: 150.0}
    cursor = max(tx["last_update"] for tx in lines)

    booked = http.post(
        f"/sandbox/transactions/{in_place_id}/book", json={"new_id": False, "date": "2025-03-17"}
    )
    assert booked.json()["transaction"]["id"] == in_place_id
    assert booked.json()["deleted"] is None
    replaced = http.post(
        f"/sandbox/transactions/{new_id_line}/book",
        json={"new_id": True, "wording": "CB SUPER U 14/03/25 NANTES"},
    ).json()
    replacement_id = replaced["transaction"]["id"]
    assert replacement_id != new_id_line
    assert replaced["deleted"]["id"] == new_id_line

    changed = {tx["id"]: tx for tx in fetch_all(http, auth, account_id, last_update=cursor)}
    assert set(changed) == {in_place_id, new_id_line, replacement_id}
    assert changed[in_place_id]["coming"] is False
    assert changed[in_place_id]["date"] == "2025-03-17"
    assert changed[new_id_line]["deleted"] is not None
    assert changed[replacement_id]["coming"] is False
    assert changed[replacement_id]["deleted"] is None
    assert changed[replacement_id]["original_wording"] == "CB SUPER U 14/03/25 NANTES"
    visible = {tx["id"] for tx in fetch_all(http, auth, account_id)}
    assert new_id_line not in visible
    assert {in_place_id, replacement_id, transfer_id} <= visible
    with_deleted = {tx["id"] for tx in fetch_all(http, auth, account_id, deleted=1)}
    assert new_id_line in with_deleted
    truth = http.get(f"/sandbox/accounts/{account_id}/transactions/all").json()
    assert truth["total"] == len(visible) + 1

    http.post(f"/sandbox/transactions/{transfer_id}/delete").raise_for_status()
    gone = fetch_all(http, auth, account_id, last_update=max(tx["last_update"] for tx in changed.values()))
    assert [(tx["id"], tx["deleted"] is not None) for tx in gone] == [(transfer_id, True)]
    assert http.post(f"/sandbox/transactions/{in_place_id}/book", json={}).status_code == 409


def test_sync_sends_connection_synced_until_acknowledged(http: httpx.Client, receiver: Receiver):
    auth, connection_id, account_id = activated_checking(http)
    ((_headers, linked, _status),) = receiver.wait_for(connection_id, 1)  # after the webview's first sync
    assert linked["connection"]["accounts"] == []  # nothing was enabled then
    receiver.answers[connection_id] = [500]
    sync = http.post(f"/2.0/users/me/connections/{connection_id}", headers=auth)
    assert sync.status_code == 200
    assert sync.json()["state"] is None
    headers, body, status = receiver.wait_for(connection_id, 2)[1]
    assert status == 500
    assert "x-webhook-secret" not in headers  # no secret travels in a header
    date = headers["bi-signature-date"]
    assert abs(datetime.fromisoformat(date) - datetime.now(UTC)) < timedelta(minutes=1)  # the wall clock
    assert headers["bi-signature"] == sign(SECRET, "POST", "/hooks", date, headers[":raw"].encode())
    assert headers[":path"] == "/hooks"
    assert headers["x-sandbox-webhook-event"] == "CONNECTION_SYNCED"
    assert body["connection"]["id"] == connection_id
    assert body["user"]["id"]
    (account,) = body["connection"]["accounts"]
    assert account["id"] == account_id
    assert len(account["transactions"]) > 800

    http.post(f"/2.0/users/me/connections/{connection_id}", headers=auth).raise_for_status()
    _headers, body, status = receiver.wait_for(connection_id, 3)[2]
    assert status == 200
    assert len(body["connection"]["accounts"][0]["transactions"]) == len(account["transactions"])
    # the acknowledgement is recorded when the webhook call returns, after the receiver saw it
    wait_for(lambda: connection_of(http, auth, connection_id)["last_push"], 10, "the acknowledgement", 0.05)
    http.post(f"/2.0/users/me/connections/{connection_id}", headers=auth).raise_for_status()
    _headers, body, _status = receiver.wait_for(connection_id, 4)[3]
    assert body["connection"]["accounts"][0]["transactions"] == []  # acknowledged: not sent again
    assert connection_of(http, auth, connection_id)["last_push"] is not None


def test_faults_5xx_latency_and_rate_limit(http: httpx.Client):
    auth = new_user(http)
    try:
        http.post("/sandbox/faults", json={"error_rate": 1.0}).raise_for_status()
        statuses = {http.get("/2.0/connectors").status_code for _ in range(10)}
        assert statuses <= {500, 502, 503}
        assert statuses
        assert http.get("/sandbox/faults").json()["injected"]["5xx"] >= 10  # the control API is never faulted
        webview = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT}
        assert http.get("/2.0/auth/webview/connect", params=webview).status_code == 200

        http.post("/sandbox/faults", json={"error_rate": 0.0}).raise_for_status()
        assert http.get("/2.0/users/me/connections", headers=auth).status_code == 200

        http.post("/sandbox/faults", json={"rate_limit": True, "retry_after_s": 2}).raise_for_status()
        limited = http.get("/2.0/connectors")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "2"

        http.post("/sandbox/faults", json={"fail_next": 2}).raise_for_status()
        assert [http.get("/2.0/connectors").status_code for _ in range(3)] == [503, 503, 200]

        http.post("/sandbox/faults", json={"latency_ms": 300}).raise_for_status()
        started = time.monotonic()
        assert http.get("/2.0/connectors").status_code == 200
        assert time.monotonic() - started >= 0.3
    finally:
        http.post("/sandbox/faults", json={}).raise_for_status()


def test_delete_connection(http: httpx.Client):
    auth, connection_id, account_id = activated_checking(http)
    assert http.delete(f"/2.0/users/me/connections/{connection_id}", headers=auth).status_code == 204
    assert http.get(f"/2.0/users/me/connections/{connection_id}", headers=auth).status_code == 404
    assert http.get(f"/2.0/users/me/accounts/{account_id}", headers=auth).json()["code"] == "accountNotFound"


def test_history_is_deterministic_across_connections_of_the_same_order(http: httpx.Client):
    """Same seed, same connection id, same history: the control API's truth matches a fresh generation."""
    _auth, connection_id, account_id = activated_checking(http)
    bank = bank_by_id(102)
    assert bank is not None
    expected = generate_connection(11, bank, str(connection_id), date.fromisoformat(TODAY))[
        AccountKind.CHECKING
    ]
    truth = http.get(f"/sandbox/accounts/{account_id}/transactions/all").json()["transactions"]
    assert [(tx["date"], round(tx["value"] * 100), tx["original_wording"]) for tx in truth] == [
        (line.date.isoformat(), line.value_cents, line.original_wording) for line in expected.lines
    ]


def test_link_users_in_bulk_as_the_webview_and_selection_would(http: httpx.Client):
    """Load tests' set-up: users already linked, the chosen kinds of accounts enabled, each user seeing
    only its own connection, and the same per-user listings as a webview link gives."""
    made = http.post("/sandbox/users", json={"connector_ids": [102, 103, 102], "enable": ["savings", "card"]})
    assert made.status_code == 201, made.text
    users = made.json()["users"]
    assert [u["connection"]["id_connector"] for u in users] == [102, 103, 102]
    assert len({u["token"] for u in users}) == 3
    for user in users:
        auth = {"Authorization": f"Bearer {user['token']}"}
        accounts = user["connection"]["all_accounts"]
        enabled = {a["id"] for a in accounts if a["disabled"] is None}
        assert {a["type"] for a in accounts if a["id"] in enabled} == {"savings", "card"}
        connections = http.get("/2.0/users/me/connections", headers=auth).json()["connections"]
        assert [c["id"] for c in connections] == [user["connection"]["id"]]
        listed = http.get("/2.0/users/me/accounts", headers=auth).json()["accounts"]
        assert {a["id"] for a in listed} == enabled
        synced = http.post(f"/2.0/users/me/connections/{user['connection']['id']}", headers=auth)
        assert synced.status_code == 200, synced.text
        for account_id in enabled:
            # the whole history for a first sync; nothing new for a sync following changes since an hour
            assert fetch_all(http, auth, account_id)
            hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
            assert fetch_all(http, auth, account_id, last_update=hour_ago) == []
    assert http.post("/sandbox/users", json={"connector_ids": []}).status_code == 422
    assert http.post("/sandbox/users", json={"connector_ids": [999]}).json()["code"] == "connectorNotFound"


def test_closed_accounts_stay_listed_and_a_lapsed_consent_needs_the_reconnect_webview(http: httpx.Client):
    """Runs last: it moves the sandbox's clock 181 days forward (every consent of the module lapses)."""
    auth, connection_id, checking_id = activated_checking(http)
    savings = next(
        a for a in connection_of(http, auth, connection_id)["all_accounts"] if a["type"] == "savings"
    )
    http.post(f"/sandbox/accounts/{savings['id']}/delete").raise_for_status()
    listed = {a["id"]: a for a in connection_of(http, auth, connection_id)["all_accounts"]}
    assert listed[savings["id"]]["deleted"] is not None
    assert listed[checking_id]["deleted"] is None
    enabled = connection_of(http, auth, connection_id, expand="accounts")["accounts"]
    assert [a["id"] for a in enabled] == [checking_id]

    expire = datetime.fromisoformat(connection_of(http, auth, connection_id)["expire"])
    assert http.post(f"/2.0/users/me/connections/{connection_id}", headers=auth).status_code == 200
    moved = http.post("/sandbox/clock", json={"advance_days": 181}).json()
    assert moved["offset_days"] == 181
    assert datetime.fromisoformat(moved["now"]) > expire
    lapsed = http.post(f"/2.0/users/me/connections/{connection_id}", headers=auth)
    assert lapsed.status_code == 400
    assert lapsed.json()["code"] == "SCARequired"
    assert http.post("/sandbox/clock", json={"advance_days": -1}).status_code == 422

    code = http.get("/2.0/auth/token/code", headers=auth).json()["code"]
    query = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "state": "st-re",
        "code": code,
        "connection_id": str(connection_id),
    }
    assert http.get("/2.0/auth/webview/reconnect", params=query).status_code == 200
    form = {**query, "connector_id": "102", "login": "demo", "password": "s3cret-pass"}
    answer = http.post("/2.0/auth/webview/reconnect", data=form)
    assert answer.status_code == 303
    back = parse_qs(urlsplit(answer.headers["location"]).query)
    assert back["connection_id"] == [str(connection_id)]
    assert back["state"] == ["st-re"]
    renewed = connection_of(http, auth, connection_id)
    assert renewed["state"] is None
    assert datetime.fromisoformat(renewed["expire"]) > datetime.fromisoformat(moved["now"])
    assert http.post(f"/2.0/users/me/connections/{connection_id}", headers=auth).status_code == 200


def test_auth_init_needs_the_client_credentials_for_a_permanent_token(http: httpx.Client):
    new_user(http)  # with them: permanent
    temporary = http.post("/2.0/auth/init")
    assert temporary.status_code == 200
    assert temporary.json()["type"] == "temporary"
    assert temporary.json()["expires_in"] == 1800
    for wrong in (
        {**CLIENT, "client_secret": "wrong"},
        {"client_id": CLIENT_ID},
        {**CLIENT, "client_id": "x"},
    ):
        refused = http.post("/2.0/auth/init", json=wrong)
        assert refused.status_code == 400
        assert refused.json()["code"] == "invalidClient"
        assert CLIENT_SECRET not in refused.text


def test_webview_never_redirects_to_an_unregistered_uri(http: httpx.Client):
    """The review's attack: a webview link naming the attacker's site gets an error page, not a 303 to
    `https://evil.example/steal?connection_id=...&code=...`; so does a link without the client, or another
    client's, or a registered URI with something added."""
    auth = new_user(http)
    code = http.get("/2.0/auth/token/code", headers=auth).json()["code"]
    good = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "state": "st", "code": code}
    bad_links = [
        {**good, "redirect_uri": "https://evil.example/steal"},
        {**good, "redirect_uri": REDIRECT + "&evil=1"},
        {**good, "redirect_uri": REDIRECT.split("?")[0]},
        {**good, "redirect_uri": ""},
        {key: value for key, value in good.items() if key != "redirect_uri"},
        {key: value for key, value in good.items() if key != "client_id"},
        {**good, "client_id": "someone-else"},
    ]
    for flow in ("connect", "reconnect"):
        for query in bad_links:
            shown = http.get(f"/2.0/auth/webview/{flow}", params=query)
            assert shown.status_code == 400, (flow, query)
            assert "text/html" in shown.headers["content-type"]
            assert "location" not in shown.headers
            form = {**query, "connector_id": "102", "login": "demo", "password": "s3cret-pass"}
            posted = http.post(f"/2.0/auth/webview/{flow}", data=form)
            assert posted.status_code == 400, (flow, query)
            assert "location" not in posted.headers
            assert "evil.example" not in posted.headers.get("location", "")
    # nothing was linked by those posts; the registered URIs still work
    assert http.get("/2.0/users/me/connections", headers=auth).json()["total"] == 0
    assert http.get("/2.0/auth/webview/connect", params=good).status_code == 200
    assert (
        http.get("/2.0/auth/webview/connect", params={**good, "redirect_uri": OTHER_REDIRECT}).status_code
        == 200
    )


def test_a_code_is_exchanged_once_with_the_client_credentials_for_its_redirect_uri(http: httpx.Client):
    auth = new_user(http)
    code = link(http, auth)["code"][0]
    exchange = {"code": code, "redirect_uri": REDIRECT, "grant_type": "authorization_code"}
    # without the client, or with a wrong secret: refused, and the code is still good
    for credentials in (
        {},
        {"client_id": CLIENT_ID},
        {**CLIENT, "client_secret": "wrong"},
        {**CLIENT, "client_id": "x"},
    ):
        refused = http.post("/2.0/auth/token/access", json={**exchange, **credentials})
        assert refused.status_code == 400, credentials
        assert refused.json()["code"] == "invalidClient"
        assert "access_token" not in refused.json()
    assert (
        http.post("/2.0/auth/token/access", json={**exchange, **CLIENT, "grant_type": "password"}).json()[
            "code"
        ]
        == "invalidValue"
    )
    no_code = http.post("/2.0/auth/token/access", json={"redirect_uri": REDIRECT, **CLIENT})
    assert (no_code.status_code, no_code.json()["code"]) == (400, "invalidValue")
    assert CLIENT_SECRET not in no_code.text
    first = http.post("/2.0/auth/token/access", json={**exchange, **CLIENT})
    assert first.status_code == 200
    assert f"Bearer {first.json()['access_token']}" == auth["Authorization"]
    assert first.json()["token_type"] == "Bearer"
    # a second time: refused (single use)
    again = http.post("/2.0/auth/token/access", json={**exchange, **CLIENT})
    assert again.status_code == 400
    assert again.json()["code"] == "invalidCode"
    assert "access_token" not in again.json()

    # a code exchanged for another redirect URI than its own: refused, and spent
    other = link(http, auth)["code"][0]
    wrong_uri = http.post(
        "/2.0/auth/token/access", json={"code": other, "redirect_uri": OTHER_REDIRECT, **CLIENT}
    )
    assert wrong_uri.status_code == 400
    assert wrong_uri.json()["code"] == "invalidRedirectUri"
    late = http.post("/2.0/auth/token/access", json={"code": other, "redirect_uri": REDIRECT, **CLIENT})
    assert late.json()["code"] == "invalidCode"
    # the webview's entry code (GET /auth/token/code) is not an authorization code
    entry = http.get("/2.0/auth/token/code", headers=auth).json()["code"]
    entry_exchange = http.post(
        "/2.0/auth/token/access", json={"code": entry, "redirect_uri": REDIRECT, **CLIENT}
    )
    assert entry_exchange.json()["code"] == "invalidCode"
