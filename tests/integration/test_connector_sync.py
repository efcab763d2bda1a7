"""Connector over real HTTP (sandbox) and real Kafka: link, select, sync, change detection, failures."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from harness.devstack import WEBHOOK_SECRET, Stack, connector_stack, fill_webview, new_user
from harness.waiting import wait_for_async
from sandbox.webhooks import sign, signed_headers
from services.connector.adapters.mongo import ConnectorRepository
from services.connector.domain.secrets import TokenCipher
from shared.contract.topics import CONNECTIONS, SYNC_REQUESTS, SYNC_STATUS, TRANSACTIONS_RAW
from shared.mongo import make_client
from shared.settings import DEV_TOKEN_KEY
from tests.kafka_helpers import events_where

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def stack(engines, log_dir) -> Iterator[Stack]:
    with connector_stack(engines, log_dir, "connsync") as running:
        yield running


async def raw_lines(stack: Stack, user: str) -> dict[str, list[dict]]:
    """Aggregator lines published for `user`, per `<user>:<account>` key, in order."""
    found = await events_where(
        stack.engines.kafka_bootstrap,
        TRANSACTIONS_RAW,
        lambda key, event: event.userid == user and event.name == "transaction.observed",
    )
    by_key: dict[str, list[dict]] = {}
    for key, event in found:
        by_key.setdefault(key, []).append({**event.data["transaction"], "_event_id": event.id})
    return by_key


def sandbox_truth(stack: Stack, account_id: str) -> list[dict]:
    with stack.sandbox() as sandbox:
        answer = sandbox.get(f"/sandbox/accounts/{account_id}/transactions/all")
        answer.raise_for_status()
        body = answer.json()
        return body["transactions"] if isinstance(body, dict) else body


@pytest.fixture
def linked_user(stack) -> tuple[str, dict, list[str]]:
    user = new_user()
    stack.entitle(user)
    connection = stack.link_bank(user)
    accounts = stack.select_all(user, connection)
    return user, connection, accounts


async def test_first_sync_publishes_exactly_the_sandbox_lines_then_only_changes(stack, linked_user):
    user, _connection, accounts = linked_user
    assert len(accounts) >= 3
    run = stack.sync(user)
    status = stack.wait_run(user, run)
    assert {s["state"] for s in status} == {"ok"}

    published = await raw_lines(stack, user)
    assert set(published) == {f"{user}:{a}" for a in accounts}
    for account in accounts:
        truth = sandbox_truth(stack, account)
        live = [t for t in truth if not t.get("deleted")]
        lines = published[f"{user}:{account}"]
        assert sorted(str(t["id"]) for t in lines) == sorted(str(t["id"]) for t in live)
        assert len({t["_event_id"] for t in lines}) == len(lines)
    counts = {s["aggregator_account_id"]: s["last_run"]["transactions"] for s in status}
    assert sum(counts.values()) == sum(len(v) for v in published.values())

    # nothing changed at the bank: the next sync publishes nothing
    second = stack.sync(user)
    assert second != run
    again = stack.wait_run(user, second)
    assert all(s["last_run"]["transactions"] == 0 for s in again)
    assert await raw_lines(stack, user) == published

    # the bank adds a line and books a pending one (in place and with a new id): only those arrive
    checking = accounts[0]
    with stack.sandbox() as sandbox:
        added = sandbox.post(
            f"/sandbox/accounts/{checking}/transactions",
            json=[
                {
                    "date": "2026-11-20",
                    "value": -23.45,
                    "original_wording": "CB BOULANGERIE DU COIN 20/11",
                    "coming": True,
                }
            ],
        )
        added.raise_for_status()
        new_id = str(added.json()["ids"][0])
        booked = sandbox.post(f"/sandbox/transactions/{new_id}/book", json={"new_id": False})
        booked.raise_for_status()
    third = stack.sync(user)
    after = {s["aggregator_account_id"]: s for s in stack.wait_run(user, third)}
    assert after[checking]["last_run"]["transactions"] >= 1
    now_published = await raw_lines(stack, user)
    newer = now_published[f"{user}:{checking}"][len(published[f"{user}:{checking}"]) :]
    assert [str(t["id"]) for t in newer] == [new_id]
    assert newer[-1]["coming"] is False


async def test_sync_status_events_and_keys(stack, linked_user):
    user, _, accounts = linked_user
    run = stack.sync(user)
    stack.wait_run(user, run)
    status_events = await events_where(
        stack.engines.kafka_bootstrap, SYNC_STATUS, lambda key, event: event.userid == user
    )
    names = Counter(event.name for _, event in status_events)
    assert names["sync.started"] == len(accounts)
    assert names["sync.succeeded"] == len(accounts)
    assert all(key == f"{user}:{event.data['aggregator_account_id']}" for key, event in status_events)
    assert all(event.correlationid for _, event in status_events)


@pytest.mark.parametrize(
    ("bank_state", "expected"),
    [("wrongpass", "action_needed"), ("SCARequired", "action_needed"), ("websiteUnavailable", "error")],
)
async def test_failure_states_keep_the_cursor(stack, linked_user, bank_state, expected):
    user, connection, _ = linked_user
    first = stack.sync(user)
    stack.wait_run(user, first)
    before = await raw_lines(stack, user)
    with stack.sandbox() as sandbox:
        sandbox.post(
            f"/sandbox/connections/{connection['connection_id']}/state", json={"state": bank_state}
        ).raise_for_status()
    failed = stack.sync(user)
    status = stack.wait_run(user, failed, timeout=60)
    assert {s["state"] for s in status} == {expected}
    assert all(s["error"]["code"] == bank_state and s["error"]["message"] for s in status)
    # the user acts; the next sync succeeds and still finds what changed since the last GOOD sync
    checking = connection["accounts"][0]["aggregator_account_id"]
    with stack.sandbox() as sandbox:
        sandbox.post(
            f"/sandbox/connections/{connection['connection_id']}/state", json={"state": None}
        ).raise_for_status()
        sandbox.post(
            f"/sandbox/accounts/{checking}/transactions",
            json=[
                {
                    "date": "2026-11-21",
                    "value": 1200.0,
                    "original_wording": "VIR SEPA RECU /DE ACME /MOTIF SALAIRE",
                    "coming": False,
                }
            ],
        ).raise_for_status()
    recovered = stack.sync(user)
    assert {s["state"] for s in stack.wait_run(user, recovered)} == {"ok"}
    after = await raw_lines(stack, user)
    assert len(after[f"{user}:{checking}"]) == len(before[f"{user}:{checking}"]) + 1


async def test_5xx_and_latency_are_retried_and_the_sync_completes(stack, linked_user):
    user, _, _ = linked_user
    with stack.sandbox() as sandbox:
        sandbox.post(
            "/sandbox/faults", json={"error_rate": 0.3, "latency_ms": 50, "rate_limit": False}
        ).raise_for_status()
    try:
        run = stack.sync(user)
        status = stack.wait_run(user, run, timeout=120)
    finally:
        with stack.sandbox() as sandbox:
            sandbox.post(
                "/sandbox/faults", json={"error_rate": 0.0, "latency_ms": 0, "rate_limit": False}
            ).raise_for_status()
    assert {s["state"] for s in status} == {"ok"}
    published = await raw_lines(stack, user)
    for key, lines in published.items():
        truth = [t for t in sandbox_truth(stack, key.split(":")[1]) if not t.get("deleted")]
        assert len(lines) == len(truth)


async def test_two_concurrent_requests_make_one_run(stack, linked_user):
    user, _, accounts = linked_user
    token_client = stack.client("connector", user)
    async with httpx.AsyncClient(base_url=token_client.base_url, headers=dict(token_client.headers)) as api:
        answers = await asyncio.gather(*(api.post(f"/v1/users/{user}/sync") for _ in range(2)))
    token_client.close()
    runs = {a.json()["sync_run_id"] for a in answers}
    assert all(a.status_code == 202 for a in answers)
    assert len(runs) == 1
    stack.wait_run(user, runs.pop())
    started = await events_where(
        stack.engines.kafka_bootstrap,
        SYNC_STATUS,
        lambda key, event: event.userid == user and event.name == "sync.started",
    )
    assert len(started) == len(accounts)


async def test_webhook_goes_through_the_same_path(stack, linked_user):
    user, connection, _ = linked_user
    stack.wait_run(user, stack.sync(user))
    url = f"{stack.url('connector')}/v1/webhooks/aggregator"
    body = {"user": {"id": 0}, "connection": {"id": int(connection["connection_id"])}}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"X-Webhook-Secret": "wrong"}).status_code == 401
    # the aggregator syncs on its own schedule and tells us: the connector reads the new line
    checking = connection["accounts"][0]["aggregator_account_id"]
    before = len(await webhook_runs(stack, user))
    with stack.sandbox() as sandbox:
        sandbox.post(
            f"/sandbox/accounts/{checking}/transactions",
            json=[
                {
                    "date": "2026-11-22",
                    "value": -9.99,
                    "original_wording": "PRLV SEPA NETFLIX",
                    "coming": False,
                }
            ],
        ).raise_for_status()
        sandbox.post(f"/sandbox/connections/{connection['connection_id']}/sync").raise_for_status()

    runs = await wait_for_async(
        lambda: webhook_runs(stack, user), 30, "the webhook's sync run", 0.3, until=lambda r: len(r) != before
    )
    assert len(runs) == before + 1
    status = stack.wait_run(user, runs[-1][1].data["sync_run_id"])
    assert {s["state"] for s in status} == {"ok"}
    assert {s["aggregator_account_id"]: s["last_run"]["transactions"] for s in status}[checking] == 1
    await asyncio.sleep(2)
    assert len(await webhook_runs(stack, user)) == before + 1  # reading after a webhook loops no further


async def webhook_runs(stack: Stack, user: str) -> list:
    return await events_where(
        stack.engines.kafka_bootstrap,
        SYNC_REQUESTS,
        lambda key, event: event.userid == user and event.data["reason"] == "webhook",
    )


async def test_tokens_never_leave_the_connector(stack, linked_user):
    user, _, _ = linked_user
    run = stack.sync(user)
    stack.wait_run(user, run)
    client = make_client(stack.engines.mongodb_url)
    try:
        stored = await client[f"{stack.database}_conn"]["aggregator_users"].find_one({"_id": user})
    finally:
        await client.close()
    assert stored is not None
    token = TokenCipher(DEV_TOKEN_KEY).decrypt(stored["token_enc"], user)
    assert token not in stored["token_enc"]
    with stack.client("connector", user) as api:
        answers = (
            api.get(f"/v1/users/{user}/connections").text + api.get(f"/v1/users/{user}/sync/status").text
        )
    logs = stack.processes["connector"].log_path.read_text()
    events = ""
    for topic in (TRANSACTIONS_RAW, SYNC_STATUS, CONNECTIONS, SYNC_REQUESTS):
        found = await events_where(
            stack.engines.kafka_bootstrap,
            topic,
            lambda k, e: e.userid == user and e.name == "transaction.observed",
        )
        events += "".join(event.model_dump_json() for _, event in found)
    for place in (answers, logs, events):
        assert token not in place
        assert "secret-pw" not in place


async def test_429_with_retry_after_is_honoured_and_the_sync_completes(stack, linked_user):
    user, _, _ = linked_user
    stack.wait_run(user, stack.sync(user))
    with stack.sandbox() as sandbox:
        sandbox.post(
            "/sandbox/faults", json={"rate_limit_next": 3, "retry_after_s": 1, "fail_next": 2}
        ).raise_for_status()
    try:
        run = stack.sync(user)
        status = stack.wait_run(user, run, timeout=60)
    finally:
        with stack.sandbox() as sandbox:
            sandbox.post("/sandbox/faults", json={}).raise_for_status()
    assert {s["state"] for s in status} == {"ok"}
    logs = stack.processes["connector"].log_path.read_text()
    assert '"code": "rateLimiting"' in logs
    assert '"code": "aggregator_unavailable"' in logs


# ---- who the connector trusts: the callback's code, the webhooks' signature (issue #17) -----------------

ACCOUNT_DATA = ("iban", "balance", "accounts", "aggregator_account_id")


def assert_refused(answer: httpx.Response, status: int, code: str) -> None:
    """A problem document with that status and code, and nothing of any connection's accounts."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.headers
    assert answer.json()["code"] == code, answer.text
    for word in ACCOUNT_DATA:
        assert word not in answer.text, answer.text


