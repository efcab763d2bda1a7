"""One sync run of the connector (handle_sync_request) against in-memory stand-ins: what it writes and
publishes, in which order, and how many database round trips it costs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from services.connector.domain.connections import AggregatorConnection, AggregatorUser
from services.connector.domain.failures import (
    AggregatorError,
    SyncError,
    SyncState,
    classify_connection_error,
)
from services.connector.domain.lines import fingerprint
from services.connector.domain.secrets import StateSigner, TokenCipher
from services.connector.domain.states import AccountSyncState
from services.connector.handlers import ConnectorConfig, ConnectorHandlers, connector_handlers
from shared.contract.payloads import SyncRequested
from shared.contract.topics import CONNECTIONS, SYNC_REQUESTS, SYNC_STATUS, TRANSACTIONS_RAW
from shared.settings import DEV_TOKEN_KEY
from tests.unit.connector.fakes import (
    FakeAggregator,
    FakeEntitlements,
    Lease,
    MemoryAnnouncer,
    MemoryStore,
    account,
    bank_account,
    connection,
    premium,
)

USER = "user-1"
CONN = f"{USER}:77"
RUN = "run-1"
NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
CIPHER = TokenCipher(DEV_TOKEN_KEY)

Doc = dict[str, Any]


class FakeRepository(MemoryStore):
    """The store of a run: one connection of the user, its accounts synced a day ago, the run claimed."""

    def __init__(self, accounts: list[str], *, state: SyncState | None = None) -> None:
        super().__init__()
        conn = connection(
            USER,
            "77",
            [account(a) for a in accounts],
            state=state,
            refreshed_update="2026-11-30T03:00:00",
        )
        self.connections[conn.key] = conn
        self.users[USER] = AggregatorUser(USER, CIPHER.encrypt("tok", USER), "9")
        self.rights[USER] = premium()
        for a in accounts:
            self.states[(USER, a)] = AccountSyncState(
                USER, a, "77", SyncState.OK, cursor=NOW - timedelta(days=1)
            )
        self.hold(CONN, RUN)

    def hold(self, connection_key: str, run_id: str) -> None:
        self.leases[connection_key] = Lease(run_id, NOW + timedelta(minutes=10))

    def holder(self, connection_key: str) -> str | None:
        held = self.leases.get(connection_key)
        return held.run_id if held else None


class FakePowens(FakeAggregator):
    def __init__(
        self, lines: dict[str, list[Doc]], *, broken: dict[str, BaseException] | None = None
    ) -> None:
        super().__init__({account_id: list(page) for account_id, page in lines.items()})
        self.broken = broken or {}


class FakePublisher(MemoryAnnouncer):
    def status(self) -> list[tuple[str, str]]:
        return [(event.name, key.split(":")[1]) for topic, key, event in self.sent if topic == SYNC_STATUS]


def handlers(repository: FakeRepository, powens: FakePowens, publisher: FakePublisher) -> ConnectorHandlers:
    return connector_handlers(
        repository,
        powens,
        FakeEntitlements(),
        publisher,
        CIPHER,
        StateSigner("test-secret-of-at-least-32-bytes-long"),
        ConnectorConfig("http://127.0.0.1:1", "http://127.0.0.1:2", "secret"),
        clock=lambda: NOW,
    )


def line(n: int) -> Doc:
    return {"id": n, "date": "2026-11-30", "value": -n, "original_wording": f"CB {n}", "coming": False}


def request(reason: Literal["nightly", "webhook"] = "nightly") -> SyncRequested:
    return SyncRequested(user_id=USER, sync_run_id=RUN, reason=reason, requested_at=NOW)


async def test_a_run_reads_once_writes_each_state_once_and_batches_its_events() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    powens = FakePowens({"a1": [line(1), line(2)], "a2": [line(3)]})
    await handlers(repository, powens, publisher).syncs.handle_sync_request(request(), "corr")

    # after the gate's look at the projected rights, what the run itself sends
    calls = repository.calls[repository.calls.index("projected_rights") + 1 :]
    assert sorted(calls[:3]) == ["account_states", "aggregator_user", "user_connections"]
    assert calls.count("account_states") == 1
    assert calls.count("aggregator_user") == 1
    assert calls[3] == "renew_run"
    assert calls.count("mark_syncing") == 1
    assert calls.count("record_outcomes ok") == 1
    # once the connection is let go, one more read: were accounts selected while the run ran?
    assert calls[-3:] == ["record_outcomes ok", "release_run", "user_connections"]
    # the refresh's stamp is new: written, with nothing else (state and error were already clear)
    assert repository.connection_writes == [{"refreshed_update": "2026-12-01T03:00:00"}]
    assert repository.holder(CONN) is None

    status = publisher.status()
    assert sorted(status[:2]) == [("sync.started", "a1"), ("sync.started", "a2")]
    assert sorted(status[2:]) == [("sync.succeeded", "a1"), ("sync.succeeded", "a2")]
    assert publisher.batches.count(SYNC_STATUS) == 2
    raw = [(key, event.name) for topic, key, event in publisher.sent if topic == TRANSACTIONS_RAW]
    assert len([name for _, name in raw if name == "transaction.observed"]) == 3
    # each account's completion comes after its lines, on their key (the importer checks its balance)
    for account_id in ("a1", "a2"):
        mine = [name for key, name in raw if key == f"{USER}:{account_id}"]
        assert mine[-1] == "account.synced"
        assert mine.count("account.synced") == 1
    for account_id, published in (("a1", 2), ("a2", 1)):
        state = repository.state(USER, account_id)
        assert state.state == "ok"
        assert state.cursor == NOW
        assert state.last_run is not None
        assert state.last_run.transactions == published
        assert state.last_run.sync_run_id == RUN


async def test_a_webhook_run_of_a_healthy_connection_writes_nothing_on_it() -> None:
    repository = FakeRepository(["a1"])
    powens = FakePowens({"a1": [line(1)]})
    await handlers(repository, powens, FakePublisher()).syncs.handle_sync_request(request("webhook"), "corr")
    assert repository.connection_writes == []
    assert repository.state(USER, "a1").state == "ok"


async def test_a_failing_account_is_recorded_and_the_others_are_not_lost() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    broken = AggregatorError(classify_connection_error("websiteUnavailable"))
    powens = FakePowens({"a1": [line(1)]}, broken={"a2": broken})
    await handlers(repository, powens, publisher).syncs.handle_sync_request(request(), "corr")

    assert repository.state(USER, "a1").state == "ok"
    failed = repository.state(USER, "a2")
    assert failed.state == "error"
    assert failed.error is not None
    assert failed.error.code == "websiteUnavailable"
    assert failed.cursor == NOW - timedelta(days=1), "a failed sync never moves the cursor"
    assert sorted(publisher.status()[2:]) == [("sync.failed", "a2"), ("sync.succeeded", "a1")]
    assert repository.calls.count("record_outcomes error,ok") == 1


async def test_an_unexpected_failure_keeps_the_other_accounts_and_is_raised() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    powens = FakePowens({"a1": [line(1)]}, broken={"a2": ConnectionResetError("kafka away")})
    with pytest.raises(ConnectionResetError):
        await handlers(repository, powens, publisher).syncs.handle_sync_request(request(), "corr")

    assert repository.state(USER, "a1").state == "ok"
    assert repository.state(USER, "a2").state == "syncing"  # the request is tried again
    assert ("sync.succeeded", "a1") in publisher.status()
    assert repository.calls[-1] == "release_run"
    assert repository.holder(CONN) is None


async def test_a_failed_refresh_fails_every_account_after_marking_them_syncing() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    powens = FakePowens({})
    powens.connection_state = "wrongpass"
    await handlers(repository, powens, publisher).syncs.handle_sync_request(request(), "corr")

    writes = [c for c in repository.calls if c.startswith(("mark_", "record_outcomes"))]
    assert writes == ["mark_syncing", "record_outcomes action_needed"]
    assert sorted(publisher.status()) == [("sync.failed", "a1"), ("sync.failed", "a2")]
    assert repository.connection_writes == [
        {
            "state": "action_needed",
            "error": SyncError("wrongpass", classify_connection_error("wrongpass").message, "reconnect"),
        }
    ]


async def test_an_account_selected_while_the_run_ran_gets_a_run_of_its_own() -> None:
    repository = FakeRepository(["a1"])
    conn = repository.connections[CONN]
    repository.connections[CONN] = replace(conn, accounts=(*conn.accounts, account("a2", selected=False)))

    class SelectedDuringTheRefresh(FakePowens):
        async def sync_connection(self, token: str, connection_id: str) -> AggregatorConnection:
            # the user selects a2 while the aggregator refreshes: its activation joins this run
            held = repository.connections[CONN]
            chosen = tuple(replace(a, selected=True) for a in held.accounts)
            repository.connections[CONN] = replace(held, accounts=chosen)
            return await super().sync_connection(token, connection_id)

    publisher = FakePublisher()
    powens = SelectedDuringTheRefresh({"a1": [line(1)], "a2": [line(2)]})
    await handlers(repository, powens, publisher).syncs.handle_sync_request(request(), "corr")

    assert [part for _, part in publisher.status()] == ["a1", "a1"], "the run synced what it had read"
    [follow_up] = [event for topic, _, event in publisher.sent if topic == SYNC_REQUESTS]
    assert (follow_up.data["reason"], follow_up.data["aggregator_account_ids"]) == ("activation", ["a2"])
    assert repository.holder(CONN) == follow_up.data["sync_run_id"], "claimed for the new run"


async def test_a_run_asked_for_some_accounts_requests_nothing_for_the_others() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    asked = SyncRequested(
        user_id=USER, sync_run_id=RUN, reason="activation", requested_at=NOW, aggregator_account_ids=["a1"]
    )
    await handlers(
        repository, FakePowens({"a1": [line(1)], "a2": [line(2)]}), publisher
    ).syncs.handle_sync_request(asked, "corr")
    assert [part for _, part in publisher.status()] == ["a1", "a1"]
    assert [event for topic, _, event in publisher.sent if topic == SYNC_REQUESTS] == [], "no run for a2"


async def test_a_connection_held_by_another_run_is_joined_not_synced() -> None:
    repository = FakeRepository(["a1"])
    repository.hold(CONN, "other-run")
    publisher = FakePublisher()
    await handlers(repository, FakePowens({"a1": [line(1)]}), publisher).syncs.handle_sync_request(
        request(), "corr"
    )
    assert publisher.sent == []
    assert repository.holder(CONN) == "other-run"
    assert not [c for c in repository.calls if c.startswith(("mark_", "record_outcomes"))]


async def test_a_sync_follows_the_banks_accounts_new_closed_and_balances() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    powens = FakePowens({"a1": [line(1)], "a2": [line(2)]})
    powens.accounts = [
        bank_account("a1", balance="120.40"),
        bank_account("a2", deleted=True),
        bank_account("a3", disabled=True),
    ]
    await handlers(repository, powens, publisher).syncs.handle_sync_request(request(), "corr")

    written = repository.connection_writes[0]["accounts"]
    assert isinstance(written, tuple)
    accounts = {a.aggregator_account_id: a for a in written}
    assert accounts["a1"].balance == "120.40"
    assert accounts["a1"].closed is False
    assert accounts["a1"].selected is True
    assert accounts["a2"].closed is True
    assert accounts["a3"].selected is False
    assert accounts["a3"].closed is False
    announced = [
        (
            event.name,
            event.data.get("account", {}).get("aggregator_account_id")
            or event.data.get("aggregator_account_id"),
        )
        for topic, _, event in publisher.sent
        if topic == CONNECTIONS
    ]
    assert sorted(announced) == [("account.closed", "a2"), ("account.discovered", "a3")]
    # the closed account is not fetched any more and says so; the new one waits to be selected
    assert set(powens.asked) == {"a1"}
    assert repository.state(USER, "a2").state == "closed"
    assert (USER, "a3") not in repository.states
    synced = [event for topic, _, event in publisher.sent if event.name == "account.synced"]
    assert [(e.data["aggregator_account_id"], e.data["balance"], e.data["coming"]) for e in synced] == [
        ("a1", "120.40", "-1.50")
    ]

    # the next read of the same list changes nothing and announces nothing again
    publisher.sent.clear()
    repository.connection_writes.clear()  # the store holds what was written: the next run reads it
    await handlers(repository, powens, publisher).syncs.handle_sync_request(request(), "corr")
    assert repository.connection_writes == []
    assert [e for t, _, e in publisher.sent if t == CONNECTIONS] == []


async def test_a_deleted_app_account_is_fetched_again_from_the_start_and_the_mark_lifted() -> None:
    repository = FakeRepository(["a1", "a2"])
    repository.seen = {f"{USER}:a1:1": fingerprint(line(1)), f"{USER}:a2:2": fingerprint(line(2))}
    repository.states[(USER, "a1")] = replace(repository.state(USER, "a1"), reimport="deleted-event-1")
    publisher = FakePublisher()
    powens = FakePowens({"a1": [line(1)], "a2": [line(2)]})
    await handlers(repository, powens, publisher).syncs.handle_sync_request(request(), "corr")

    assert powens.asked["a1"] == {}, "a whole re-import asks for everything, not since the cursor"
    assert "last_update" in powens.asked["a2"]
    observed = [key for topic, key, e in publisher.sent if e.name == "transaction.observed"]
    assert observed == [f"{USER}:a1"], "the known line of the deleted account goes out again, not a2's"
    assert repository.state(USER, "a1").reimport is None
    started = {
        e.data["aggregator_account_id"]: e.data["initial"]
        for _, _, e in publisher.sent
        if e.name == "sync.started"
    }
    assert started == {"a1": True, "a2": False}


async def test_a_nightly_run_leaves_connections_waiting_on_the_user_alone() -> None:
    repository = FakeRepository(["a1"], state=SyncState.ACTION_NEEDED)
    powens = FakePowens({"a1": [line(1)]})
    await handlers(repository, powens, FakePublisher()).syncs.handle_sync_request(request(), "corr")
    assert powens.asked == {}
    assert "renew_run" not in repository.calls
