"""The dashboard's aggregation (pure) and its HTTP surface (without Kafka)."""

import json
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from ops.dashboard.__main__ import main as dashboard_main
from ops.dashboard.app import create_app
from ops.dashboard.auth import SESSION_COOKIE, SESSION_MAX_S
from ops.dashboard.state import DashboardState
from ops.lag import GroupSnapshot, all_rows
from shared.auth import TokenPolicy
from shared.contract.envelope import event_type
from shared.contract.topics import CATEGORIZATIONS, OPERATIONS, SYNC_STATUS, TRANSACTIONS_RAW
from shared.problems import Problem
from shared.settings import ServiceSettings

NOW = datetime(2026, 3, 2, 10, 30, 30, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
SECRET = "dashboard-test-secret-0123456789abcdef0123"
TOKENS = TokenPolicy(SECRET)
OPS = TOKENS.issue("alice", scopes="ops")


def event(name: str, **data) -> bytes:
    return json.dumps({"type": event_type(name), "data": data, "userid": "u1"}).encode()


def status_events(
    state: DashboardState, account: str, *, fail: str | None = None, at_ms: int = NOW_MS
) -> None:
    base = {"user_id": "u1", "aggregator_account_id": account, "sync_run_id": "r1", "reason": "on_demand"}
    state.apply(
        SYNC_STATUS, f"u1:{account}", event("sync.started", **base, started_at="t0", initial=True), at_ms
    )
    if fail:
        failed = event("sync.failed", **base, code=fail, message="Wrong password", retryable=False)
        state.apply(SYNC_STATUS, f"u1:{account}", failed, at_ms + 1)
    elif fail is None:
        done = event("sync.succeeded", **base, started_at="t0", finished_at="t1", transactions=12)
        state.apply(SYNC_STATUS, f"u1:{account}", done, at_ms + 1)


def test_syncs_go_from_in_progress_to_ok_or_error_with_counts_by_code():
    state = DashboardState()
    status_events(state, "71")
    status_events(state, "72", fail="wrongpass")
    status_events(state, "73", fail="wrongpass")
    status_events(state, "74", fail="")  # started only, no outcome yet
    snap = state.snapshot(NOW)
    rows = {row["key"]: row for row in snap["accounts"]}
    assert (rows["u1:71"]["state"], rows["u1:71"]["transactions"]) == ("ok", 12)
    assert (rows["u1:72"]["state"], rows["u1:72"]["code"]) == ("error", "wrongpass")
    assert rows["u1:74"]["state"] == "syncing"
    assert snap["accounts"][0]["key"] == "u1:74"  # in progress first
    assert snap["syncs"] == {
        "in_progress": 1,
        "stalled": 0,
        "started": 4,
        "succeeded": 1,
        "failed": 2,
        "failures_by_code": {"wrongpass": 2},
    }


def test_a_sync_started_long_ago_without_outcome_shows_as_stalled():
    state = DashboardState()
    status_events(state, "71", fail="", at_ms=NOW_MS - 20 * 60_000)
    snap = state.snapshot(NOW)
    assert snap["accounts"][0]["state"] == "stalled"
    assert (snap["syncs"]["stalled"], snap["syncs"]["in_progress"]) == (1, 0)


def test_lines_per_minute_and_last_60_seconds():
    state = DashboardState()
    for i in range(5):
        state.apply(TRANSACTIONS_RAW, "u1:71", event("transaction.observed"), NOW_MS - 1000 * i)
    for i in range(3):
        state.apply(OPERATIONS, "u1:a", event("operation.imported"), NOW_MS - 80_000 - i)
    state.apply(OPERATIONS, "u1:a", event("operation.updated"), NOW_MS)
    snap = state.snapshot(NOW)
    assert snap["observed_last_60s"] == 5
    assert snap["imported_last_60s"] == 0  # they are 80 s old
    by_minute = {m["minute"]: m for m in snap["per_minute"]}
    assert by_minute["10:30"]["observed"] == 5
    assert by_minute["10:29"]["imported"] == 3
    assert len(snap["per_minute"]) == 30
    assert snap["events"] == {"operation.imported": 3, "operation.updated": 1, "transaction.observed": 5}


def test_categorisation_rate_counts_non_null_categories():
    state = DashboardState()
    assert state.snapshot(NOW)["categorization"]["rate"] is None
    for category in ["alimentation", None, "transport", "energie/electricite"]:
        state.apply(CATEGORIZATIONS, "u1:a", event("operation.categorized", category=category), NOW_MS)
    assert state.snapshot(NOW)["categorization"] == {"total": 4, "categorized": 3, "rate": 0.75}


def test_sealed_records_are_counted_from_their_attributes_without_any_key():
    state = DashboardState()

    def sealed(name: str, **extensions: str) -> bytes:
        envelope = {"type": event_type(name), "userid": "u1", "datacontenttype": "application/jose"}
        return json.dumps({**envelope, "data": "eyJhbGciOiJkaXIifQ..AAAA.BBBB.CCCC", **extensions}).encode()

    state.apply(TRANSACTIONS_RAW, "u1:a", sealed("transaction.observed"), NOW_MS)
    state.apply(OPERATIONS, "u1:a", sealed("operation.imported"), NOW_MS)
    state.apply(CATEGORIZATIONS, "u1:a", sealed("operation.categorized", hascategory="true"), NOW_MS)
    state.apply(CATEGORIZATIONS, "u1:a", sealed("operation.categorized", hascategory="false"), NOW_MS)
    snap = state.snapshot(NOW)
    assert snap["unreadable"] == 0
    assert snap["categorization"] == {"total": 2, "categorized": 1, "rate": 0.5}
    assert snap["events"]["transaction.observed"] == 1


def test_unreadable_records_are_counted_not_fatal():
    state = DashboardState()
    state.apply(SYNC_STATUS, "k", b"not json", NOW_MS)
    state.apply(SYNC_STATUS, "k", b'{"data": {}}', NOW_MS)
    state.apply(SYNC_STATUS, "k", None, NOW_MS)
    assert state.snapshot(NOW)["unreadable"] == 3


def test_lag_and_dlq_come_from_offsets():
    state = DashboardState()
    snapshot = GroupSnapshot("categorizer", "Stable", {(OPERATIONS, 0): 3, (OPERATIONS, 1): -1}, {})
    state.set_lag([snapshot], all_rows([snapshot], {(OPERATIONS, 0): 10, (OPERATIONS, 1): 2}))
    state.set_dlq(4, 2, {TRANSACTIONS_RAW: 2})
    snap = state.snapshot(NOW)
    assert snap["total_lag"] == 7
    assert snap["lag"][0]["topics"] == [{"topic": OPERATIONS, "lag": 7, "partitions": 2, "unknown": 1}]
    assert snap["dlq"] == {"records": 4, "waiting": 2, "by_topic": {TRANSACTIONS_RAW: 2}}
    state.set_dlq(5, None, None)  # size known, contents not re-read
    assert state.snapshot(NOW)["dlq"] == {"records": 5, "waiting": 2, "by_topic": {TRANSACTIONS_RAW: 2}}


def test_versions_move_with_every_change():
    state = DashboardState()
    before = state.version
    status_events(state, "71")
    assert state.version > before


def test_http_surface_without_kafka():
    state = DashboardState()
    status_events(state, "71")
    with TestClient(create_app("127.0.0.1:1", state=state, follow=False, tokens=TOKENS)) as http:
        # the probes need no token
        assert http.get("/healthz").json() == {"status": "ok", "service": "dashboard"}
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.headers["content-type"].startswith("application/problem+json")
        state.set_kafka("connected")
        assert http.get("/readyz").status_code == 200
        http.headers["Authorization"] = f"Bearer {OPS}"
        assert http.get("/api/snapshot").json()["syncs"]["succeeded"] == 1
        page = http.get("/")
        assert page.status_code == 200
        assert "EventSource" in page.text
        # nothing is fetched from outside: no external scripts, styles or fonts
        for external in ('src="http', 'href="http', "@import", "url(http"):
            assert external not in page.text
        spec = http.get("/asyncapi.json").json()
        assert spec["asyncapi"].startswith("3.")


# --- who may see it -------------------------------------------------------------------------------------
def dashboard(**kwargs) -> TestClient:
    return TestClient(create_app("127.0.0.1:1", follow=False, tokens=kwargs.pop("tokens", TOKENS), **kwargs))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def test_without_a_token_browsers_get_the_login_page_and_scripts_a_problem():
    with dashboard() as http:
        page = http.get("/", headers=BROWSER)
        assert page.status_code == 401
        assert page.headers["content-type"].startswith("text/html")
        assert '<form id="login" method="post" action="/login"' in page.text
        assert "EventSource" not in page.text  # the dashboard's page is not sent
        assert page.headers["x-frame-options"] == "DENY"
        for path in ("/", "/api/snapshot"):
            refused = http.get(path)
            assert refused.status_code == 401
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["code"] == "unauthorized"
            assert refused.headers["www-authenticate"].startswith("Bearer")
        # the event stream, as an EventSource asks for it
        stream = http.get("/events", headers={"Accept": "text/event-stream"})
        assert stream.status_code == 401
        assert stream.json()["code"] == "unauthorized"
        assert "data:" not in stream.text


@pytest.mark.parametrize(
    "token",
    [
        TokenPolicy("another-secret-0123456789abcdef0123456789").issue("alice", scopes="ops"),
        TOKENS.issue("alice", scopes="ops", ttl_s=-10),
        "not-a-jwt",
    ],
    ids=["signed_elsewhere", "expired", "garbage"],
)
def test_bad_tokens_are_401(token):
    with dashboard() as http:
        for path in ("/", "/api/snapshot", "/events"):
            assert http.get(path, headers=bearer(token)).status_code == 401, path
        assert http.get("/api/snapshot", headers={"Authorization": f"Basic {token}"}).status_code == 401


@pytest.mark.parametrize("scopes", ["", "billing"])
def test_a_token_without_the_ops_scope_is_403(scopes):
    token = TOKENS.issue("u1", scopes=scopes)
    with dashboard() as http:
        for path in ("/", "/api/snapshot", "/events"):
            refused = http.get(path, headers=bearer(token))
            assert refused.status_code == 403, path
            assert refused.json()["code"] == "forbidden"
        # and the login form does not turn it into a session
        login = http.post("/login", data={"token": token}, headers=BROWSER, follow_redirects=False)
        assert login.status_code == 403
        assert "ops" in login.text
        assert SESSION_COOKIE not in login.headers.get("set-cookie", "")


def test_an_ops_token_sees_the_page_the_snapshot_and_the_stream_until_it_expires():
    short = TOKENS.issue("alice", scopes="ops", ttl_s=3)
    with dashboard() as http:
        page = http.get("/", headers=bearer(short))
        assert page.status_code == 200
        assert "EventSource" in page.text
        assert "alice" in page.text  # who is signed in
        assert http.get("/api/snapshot", headers=bearer(short)).json()["syncs"]["started"] == 0
        started = time.monotonic()
        with http.stream("GET", "/events", headers=bearer(short)) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            body = stream.read().decode()  # the stream ends with the token
        assert time.monotonic() - started < 6
        assert "event: snapshot" in body
        time.sleep(max(0.0, 3.1 - (time.monotonic() - started)))
        assert http.get("/events", headers=bearer(short)).status_code == 401


def test_cookie_login_opens_a_session_for_the_page_and_its_stream():
    token = TOKENS.issue("alice", scopes="ops", ttl_s=4)
    with dashboard() as http:
        assert http.get("/login", headers=BROWSER).status_code == 200
        login = http.post("/login", data={"token": token}, headers=BROWSER, follow_redirects=False)
        assert login.status_code == 303
        assert login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower()
        max_age = int(cookie.lower().split("max-age=")[1].split(";")[0])
        assert 0 < max_age <= 4  # no later than the token
        session = http.cookies[SESSION_COOKIE]
        assert token not in cookie  # the token is not kept
        # the session is worth nothing to the services: another key signs it
        with pytest.raises(Problem) as refused:
            TOKENS.decode(session)
        assert refused.value.status == 401

        page = http.get("/", headers=BROWSER)
        assert page.status_code == 200
        assert "EventSource" in page.text
        assert http.get("/api/snapshot").status_code == 200
        with http.stream("GET", "/events", headers={"Accept": "text/event-stream"}) as stream:
            assert stream.status_code == 200
            assert "event: snapshot" in stream.read().decode()  # ends with the session
        # the stream ended because the session did; a browser that still sends it is asked to log in
        http.cookies.set(SESSION_COOKIE, session)
        again = http.get("/", headers=BROWSER)
        assert again.status_code == 401
        assert "expired" in again.text


def test_logout_ends_the_session():
    with dashboard() as http:
        http.post("/login", data={"token": OPS})
        assert http.get("/api/snapshot").status_code == 200
        out = http.post("/logout", follow_redirects=False)
        assert out.status_code == 303
        assert SESSION_COOKIE in out.headers["set-cookie"]
        assert "max-age=0" in out.headers["set-cookie"].lower()
        assert http.get("/api/snapshot").status_code == 401


def test_login_refusals():
    with dashboard() as http:
        for token in ("", "not-a-jwt"):
            refused = http.post("/login", data={"token": token}, headers=BROWSER)
            assert refused.status_code == 401
            assert 'class="message"' in refused.text
        # another site's form (login CSRF) is refused even with a good token
        cross = http.post(
            "/login", data={"token": OPS}, headers={"Origin": "http://evil.example"}, follow_redirects=False
        )
        assert cross.status_code == 403
        assert "set-cookie" not in cross.headers
        cross_site = {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"}
        assert http.post("/login", data={"token": OPS}, headers=cross_site).status_code == 403
        same = http.post(
            "/login", data={"token": OPS}, headers={"Origin": "http://testserver"}, follow_redirects=False
        )
        assert same.status_code == 303
        # a session cookie that was tampered with is refused, and cleared
        value = http.cookies[SESSION_COOKIE]
        http.cookies.set(SESSION_COOKIE, value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB"))
        tampered = http.get("/api/snapshot")
        assert tampered.status_code == 401
        assert "max-age=0" in tampered.headers["set-cookie"].lower()
        # a huge form is not read
        big = http.post(
            "/login",
            content=b"token=" + b"x" * 20_000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert big.status_code == 413


def test_a_session_lasts_at_most_its_cap_even_for_a_long_token():
    tokens = TokenPolicy(SECRET, max_lifetime_s=48 * 3600)
    with dashboard(tokens=tokens) as http:
        login = http.post(
            "/login",
            data={"token": tokens.issue("alice", scopes="ops", ttl_s=20 * 3600)},
            follow_redirects=False,
        )
        max_age = int(login.headers["set-cookie"].lower().split("max-age=")[1].split(";")[0])
        assert SESSION_MAX_S - 5 <= max_age <= SESSION_MAX_S


def test_print_token_prints_an_ops_token_of_this_environment(capsys):
    dashboard_main(["--print-token", "--token-hours", "1"])
    principal = ServiceSettings().token_policy().decode(capsys.readouterr().out.strip())
    assert principal.is_ops
    with pytest.raises(SystemExit) as bad:
        dashboard_main(["--print-token", "--token-hours", "1000"])
    assert bad.value.code == 2
