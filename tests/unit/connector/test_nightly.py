"""The nightly run's rules with in-memory fakes: users spread over the window at stable moments,
connections waiting on the user left alone, a night that overran its window reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from services.connector.domain import NightlyWindow, nightly_order, spreading_span
from services.connector.gate import GateAnswer, SyncGate
from services.connector.handlers import ConnectorConfig, ConnectorHandlers
from services.connector.powens import PowensClient
from services.connector.repository import ConnectorRepository
from services.connector.security import StateSigner, TokenCipher
from shared.contract.envelope import CloudEvent
from shared.contract.topics import SYNC_REQUESTS, SYNC_STATUS
from shared.kafka import EventPublisher
from shared.settings import DEV_TOKEN_KEY

Doc = dict[str, Any]
START = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeRepository:
    def __init__(self, connections: list[Doc]) -> None:
        self.connections = connections
        self.claims: dict[str, Doc] = {}
        self.claimed_at: list[tuple[datetime, list[str]]] = []
        self.clock: Clock | None = None

    async def live_connections(self) -> list[Doc]:
        return self.connections

    async def all_projected_rights(self) -> dict[str, Doc]:
        return {c["user_id"]: {"allowed": True} for c in self.connections}

    async def claim_runs(
        self, wanted: dict[str, str], now: datetime, lease: timedelta, *, night: str | None = None
    ) -> dict[str, str]:
        self.claimed_at.append((now, sorted(wanted)))
        for conn, run_id in wanted.items():
            self.claims[conn] = {"run_id": run_id, "night": night}
        return dict(wanted)

    async def unfinished_night(self, night: str) -> int:
        return sum(1 for claim in self.claims.values() if claim["night"] == night)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, CloudEvent]] = []

    async def publish(self, topic: str, key: str, event: CloudEvent) -> None:
        self.sent.append((topic, key, event))

    async def publish_many(self, topic: str, items: list[tuple[str, CloudEvent]]) -> None:
        self.sent.extend((topic, key, event) for key, event in items)


class AllowAll:
    async def check(self, user_id: str) -> GateAnswer:
        return GateAnswer(True, "premium", None, 1)


def connection(user: str, state: str | None = None, paused: bool = False) -> Doc:
    return {"_id": f"{user}:c", "user_id": user, "paused": paused, "state": state}


def handlers(repository: FakeRepository, publisher: FakePublisher, clock: Clock) -> ConnectorHandlers:
    return ConnectorHandlers(
        cast(ConnectorRepository, repository),
        cast(PowensClient, object()),
        cast(SyncGate, AllowAll()),
        cast(EventPublisher, publisher),
        TokenCipher(DEV_TOKEN_KEY),
        StateSigner("test-secret-of-at-least-32-bytes-long"),
        ConnectorConfig("http://127.0.0.1:1", "http://127.0.0.1:2", "secret"),
        clock=clock,
    )


def test_each_user_has_a_stable_place_in_the_window() -> None:
    window = NightlyWindow.parse("02:00-04:00", "Europe/Paris")
    span = spreading_span(window)
    assert span == timedelta(minutes=90)
    users = [f"user-{n}" for n in range(200)]
    order = nightly_order(users, span)
    assert order == nightly_order(reversed(users), span), "the same night after night"
    offsets = [offset for offset, _ in order]
    assert offsets == sorted(offsets)
    assert all(timedelta(0) <= o < span for o in offsets)
    # spread, not bunched: every quarter of the span has a fair share
    quarters = [sum(1 for o in offsets if q * span / 4 <= o < (q + 1) * span / 4) for q in range(4)]
    assert min(quarters) >= 30, quarters


async def test_a_spread_night_requests_each_user_at_their_moment_and_skips_those_waiting() -> None:
    clock = Clock()
    repository = FakeRepository(
        [connection(f"u{n}") for n in range(20)]
        + [connection("waiting", state="action_needed"), connection("paused", paused=True)]
    )
    publisher = FakePublisher()
    span = timedelta(minutes=90)
    report = await handlers(repository, publisher, clock).nightly_run(
        "corr", night="2026-12-07", spread_over=span, sleep=clock.sleep
    )
    assert report == {"users": 22, "requested": 21, "skipped": 1, "waiting_on_user": 1}
    requested = [key for topic, key, _ in publisher.sent if topic == SYNC_REQUESTS]
    assert "waiting" not in requested
    expected = dict(
        (user, offset) for offset, user in nightly_order([f"u{n}" for n in range(20)] + ["paused"], span)
    )
    for at, conns in repository.claimed_at:
        for conn in conns:
            assert at - START == expected[conn.split(":")[0]], "claimed at the user's own moment"
    assert clock.now - START < span
    assert {c["night"] for c in repository.claims.values()} == {"2026-12-07"}


async def test_a_night_still_running_at_the_windows_end_is_reported() -> None:
    clock = Clock()
    repository = FakeRepository([connection("u1"), connection("u2")])
    publisher = FakePublisher()
    connector = handlers(repository, publisher, clock)
    await connector.nightly_run("corr", night="2026-12-07")
    end = START + timedelta(hours=2)
    report = await connector.check_night("2026-12-07", end, "corr")
    assert report["overran"] is True
    assert report["unfinished_connections"] == 2
    [(topic, key, event)] = [s for s in publisher.sent if s[0] == SYNC_STATUS]
    assert (topic, key, event.name) == (SYNC_STATUS, "nightly", "nightly.overran")
    assert event.data["unfinished_connections"] == 2

    repository.claims.clear()  # every run released its connection: the night ended in time
    publisher.sent.clear()
    assert (await connector.check_night("2026-12-07", end, "corr"))["overran"] is False
    assert publisher.sent == []


def test_the_status_tells_the_truth() -> None:
    from services.connector.handlers import _current_state

    live: Doc = {"paused": False, "state": None}
    account: Doc = {"selected": True}
    synced: Doc = {"state": "ok", "last_success_at": START}
    assert _current_state(live, account, {}, active=False).value == "never_synced"
    assert _current_state(live, account, {}, active=True).value == "syncing", "queued or running"
    assert _current_state(live, account, synced, active=True).value == "syncing"
    assert _current_state(live, account, synced, active=False).value == "ok"
    # a run that died after saying "syncing" is not shown as still running
    assert _current_state(live, account, {**synced, "state": "syncing"}, active=False).value == "ok"
    failed = {**synced, "state": "action_needed", "error": {"code": "wrongpass"}}
    assert _current_state(live, account, failed, active=False).value == "action_needed"
    assert _current_state({**live, "paused": True}, account, failed, active=True).value == "paused"
    assert _current_state(live, {**account, "closed": True}, synced, active=False).value == "closed"
    waiting = {"paused": False, "state": "action_needed"}
    assert _current_state(waiting, account, {}, active=False).value == "action_needed"