def activate(stack: Stack, user: str) -> str:
    """An activation's webview filled as a browser would: the callback URL the webview redirects to."""
    with stack.client("connector", user) as api:
        activation = api.post(f"/v1/users/{user}/sync/activate")
    assert activation.status_code == 200, activation.text
    connect_url = activation.json()["connect_url"]
    assert httpx.URL(connect_url).params["client_id"]  # Powens' webview wants the client
    return fill_webview(connect_url, "demo", "secret-pw", 0)


def test_the_callback_needs_the_user_s_own_code_and_a_failed_attempt_keeps_the_state(stack):
    """Without a code, with a wrong one, with another user's, or naming a connection the user does not
    have: refused, and the state stays good for the real redirect. Then the state is used: its replay
    (with or without the code) answers no account data."""
    user, other = new_user("cb"), new_user("cb-other")
    stack.entitle(user)
    stack.entitle(other)
    back = httpx.URL(activate(stack, user))
    real = dict(back.params)
    assert {"connection_id", "code", "state"} <= real.keys()
    others_code = httpx.URL(activate(stack, other)).params["code"]
    callback = f"{stack.url('connector')}/v1/callback"
    without_code = {k: v for k, v in real.items() if k != "code"}

    assert_refused(httpx.get(callback, params=without_code), 422, "validation_error")
    assert_refused(httpx.get(callback, params={**real, "code": ""}), 422, "validation_error")
    assert_refused(httpx.get(callback, params={**real, "code": "not-a-code"}), 400, "invalid_code")
    # a real code, of another user (the exchange spends it, and says whose it was)
    assert_refused(httpx.get(callback, params={**real, "code": others_code}), 400, "invalid_code")
    # the real code but another connection: refused before the code is exchanged
    assert_refused(httpx.get(callback, params={**real, "connection_id": "999999"}), 404, "unknown_connection")

    linked = httpx.get(str(back))
    assert linked.status_code == 200, linked.text
    assert linked.json()["connection_id"] == real["connection_id"]
    assert linked.json()["accounts"]

    # the state is used now: a replay, with the code or without, or with any code, says nothing more
    assert_refused(httpx.get(str(back)), 409, "activation_used")
    assert_refused(httpx.get(callback, params={**real, "code": "x"}), 409, "activation_used")
    assert_refused(httpx.get(callback, params=without_code), 422, "validation_error")


