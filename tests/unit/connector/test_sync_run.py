"""One sync run of the connector (handle_sync_request) against in-memory stand-ins: what it writes and
publishes, in which order, and how many database round trips it costs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import pytest

from services.connector.domain import classify_connection_error, fingerprint
from services.connector.gate import GateAnswer, SyncGate
from services.connector.handlers import ConnectorConfig, ConnectorHandlers
from services.connector.powens import AggregatorError, PowensClient
from services.connector.repository import ConnectorRepository
from services.connector.security import StateSigner, TokenCipher
from shared.contract.envelope import CloudEvent
from shared.contract.payloads import SyncRequested
from shared.contract.topics import CONNECTIONS, SYNC_STATUS, TRANSACTIONS_RAW
from shared.kafka import EventPublisher
from shared.settings import DEV_TOKEN_KEY

USER = "user-1"
CONN = f"{USER}:77"
RUN = "run-1"
NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
CIPHER = TokenCipher(DEV_TOKEN_KEY)

Doc = dict[str, Any]


class FakeRepository:
    """The ConnectorRepository calls of a run, in memory; `calls` lists them in the order sent."""

    def __init__(self, accounts: list[str], *, connection: Doc | None = None) -> None:
        self.calls: list[str] = []
        self.connection: Doc = connection or {
            "_id": CONN,
            "connection_id": "77",
            "user_id": USER,
            "bank": {"id": "1", "name": "Banque"},
            "state": None,
            "error": None,
            "refreshed_update": "2026-11-30T03:00:00",
            "removed": False,
            "paused": False,
            "accounts": [{"aggregator_account_id": a, "selected": True, "currency": "EUR"} for a in accounts],
        }
        self.states: dict[str, Doc] = {
            a: {"user_id": USER, "aggregator_account_id": a, "cursor": NOW - timedelta(days=1), "state": "ok"}
            for a in accounts
        }
        self.runs: dict[str, str] = {CONN: RUN}
        self.seen: dict[str, str] = {}
        self.connection_writes: list[Doc] = []

    async def user_connections(self, user_id: str) -> list[Doc]:
        self.calls.append("user_connections")
        return [self.connection]

    async def account_states(self, user_id: str) -> list[Doc]:
        self.calls.append("account_states")
        return list(self.states.values())

    async def aggregator_user(self, user_id: str) -> Doc | None:
        self.calls.append("aggregator_user")
        return {"_id": user_id, "token_enc": CIPHER.encrypt("tok", user_id)}

    async def renew_run(self, connection_id: str, run_id: str, now: datetime, lease: timedelta) -> str:
        self.calls.append("renew_run")
        return self.runs.setdefault(connection_id, run_id)

    async def release_run(self, connection_id: str, run_id: str) -> None:
        self.calls.append("release_run")
        if self.runs.get(connection_id) == run_id:
            del self.runs[connection_id]

    async def extend_run(self, connection_id: str, run_id: str, until: datetime) -> None:
        self.calls.append("extend_run")

    async def update_account_states(self, user_id: str, account_ids: list[str], fields: Doc) -> None:
        await self.set_account_states(user_id, dict.fromkeys(account_ids, fields))

    async def set_account_states(
        self, user_id: str, fields: dict[str, Doc], *, clear_reimport: dict[str, str] | None = None
    ) -> None:
        await asyncio.sleep(0)
        self.calls.append(
            "set_account_states " + ",".join(sorted({str(f["state"]) for f in fields.values()}))
        )
        for account_id, own in fields.items():
            self.states.setdefault(account_id, {}).update(own)
        for account_id, mark in (clear_reimport or {}).items():
            if self.states[account_id].get("reimport") == mark:
                del self.states[account_id]["reimport"]

    async def set_connection_fields(self, connection_id: str, fields: Doc) -> None:
        self.calls.append("set_connection_fields")
        self.connection_writes.append(fields)

    async def known_fingerprints(self, account: str, transaction_ids: list[str]) -> dict[str, str]:
        self.calls.append("known_fingerprints")
        return {t: self.seen[f"{account}:{t}"] for t in transaction_ids if f"{account}:{t}" in self.seen}

    async def remember_fingerprints(self, account: str, prints: dict[str, str], known: set[str]) -> None:
        self.calls.append("remember_fingerprints")
        self.seen.update({f"{account}:{t}": fp for t, fp in prints.items()})


class FakePowens:
    def __init__(
        self, lines: dict[str, list[Doc]], *, broken: dict[str, BaseException] | None = None
    ) -> None:
        self.lines = lines
        self.broken = broken or {}
        self.connection_state: str | None = None
        # the bank's account list (Powens `all_accounts`) when a test gives one
        self.accounts: list[Doc] | None = None
        self.asked: dict[str, dict[str, str]] = {}

    async def sync_connection(self, token: str, connection_id: str) -> Doc:
        assert token == "tok"
        refreshed: Doc = {
            "id": connection_id,
            "state": self.connection_state,
            "last_update": "2026-12-01T03:00:00",
        }
        if self.accounts is not None:
            refreshed["accounts"] = self.accounts
        return refreshed

    async def connection(self, token: str, connection_id: str) -> Doc:
        return {"id": connection_id, "state": self.connection_state, "last_update": "2026-12-01T02:00:00"}

    async def transactions(
        self, token: str, account_id: str, params: dict[str, str]
    ) -> AsyncIterator[list[Doc]]:
        await asyncio.sleep(0)
        self.asked[account_id] = params
        if account_id in self.broken:
            raise self.broken[account_id]
        yield self.lines[account_id]


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, CloudEvent]] = []
        self.batches: list[str] = []

    async def publish(self, topic: str, key: str, event: CloudEvent) -> None:
        self.sent.append((topic, key, event))

    async def publish_many(self, topic: str, items: list[tuple[str, CloudEvent]]) -> None:
        self.batches.append(topic)
        self.sent.extend((topic, key, event) for key, event in items)

    def status(self) -> list[tuple[str, str]]:
        return [(event.name, key.split(":")[1]) for topic, key, event in self.sent if topic == SYNC_STATUS]


class AllowAll:
    async def check(self, user_id: str) -> GateAnswer:
        return GateAnswer(True, "premium", None, 1)


def handlers(repository: FakeRepository, powens: FakePowens, publisher: FakePublisher) -> ConnectorHandlers:
    return ConnectorHandlers(
        cast(ConnectorRepository, repository),
        cast(PowensClient, powens),
        cast(SyncGate, AllowAll()),
        cast(EventPublisher, publisher),
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
    await handlers(repository, powens, publisher).handle_sync_request(request(), "corr")

    assert sorted(repository.calls[:3]) == ["account_states", "aggregator_user", "user_connections"]
    assert repository.calls.count("account_states") == 1
    assert repository.calls.count("aggregator_user") == 1
    assert repository.calls[3] == "renew_run"
    assert repository.calls.count("set_account_states syncing") == 1
    assert repository.calls.count("set_account_states ok") == 1
    assert repository.calls[-2:] == ["set_account_states ok", "release_run"]
    # the refresh's stamp is new: written, with nothing else (state and error were already clear)
    assert repository.connection_writes == [{"refreshed_update": "2026-12-01T03:00:00"}]
    assert CONN not in repository.runs

    status = publisher.status()
    assert sorted(status[:2]) == [("sync.started", "a1"), ("sync.started", "a2")]
    assert sorted(status[2:]) == [("sync.succeeded", "a1"), ("sync.succeeded", "a2")]
    assert publisher.batches.count(SYNC_STATUS) == 2
    raw = [(key, event.name) for topic, key, event in publisher.sent if topic == TRANSACTIONS_RAW]
    assert len([name for _, name in raw if name == "transaction.observed"]) == 3
    # each account's completion comes after its lines, on their key (the importer checks its balance)
    for account in ("a1", "a2"):
        mine = [name for key, name in raw if key == f"{USER}:{account}"]
        assert mine[-1] == "account.synced"
        assert mine.count("account.synced") == 1
    for account, published in (("a1", 2), ("a2", 1)):
        state = repository.states[account]
        assert state["state"] == "ok"
        assert state["cursor"] == NOW
        assert state["last_run"]["transactions"] == published
        assert state["last_run"]["sync_run_id"] == RUN


async def test_a_webhook_run_of_a_healthy_connection_writes_nothing_on_it() -> None:
    repository = FakeRepository(["a1"])
    powens = FakePowens({"a1": [line(1)]})
    await handlers(repository, powens, FakePublisher()).handle_sync_request(request("webhook"), "corr")
    assert repository.connection_writes == []
    assert repository.states["a1"]["state"] == "ok"


async def test_a_failing_account_is_recorded_and_the_others_are_not_lost() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    broken = AggregatorError(classify_connection_error("websiteUnavailable"))
    powens = FakePowens({"a1": [line(1)]}, broken={"a2": broken})
    await handlers(repository, powens, publisher).handle_sync_request(request(), "corr")

    assert repository.states["a1"]["state"] == "ok"
    failed = repository.states["a2"]
    assert failed["state"] == "error"
    assert failed["error"]["code"] == "websiteUnavailable"
    assert failed["cursor"] == NOW - timedelta(days=1), "a failed sync never moves the cursor"
    assert sorted(publisher.status()[2:]) == [("sync.failed", "a2"), ("sync.succeeded", "a1")]
    assert repository.calls.count("set_account_states error,ok") == 1


async def test_an_unexpected_failure_keeps_the_other_accounts_and_is_raised() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    powens = FakePowens({"a1": [line(1)]}, broken={"a2": ConnectionResetError("kafka away")})
    with pytest.raises(ConnectionResetError):
        await handlers(repository, powens, publisher).handle_sync_request(request(), "corr")

    assert repository.states["a1"]["state"] == "ok"
    assert repository.states["a2"]["state"] == "syncing"  # the request is tried again
    assert ("sync.succeeded", "a1") in publisher.status()
    assert repository.calls[-1] == "release_run"
    assert CONN not in repository.runs


async def test_a_failed_refresh_fails_every_account_after_marking_them_syncing() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    powens = FakePowens({})
    powens.connection_state = "wrongpass"
    await handlers(repository, powens, publisher).handle_sync_request(request(), "corr")

    writes = [c for c in repository.calls if c.startswith("set_account_states")]
    assert writes == ["set_account_states syncing", "set_account_states action_needed"]
    assert sorted(publisher.status()) == [("sync.failed", "a1"), ("sync.failed", "a2")]
    assert repository.connection_writes == [
        {
            "state": "action_needed",
            "error": {
                "code": "wrongpass",
                "message": repository.states["a1"]["error"]["message"],
                "action": "reconnect",
            },
        }
    ]


async def test_a_connection_held_by_another_run_is_joined_not_synced() -> None:
    repository = FakeRepository(["a1"])
    repository.runs[CONN] = "other-run"
    publisher = FakePublisher()
    await handlers(repository, FakePowens({"a1": [line(1)]}), publisher).handle_sync_request(
        request(), "corr"
    )
    assert publisher.sent == []
    assert repository.runs[CONN] == "other-run"
    assert not [c for c in repository.calls if c.startswith("set_account_states")]


def bank_account(
    account_id: str, *, disabled: bool = False, deleted: bool = False, balance: str = "10.00"
) -> Doc:
    return {
        "id": account_id,
        "name": f"Compte {account_id}",
        "type": "checking",
        "balance": balance,
        "coming": "-1.50",
        "currency": {"id": "EUR"},
        "disabled": "2026-11-01T00:00:00Z" if disabled else None,
        "deleted": "2026-12-01T00:00:00Z" if deleted else None,
    }


async def test_a_sync_follows_the_banks_accounts_new_closed_and_balances() -> None:
    repository = FakeRepository(["a1", "a2"])
    publisher = FakePublisher()
    powens = FakePowens({"a1": [line(1)], "a2": [line(2)]})
    powens.accounts = [
        bank_account("a1", balance="120.40"),
        bank_account("a2", deleted=True),
        bank_account("a3", disabled=True),
    ]
    await handlers(repository, powens, publisher).handle_sync_request(request(), "corr")

    accounts = {a["aggregator_account_id"]: a for a in repository.connection_writes[0]["accounts"]}
    assert accounts["a1"]["balance"] == "120.40"
    assert accounts["a1"]["closed"] is False
    assert accounts["a1"]["selected"] is True
    assert accounts["a2"]["closed"] is True
    assert accounts["a3"]["selected"] is False
    assert accounts["a3"]["closed"] is False
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
    assert repository.states["a2"]["state"] == "closed"
    assert "a3" not in repository.states
    synced = [event for topic, _, event in publisher.sent if event.name == "account.synced"]
    assert [(e.data["aggregator_account_id"], e.data["balance"], e.data["coming"]) for e in synced] == [
        ("a1", "120.40", "-1.50")
    ]

    # the next read of the same list changes nothing and announces nothing again
    publisher.sent.clear()
    repository.connection = {**repository.connection, **repository.connection_writes[-1]}
    repository.connection_writes.clear()
    await handlers(repository, powens, publisher).handle_sync_request(request(), "corr")
    assert repository.connection_writes == []
    assert [e for t, _, e in publisher.sent if t == CONNECTIONS] == []


async def test_a_deleted_app_account_is_fetched_again_from_the_start_and_the_mark_lifted() -> None:
    repository = FakeRepository(["a1", "a2"])
    repository.seen = {f"{USER}:a1:1": fingerprint(line(1)), f"{USER}:a2:2": fingerprint(line(2))}
    repository.states["a1"]["reimport"] = "deleted-event-1"
    publisher = FakePublisher()
    powens = FakePowens({"a1": [line(1)], "a2": [line(2)]})
    await handlers(repository, powens, publisher).handle_sync_request(request(), "corr")

    assert powens.asked["a1"] == {}, "a whole re-import asks for everything, not since the cursor"
    assert "last_update" in powens.asked["a2"]
    observed = [key for topic, key, e in publisher.sent if e.name == "transaction.observed"]
    assert observed == [f"{USER}:a1"], "the known line of the deleted account goes out again, not a2's"
    assert "reimport" not in repository.states["a1"]
    started = {
        e.data["aggregator_account_id"]: e.data["initial"]
        for _, _, e in publisher.sent
        if e.name == "sync.started"
    }
    assert started == {"a1": True, "a2": False}


async def test_a_nightly_run_leaves_connections_waiting_on_the_user_alone() -> None:
    repository = FakeRepository(["a1"])
    repository.connection["state"] = "action_needed"
    powens = FakePowens({"a1": [line(1)]})
    await handlers(repository, powens, FakePublisher()).handle_sync_request(request(), "corr")
    assert powens.asked == {}
    assert "renew_run" not in repository.calls
