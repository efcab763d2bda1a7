"""The nightly run's rules with in-memory fakes: users spread over the window at stable moments,
connections waiting on the user left alone, a night that overran its window reported."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta

from services.connector.domain.accounts import BankAccount
from services.connector.domain.failures import SyncError, SyncState
from services.connector.domain.nightly import NightlyWindow, nightly_order, spreading_span
from services.connector.domain.secrets import StateSigner, TokenCipher
from services.connector.domain.states import AccountSyncState, current_state
from services.connector.handlers import ConnectorConfig, ConnectorHandlers, connector_handlers
from shared.contract.topics import SYNC_REQUESTS, SYNC_STATUS
from shared.settings import DEV_TOKEN_KEY
from tests.unit.connector.fakes import (
    Clock,
    FakeAggregator,
    FakeEntitlements,
    MemoryAnnouncer,
    MemoryStore,
    premium,
)
from tests.unit.connector.fakes import connection as linked

START = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)


class FakeRepository(MemoryStore):
    """The night's store: every user's connection `<user>:c`, every user entitled; `claimed_at` lists
    when each set of runs was claimed."""

    def __init__(self, connections: list[tuple[str, SyncState | None, bool]]) -> None:
        super().__init__()
        for user, state, paused in connections:
            conn = linked(user, "c", [], state=state, paused=paused)
            self.connections[conn.key] = conn
            self.rights[user] = premium()
        self.claimed_at: list[tuple[datetime, list[str]]] = []

    async def claim_runs(
        self, wanted: dict[str, str], now: datetime, lease: timedelta, *, night: str | None = None
    ) -> dict[str, str]:
        self.claimed_at.append((now, sorted(wanted)))
        return await super().claim_runs(wanted, now, lease, night=night)


def connection(
    user: str, state: SyncState | None = None, paused: bool = False
) -> tuple[str, SyncState | None, bool]:
    return (user, state, paused)


def handlers(repository: FakeRepository, publisher: MemoryAnnouncer, clock: Clock) -> ConnectorHandlers:
    return connector_handlers(
        repository,
        FakeAggregator(),
        FakeEntitlements(),
        publisher,
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
    clock = Clock(START)
    repository = FakeRepository(
        [connection(f"u{n}") for n in range(20)]
        + [connection("waiting", state=SyncState.ACTION_NEEDED), connection("paused", paused=True)]
    )
    publisher = MemoryAnnouncer()
    span = timedelta(minutes=90)
    report = await handlers(repository, publisher, clock).nightly.nightly_run(
        "corr", night="2026-12-07", spread_over=span, sleep=clock.sleep
    )
    assert asdict(report) == {"users": 22, "requested": 21, "skipped": 1, "waiting_on_user": 1}
    requested = [key for topic, key, _ in publisher.sent if topic == SYNC_REQUESTS]
    assert "waiting" not in requested
    expected = dict(
        (user, offset) for offset, user in nightly_order([f"u{n}" for n in range(20)] + ["paused"], span)
    )
    for at, conns in repository.claimed_at:
        for conn in conns:
            assert at - START == expected[conn.split(":")[0]], "claimed at the user's own moment"
    assert clock.now - START < span
    assert {lease.night for lease in repository.leases.values()} == {"2026-12-07"}


async def test_a_night_still_running_at_the_windows_end_is_reported() -> None:
    clock = Clock(START)
    repository = FakeRepository([connection("u1"), connection("u2")])
    publisher = MemoryAnnouncer()
    connector = handlers(repository, publisher, clock).nightly
    await connector.nightly_run("corr", night="2026-12-07")
    end = START + timedelta(hours=2)
    report = await connector.check_night("2026-12-07", end, "corr")
    assert report.overran is True
    assert report.unfinished_connections == 2
    [(topic, key, event)] = [s for s in publisher.sent if s[0] == SYNC_STATUS]
    assert (topic, key, event.name) == (SYNC_STATUS, "nightly", "nightly.overran")
    assert event.data["unfinished_connections"] == 2

    repository.leases.clear()  # every run released its connection: the night ended in time
    publisher.sent.clear()
    assert (await connector.check_night("2026-12-07", end, "corr")).overran is False
    assert publisher.sent == []


def test_the_status_tells_the_truth() -> None:
    live = linked("u", "c", [])
    account = BankAccount("a", selected=True)
    synced = AccountSyncState("u", "a", state=SyncState.OK, last_success_at=START)
    assert current_state(live, account, None, active=False).value == "never_synced"
    assert current_state(live, account, None, active=True).value == "syncing", "queued or running"
    assert current_state(live, account, synced, active=True).value == "syncing"
    assert current_state(live, account, synced, active=False).value == "ok"
    # a run that died after saying "syncing" is not shown as still running
    assert current_state(live, account, replace(synced, state=SyncState.SYNCING), active=False).value == "ok"
    failed = replace(synced, state=SyncState.ACTION_NEEDED, error=SyncError("wrongpass", ""))
    assert current_state(live, account, failed, active=False).value == "action_needed"
    assert current_state(replace(live, paused=True), account, failed, active=True).value == "paused"
    assert current_state(live, replace(account, closed=True), synced, active=False).value == "closed"
    waiting = replace(live, state=SyncState.ACTION_NEEDED)
    assert current_state(waiting, account, None, active=False).value == "action_needed"