async def test_webhooks_need_a_fresh_signature_never_seen(stack, linked_user):
    """The old shared header (even the development default), a signature made with another key or over
    anything else, a stale or future date, and a replay of an accepted signature: 401, no sync. A body
    nested 2,000 deep, well signed: 422."""
    user, connection, _ = linked_user
    stack.wait_run(user, stack.sync(user))
    url = f"{stack.url('connector')}/v1/webhooks/aggregator"
    with stack.sandbox() as sandbox:
        account = sandbox.get(f"/sandbox/accounts/{connection['accounts'][0]['aggregator_account_id']}")
    id_user = account.json()["id_user"]
    body = json.dumps(
        {"user": {"id": id_user}, "connection": {"id": int(connection["connection_id"])}}
    ).encode()
    json_type = {"Content-Type": "application/json"}

    def post(headers: dict[str, str], content: bytes = body) -> httpx.Response:
        return httpx.post(url, content=content, headers={**json_type, **headers}, timeout=30)

    good = signed_headers(WEBHOOK_SECRET, url, body)
    date = good["BI-Signature-Date"]
    before = len(await webhook_runs(stack, user))
    forged = {
        "nothing": {},
        "the old header only": {"X-Webhook-Secret": WEBHOOK_SECRET},
        "the old header with the dev default": {"X-Webhook-Secret": "dev-only-webhook-secret"},
        "another key": signed_headers("not-the-webhook-secret", url, body),
        "another body": signed_headers(WEBHOOK_SECRET, url, body + b" "),
        "another path": {
            "BI-Signature-Date": date,
            "BI-Signature": sign(WEBHOOK_SECRET, "POST", "/v1/webhooks/other", date, body),
        },
        "another date": {**good, "BI-Signature-Date": date.replace("Z", "+00:00")},
        "no date": {"BI-Signature": good["BI-Signature"]},
        "garbage": {"BI-Signature": "AAAA", "BI-Signature-Date": date},
    }
    for name, headers in forged.items():
        answer = post(headers)
        assert answer.status_code == 401, name
        assert_refused(answer, 401, "invalid_webhook_signature")
    now = datetime.now(UTC)
    for moment in (now - timedelta(minutes=6), now + timedelta(minutes=6)):
        assert_refused(
            post(signed_headers(WEBHOOK_SECRET, url, body, moment)), 401, "stale_webhook_signature"
        )

    accepted = post(good)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted"
    assert_refused(post(good), 401, "webhook_replayed")

    for deep in (
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b'{"a":' * 100 + b"1" + b"}" * 100,
    ):
        answer = post(signed_headers(WEBHOOK_SECRET, url, deep), deep)
        assert_refused(answer, 422, "validation_error")

    stack.wait_run(user, accepted.json()["sync_run_id"])
    await asyncio.sleep(1)
    assert len(await webhook_runs(stack, user)) == before + 1  # the accepted one only


