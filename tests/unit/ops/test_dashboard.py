"""The dashboard's aggregation (pure) and its HTTP surface (without Kafka)."""

import json
from datetime import UTC, datetime

from fastapi.testclient import TestClient

from ops.dashboard.app import create_app
from ops.dashboard.state import DashboardState
from ops.lag import GroupSnapshot, all_rows
from shared.events import event_type
from shared.topics import CATEGORIZATIONS, OPERATIONS, SYNC_STATUS, TRANSACTIONS_RAW

NOW = datetime(2026, 3, 2, 10, 30, 30, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


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
    with TestClient(create_app("127.0.0.1:1", state=state, follow=False)) as http:
        assert http.get("/healthz").json() == {"status": "ok", "service": "dashboard"}
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.headers["content-type"].startswith("application/problem+json")
        state.set_kafka("connected")
        assert http.get("/readyz").status_code == 200
        assert http.get("/api/snapshot").json()["syncs"]["succeeded"] == 1
        page = http.get("/")
        assert page.status_code == 200
        assert "EventSource" in page.text
        # nothing is fetched from outside: no external scripts, styles or fonts
        for external in ('src="http', 'href="http', "@import", "url(http"):
            assert external not in page.text
        spec = http.get("/asyncapi.json").json()
        assert spec["asyncapi"].startswith("3.")
