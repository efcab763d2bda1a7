"""The HTTP side of the ops command (connector status, importer replay) against fake transports."""

import datetime as dt
import json
import re

import httpx
import jwt
import pytest

from ops.errors import BadArgument, OpsError
from ops.services import (
    ServiceClient,
    UserStatus,
    check_id,
    fetch_status,
    follow_replay,
    format_status,
    ops_token,
    parse_since,
    problem_text,
    progress_of,
    replay_body,
    start_replay,
    status_path,
)
from shared.auth import TokenPolicy

SECRET = "test-secret-0123456789-0123456789-abcd"

CONNECTIONS = [
    {
        "connection_id": "7",
        "bank": {"id": "demo-bank", "name": "Banque Démo"},
        "state": None,
        "error": None,
        "accounts": [
            {
                "aggregator_account_id": "71",
                "name": "Compte chèques",
                "balance": "1200.50",
                "currency": "EUR",
                "selected": True,
            },
            {
                "aggregator_account_id": "72",
                "name": "Livret A",
                "balance": "300.00",
                "currency": "EUR",
                "selected": False,
            },
        ],
    }
]
STATUS = [
    {
        "aggregator_account_id": "71",
        "account_id": None,
        "state": "error",
        "last_success_at": "2026-01-02T03:04:05+00:00",
        "last_run": {
            "sync_run_id": "run-1",
            "started_at": "x",
            "finished_at": "2026-01-03T03:04:05+00:00",
            "transactions": 0,
        },
        "error": {"code": "wrongpass", "message": "Wrong password"},
    }
]


def client(handler, name="connector") -> ServiceClient:
    return ServiceClient(
        name, "http://127.0.0.1:1", ops_token(TokenPolicy(SECRET)), transport=httpx.MockTransport(handler)
    )


def test_ops_token_has_the_ops_scope_and_expires():
    claims = jwt.decode(ops_token(TokenPolicy(SECRET)), SECRET, algorithms=["HS256"])
    assert claims["scope"] == "ops"
    assert claims["exp"] > claims["iat"]


@pytest.mark.parametrize("value", ["", " u", "u/../x", "a" * 129, "ü", "u?x=1"])
def test_bad_ids_are_refused(value):
    with pytest.raises(BadArgument):
        check_id("user", value)


def test_good_ids_pass():
    assert check_id("user", "user-1a2b.c@d:e_f") == "user-1a2b.c@d:e_f"


def test_since_must_be_a_past_iso_date():
    assert parse_since(None) is None
    assert parse_since("2025-01-31", today=dt.date(2025, 6, 1)) == dt.date(2025, 1, 31)
    with pytest.raises(BadArgument, match="YYYY-MM-DD"):
        parse_since("31/01/2025")
    with pytest.raises(BadArgument, match="future"):
        parse_since("2025-06-02", today=dt.date(2025, 6, 1))


def test_problem_details_become_one_line():
    answer = httpx.Response(
        403, json={"status": 403, "code": "forbidden", "detail": "The `ops` scope is required."}
    )
    assert problem_text(answer) == "403 forbidden: The `ops` scope is required."
    assert problem_text(httpx.Response(502, text="bad gateway")) == "502: bad gateway"


async def test_status_reads_both_endpoints_with_an_ops_token():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers["authorization"]))
        return httpx.Response(200, json=CONNECTIONS if request.url.path.endswith("/connections") else STATUS)

    status = await fetch_status(client(handler), "u1")
    assert (status.connections, status.accounts) == (CONNECTIONS, STATUS)
    assert sorted(path for path, _ in seen) == ["/v1/users/u1/connections", "/v1/users/u1/sync/status"]
    token = seen[0][1].removeprefix("Bearer ")
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["scope"] == "ops"


async def test_status_failures_say_who_and_why():
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"code": "unauthorized", "detail": "The token is invalid."})

    with pytest.raises(OpsError, match=r"connector answered GET .* 401 unauthorized: The token is invalid"):
        await fetch_status(client(refuse), "u1")

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(OpsError, match=re.escape("cannot reach the connector at http://127.0.0.1:1")):
        await fetch_status(client(down), "u1")


def test_status_table_joins_accounts_and_syncs():
    text = format_status(UserStatus("u1", CONNECTIONS, STATUS))
    assert "connection 7  bank Banque Démo (demo-bank)  state ok" in text
    line_71 = next(line for line in text.splitlines() if line.strip().startswith("71"))
    for expected in ("error", "wrongpass: Wrong password", "run-1"):
        assert expected in line_71
    line_72 = next(line for line in text.splitlines() if line.strip().startswith("72"))
    assert " no " in line_72
    assert format_status(UserStatus("u2", [], [])) == "user u2: no bank connection"


async def test_replay_posts_the_contract_body():
    posted = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append((request.method, request.url.path, json.loads(request.content)))
        return httpx.Response(202, json={"replay_id": "r1"}, headers={"Location": "/v1/ops/replays/r1"})

    body = replay_body("u1", "71", dt.date(2025, 1, 1))
    started = await start_replay(client(handler, "importer"), body)
    assert started.answer == {"replay_id": "r1"}
    assert started.status_path == "/v1/ops/replays/r1"
    assert posted == [
        ("POST", "/v1/ops/replay", {"user_id": "u1", "aggregator_account_id": "71", "since": "2025-01-01"})
    ]
    assert replay_body("u1", "71", None)["since"] is None


async def test_replay_refusals_are_reported():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"code": "unknown_account", "detail": "No account 71."})

    with pytest.raises(OpsError, match="refused the replay: 404 unknown_account: No account 71"):
        await start_replay(client(handler, "importer"), replay_body("u1", "71", None))


async def test_replay_progress_is_followed_until_done():
    answers = iter(
        [
            {"status": "running", "processed": 10, "total": 30},
            {"status": "running", "processed": 20, "total": 30},
            {"status": "succeeded", "processed": 30, "total": 30},
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/ops/replays/r1"
        return httpx.Response(200, json=next(answers))

    seen = []
    final = await follow_replay(client(handler, "importer"), "/v1/ops/replays/r1", seen.append, interval_s=0)
    assert [p.processed for p in seen] == [10, 20, 30]
    assert final.finished
    assert not final.failed


def test_progress_reading_is_tolerant():
    assert status_path({"status_url": "/v1/ops/replays/1"}) == "/v1/ops/replays/1"
    assert status_path({"status_url": "/a"}, "/v1/ops/replays/2") == "/v1/ops/replays/2"
    assert status_path({"links": {"status": "/x"}}) == "/x"
    assert status_path({"accepted": True}) is None
    progress = progress_of({"status": "failed", "done": 3})
    assert (progress.failed, progress.processed, progress.total) == (True, 3, None)


def test_status_raises_the_balance_gap_alarm():
    gapped = [
        {**STATUS[0], "balance_gap": "-12.50", "bank_balance": "100.00", "computed_balance": "112.50"},
        *STATUS[1:],
    ]
    text = format_status(UserStatus("u1", CONNECTIONS, gapped))
    alarm = next(line for line in text.splitlines() if line.startswith("BALANCE GAP"))
    assert "account 71" in alarm
    assert "bank 100.00, operations 112.50, gap -12.50" in alarm
    assert "BALANCE GAP" not in format_status(UserStatus("u1", CONNECTIONS, STATUS))