async def test_an_accepted_signature_is_refused_by_every_replica_and_pruned_later(stack):
    """Two connectors on one database (two repositories): the unique `_id` makes the second refuse a
    signature the first accepted; signatures older than the window go as new ones come in."""
    client = make_client(stack.engines.mongodb_url)
    db = client[f"{stack.database}_sig_{uuid.uuid4().hex[:6]}"]
    try:
        first, second = ConnectorRepository(db), ConnectorRepository(db)
        await first.create_indexes()
        keep = timedelta(minutes=11)
        t0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
        assert await first.remember_webhook_signature("digest-a", t0, keep)
        assert not await second.remember_webhook_signature("digest-a", t0 + timedelta(seconds=5), keep)
        assert await second.remember_webhook_signature("digest-b", t0 + timedelta(minutes=5), keep)
        assert await first.remember_webhook_signature("digest-c", t0 + timedelta(minutes=12), keep)
        left = {doc["_id"] for doc in await db["webhook_signatures"].find({}).to_list()}
        assert left == {"digest-b", "digest-c"}  # digest-a is older than the window
        for step in range(1, 5):  # minute after minute: one equality delete each
            assert await first.remember_webhook_signature(f"d{step}", t0 + timedelta(minutes=12 + step), keep)
        assert await second.remember_webhook_signature("digest-z", t0 + timedelta(hours=2), keep)
        left = {doc["_id"] for doc in await db["webhook_signatures"].find({}).to_list()}
        assert left == {"digest-z"}
    finally:
        await client.drop_database(db.name)
        await client.close()
