"""The connector's handlers driven through their public methods, each body twice: on the in-memory fakes
(tests/unit/connector/fakes.py) and on the real adapters over the real engines (ConnectorRepository on
FerretDB, KafkaAnnouncer on Kafka, events read back from the topics). The aggregator and the
entitlements service are the fakes in both variants: what is checked is the handlers over the real store
and bus, with the aggregator's answers under the test's control."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from harness.devstack import Engines
from services.connector.adapters.kafka import KafkaAnnouncer
from services.connector.adapters.mongo import ConnectorRepository
from services.connector.domain.accounts import BankAccount
from services.connector.domain.connections import AggregatorUser
from services.connector.domain.failures import SyncState
from services.connector.domain.lines import BankLine
from services.connector.domain.nightly import NightlyReport
from services.connector.domain.rights import Rights
from services.connector.domain.secrets import StateSigner, TokenCipher, WebhookVerifier
from services.connector.domain.webhooks import ConnectionSynced
from services.connector.handlers import ConnectorConfig, ConnectorHandlers, connector_handlers
from services.connector.ports import Announcer, ConnectorStore
from shared.batch_publisher import BatchPublisher
from shared.contract.envelope import CloudEvent
from shared.contract.payloads import AccountBalanceChecked, AccountDeleted, EntitlementChanged, SyncRequested
from shared.contract.topics import CONNECTIONS, SYNC_REQUESTS, SYNC_STATUS, TRANSACTIONS_RAW
from shared.mongo import make_client
from shared.problems import Problem
from shared.settings import DEV_TOKEN_KEY
from tests.kafka_helpers import read_all
from tests.unit.connector.fakes import (
    NOW,
    Clock,
    FakeAggregator,
    FakeEntitlements,
    MemoryAnnouncer,
    MemoryStore,
    account,
    bank_account,
    connection,
    premium,
)

CIPHER = TokenCipher(DEV_TOKEN_KEY)
WEBHOOK_SECRET = "test-webhook-secret"
CONFIG = ConnectorConfig("http://connector.test", "http://aggregator.test", WEBHOOK_SECRET)


@dataclass
class Rig:
    """The handlers over one variant's store and bus, a user of their own, and what they announced."""

    handlers: ConnectorHandlers
    store: ConnectorStore
    aggregator: FakeAggregator
    entitlements: FakeEntitlements
    clock: Clock
    announcer: Announcer
    bootstrap: str | None
    user: str = field(default_factory=lambda: f"user-{uuid.uuid4().hex[:10]}")
    corr: str = field(default_factory=lambda: f"corr-{uuid.uuid4().hex}")

    async def events(self, topic: str) -> list[tuple[str, CloudEvent]]:
        """What the handlers announced on `topic` in this test (its correlation id), in order."""
        if isinstance(self.announcer, MemoryAnnouncer):
            sent = [(key, event) for t, key, event in self.announcer.sent if t == topic]
        else:
            assert self.bootstrap is not None
            sent = [(key, event) for key, event, _ in await read_all(self.bootstrap, topic)]
        return [(key, event) for key, event in sent if event.correlationid == self.corr]

    async def names(self, topic: str) -> list[str]:
        return [event.name for _, event in await self.events(topic)]

    async def link(
        self,
        accounts: Sequence[BankAccount],
        *,
        user: str | None = None,
        connection_id: str = "77",
        state: SyncState | None = None,
        paused: bool = False,
        rights: Rights | None = None,
    ) -> str:
        """A user who activated, linked `connection_id` with `accounts` and is entitled; returns the user."""
        user = user or self.user
        token, id_user = f"tok-{user}", f"agg-{user}"
        sealed = CIPHER.encrypt(token, user)
        await self.store.save_aggregator_user(AggregatorUser(user, sealed, id_user), NOW)
        linked = connection(user, connection_id, accounts, state=state, paused=paused)
        await self.store.save_connection(linked)
        await self.store.project_rights(user, rights or premium())
        self.aggregator.user(token, id_user, connection_id)
        return user


def lines(*numbers: int) -> list[BankLine]:
    return [
        {"id": n, "id_account": 1, "date": "2026-11-30", "value": -n, "original_wording": f"CB {n}"}
        for n in numbers
    ]


def request(rig: Rig, run_id: str, reason: str = "on_demand") -> SyncRequested:
    return SyncRequested.model_validate(
        {"user_id": rig.user, "sync_run_id": run_id, "reason": reason, "requested_at": NOW}
    )


@pytest.fixture(params=["memory", pytest.param("engines", marks=pytest.mark.engines)])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    aggregator, entitlements, clock = FakeAggregator(), FakeEntitlements(), Clock()
    signer = StateSigner("test-secret-of-at-least-32-bytes-long")
    if request.param == "memory":
        store, announcer = MemoryStore(), MemoryAnnouncer()
        handlers = connector_handlers(
            store, aggregator, entitlements, announcer, CIPHER, signer, CONFIG, clock
        )
        yield Rig(handlers, store, aggregator, entitlements, clock, announcer, None)
        return
    engines: Engines = request.getfixturevalue("engines")
    client = make_client(engines.mongodb_url)
    db = client[f"conn_{uuid.uuid4().hex[:8]}"]
    repository = ConnectorRepository(db)
    await repository.create_indexes()
    events = BatchPublisher(engines.kafka_bootstrap, "test-connector-events", "connector")
    lines_ = BatchPublisher(engines.kafka_bootstrap, "test-connector-lines", "connector")
    kafka = KafkaAnnouncer(events, lines_)
    try:
        handlers = connector_handlers(
            repository, aggregator, entitlements, kafka, CIPHER, signer, CONFIG, clock
        )
        yield Rig(handlers, repository, aggregator, entitlements, clock, kafka, engines.kafka_bootstrap)
    finally:
        await events.stop()
        await lines_.stop()
        await client.drop_database(db.name)
        await client.close()


async def refused(awaitable: object, status: int, code: str) -> None:
    with pytest.raises(Problem) as caught:
        await awaitable  # type: ignore[misc]
    assert (caught.value.status, caught.value.code) == (status, code)


# --- linking --------------------------------------------------------------------------------------


async def test_activation_asks_the_gate_and_keeps_one_aggregator_user(rig: Rig) -> None:
    await refused(rig.handlers.linking.activate(rig.user, rig.corr), 403, "not_entitled")
    rig.entitlements.unavailable = True
    await refused(rig.handlers.linking.activate(f"{rig.user}-2", rig.corr), 503, "entitlements_unavailable")

    await rig.store.project_rights(rig.user, premium(version=2))  # they subscribed
    first = await rig.handlers.linking.activate(rig.user, rig.corr)
    second = await rig.handlers.linking.activate(rig.user, rig.corr)
    assert first.connect_url.startswith("http://aggregator.test/2.0/auth/webview/connect?")
    assert "client_id=test-client" in first.connect_url
    assert first.state != second.state
    assert len(rig.aggregator.tokens) == 1, "the second activation reuses the aggregator user"
    kept = await rig.store.aggregator_user(rig.user)
    assert kept is not None
    assert CIPHER.decrypt(kept.token_enc, rig.user) == next(iter(rig.aggregator.tokens))


async def test_the_callback_links_once_in_the_order_of_issue_17(rig: Rig) -> None:
    await rig.store.project_rights(rig.user, premium())
    link = await rig.handlers.linking.activate(rig.user, rig.corr)
    token = next(iter(rig.aggregator.tokens))
    rig.aggregator.linked[token] = ["77"]
    rig.aggregator.accounts = [bank_account("a1"), bank_account("a2", disabled=True)]
    callback = rig.handlers.linking.callback

    await refused(callback("77", "forged.state", "x", rig.corr), 400, "invalid_state")
    await refused(callback("78", link.state, "x", rig.corr), 404, "unknown_connection")
    # a code the aggregator never issued, then one of another user: refused, the state is not used up
    await refused(callback("77", link.state, "nope", rig.corr), 400, "invalid_code")
    rig.aggregator.codes["stolen"] = "someone-else"
    await refused(callback("77", link.state, "stolen", rig.corr), 400, "invalid_code")

    rig.aggregator.codes["good"] = rig.aggregator.tokens[token]
    conn = await callback("77", link.state, "good", rig.corr)
    assert [(a.aggregator_account_id, a.selected) for a in conn.accounts] == [("a1", True), ("a2", False)]
    assert conn.bank.name == "Banque Test"
    rig.aggregator.codes["again"] = rig.aggregator.tokens[token]
    await refused(callback("77", link.state, "again", rig.corr), 409, "activation_used")

    assert await rig.names(CONNECTIONS) == ["connection.linked", "account.discovered", "account.discovered"]
    listed = await rig.handlers.connections.list_connections(rig.user)
    assert [c.connection_id for c in listed] == ["77"]


async def test_back_from_reconnect_the_connection_is_healthy_and_syncs_at_once(rig: Rig) -> None:
    await rig.link([account("a1")], state=SyncState.ACTION_NEEDED)
    link = await rig.handlers.linking.reconnect(rig.user, "77", rig.corr)
    assert "/2.0/auth/webview/reconnect?" in link.connect_url
    assert "connection_id=77" in link.connect_url
    rig.aggregator.codes["back"] = f"agg-{rig.user}"

    conn = await rig.handlers.linking.callback("77", link.state, "back", rig.corr)
    assert conn.state is None
    assert conn.error is None
    [(_, changed)] = await rig.events(CONNECTIONS)
    assert (changed.name, changed.data["reconnected"], changed.data["state"]) == (
        "connection.state_changed",
        True,
        "active",
    )
    [(key, requested)] = await rig.events(SYNC_REQUESTS)
    assert (key, requested.data["reason"], requested.data["connection_id"]) == (rig.user, "on_demand", "77")
    stored = await rig.store.connection(rig.user, "77")
    assert stored is not None
    assert stored.state is None


# --- connections ----------------------------------------------------------------------------------


async def test_choosing_accounts_enables_them_and_starts_their_first_sync(rig: Rig) -> None:
    await rig.link([account("a1"), account("a2", selected=False)])
    selecting = rig.handlers.connections.select_accounts
    await refused(selecting(rig.user, "77", ["zz"], rig.corr), 422, "unknown_account")
    await refused(selecting(rig.user, "99", ["a1"], rig.corr), 404, "unknown_connection")

    conn = await selecting(rig.user, "77", ["a2"], rig.corr)
    assert [(a.aggregator_account_id, a.selected) for a in conn.accounts] == [("a1", False), ("a2", True)]
    assert sorted(rig.aggregator.enabled) == [("a1", False), ("a2", True)]
    [(_, changed)] = await rig.events(CONNECTIONS)
    assert (changed.name, changed.data["selected"]) == ("account.selection_changed", ["a2"])
    [(_, requested)] = await rig.events(SYNC_REQUESTS)
    assert (requested.data["reason"], requested.data["aggregator_account_ids"]) == ("activation", ["a2"])
    stored = await rig.store.connection(rig.user, "77")
    assert stored is not None
    assert stored.accounts == conn.accounts


async def test_a_removed_connection_is_gone_from_the_list_and_announced(rig: Rig) -> None:
    await rig.link([account("a1")])
    await rig.handlers.connections.delete_connection(rig.user, "77", rig.corr)
    assert rig.aggregator.deleted_connections == ["77"]
    assert await rig.handlers.connections.list_connections(rig.user) == []
    assert await rig.names(CONNECTIONS) == ["connection.removed"]
    again = rig.handlers.connections.delete_connection(rig.user, "77", rig.corr)
    await refused(again, 404, "unknown_connection")


# --- sync requests and runs -----------------------------------------------------------------------


async def test_a_request_made_while_a_run_holds_the_connection_joins_it(rig: Rig) -> None:
    await rig.link([account("a1")])
    first = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    second = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    assert second == first
    [(key, requested)] = await rig.events(SYNC_REQUESTS)
    assert (key, requested.id, requested.data["sync_run_id"]) == (rig.user, first, first)
    assert await rig.store.active_run(f"{rig.user}:77", NOW) == first


async def test_a_run_publishes_new_lines_once_and_moves_the_cursor(rig: Rig) -> None:
    await rig.link([account("a1"), account("a2")])
    rig.aggregator.lines = {"a1": lines(1, 2), "a2": lines(3)}
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)

    raw = await rig.events(TRANSACTIONS_RAW)
    for account_id, count in (("a1", 2), ("a2", 1)):
        mine = [event for key, event in raw if key == f"{rig.user}:{account_id}"]
        assert [e.name for e in mine] == ["transaction.observed"] * count + ["account.synced"]
        assert mine[-1].data["transactions"] == count
    # the first line of a1 (one key keeps its order; records of two keys may interleave either way)
    observed = next(e for key, e in raw if key == f"{rig.user}:a1" and e.name == "transaction.observed")
    assert observed.data["transaction"] == lines(1)[0], "the bank's line goes on as it came"
    assert sorted(await rig.names(SYNC_STATUS)) == ["sync.started"] * 2 + ["sync.succeeded"] * 2
    states = {s.aggregator_account_id: s for s in await rig.store.account_states(rig.user)}
    assert {a: (s.state, s.cursor) for a, s in states.items()} == {
        "a1": (SyncState.OK, NOW),
        "a2": (SyncState.OK, NOW),
    }
    assert await rig.store.active_run(f"{rig.user}:77", NOW) is None, "the lease is let go"
    assert rig.aggregator.asked == {"a1": {}, "a2": {}}, "a first sync asks for everything"

    # the same lines again, a day later: nothing new is published, the cursor moves, with the overlap
    rig.clock.now = NOW + timedelta(days=1)
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)
    assert len([e for _, e in await rig.events(TRANSACTIONS_RAW) if e.name == "transaction.observed"]) == 3
    assert rig.aggregator.asked["a1"] == {"last_update": "2026-12-01 02:30:00"}
    states = {s.aggregator_account_id: s for s in await rig.store.account_states(rig.user)}
    assert states["a1"].cursor == NOW + timedelta(days=1)


async def test_a_run_that_stalled_past_its_lease_stops_once_another_run_took_the_connection(rig: Rig) -> None:
    """A run paused past its lease (a replica stopped, then resumed) while another request took the
    connection over: at its next renewal it learns it lost the connection, publishes no more and
    records no outcome (the other run does); the lease stays the other run's."""
    await rig.link([account("a1")])
    rig.aggregator.lines = {"a1": lines(1, 2)}
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    connection_key = f"{rig.user}:77"

    async def stall_then_lose(account_id: str) -> None:
        rig.clock.now += CONFIG.run_lease + timedelta(seconds=1)
        taken = await rig.store.claim_run(connection_key, "successor", rig.clock(), CONFIG.run_lease)
        assert taken == "successor"

    rig.aggregator.before_page = stall_then_lose
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)
    assert await rig.names(SYNC_STATUS) == ["sync.started"], "no outcome of the run that lost its lease"
    states = {s.aggregator_account_id: s for s in await rig.store.account_states(rig.user)}
    assert states["a1"].last_run is None
    assert states["a1"].cursor is None
    assert await rig.store.active_run(connection_key, rig.clock()) == "successor"

    # the same stall after the last page, just before the outcomes are written: caught there
    rig.aggregator.before_page = None
    rig.aggregator.after_pages = stall_then_lose
    await rig.store.release_run(connection_key, "successor", rig.clock())
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)
    assert await rig.names(SYNC_STATUS) == ["sync.started"] * 2
    states = {s.aggregator_account_id: s for s in await rig.store.account_states(rig.user)}
    assert states["a1"].last_run is None
    assert await rig.store.active_run(connection_key, rig.clock()) == "successor"


async def test_a_refresh_the_bank_refuses_fails_every_account_and_waits_on_the_user(rig: Rig) -> None:
    await rig.link([account("a1"), account("a2")])
    rig.aggregator.connection_state = "wrongpass"
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)

    assert sorted(await rig.names(SYNC_STATUS)) == ["sync.failed", "sync.failed"]
    failed = [event.data for _, event in await rig.events(SYNC_STATUS)]
    assert {(d["code"], d["retryable"]) for d in failed} == {("wrongpass", False)}
    states = await rig.store.account_states(rig.user)
    assert {s.state for s in states} == {SyncState.ACTION_NEEDED}
    assert all(s.cursor is None for s in states), "a failed sync never moves the cursor"
    conn = await rig.store.connection(rig.user, "77")
    assert conn is not None
    assert conn.state is SyncState.ACTION_NEEDED
    assert conn.error is not None
    assert conn.error.action == "reconnect"
    assert await rig.names(TRANSACTIONS_RAW) == []


async def test_a_request_of_a_user_no_longer_entitled_pauses_them_and_syncs_nothing(rig: Rig) -> None:
    await rig.link([account("a1")], rights=Rights(False, "cancelled", "Résilié.", 2))
    rig.entitlements.answers[rig.user] = Rights(False, "cancelled", "Résilié.", 2)
    await rig.handlers.syncs.handle_sync_request(request(rig, "run-x"), rig.corr)
    assert rig.aggregator.refreshed == []
    [(_, paused)] = await rig.events(CONNECTIONS)
    assert paused.name == "connection.state_changed"
    assert (paused.data["state"], paused.data["paused"]) == ("paused", True)
    [status] = await rig.handlers.status.sync_status(rig.user)
    assert status.state is SyncState.PAUSED
    assert status.action == "subscribe"


# --- the status, the importer's events, entitlement changes --------------------------------------


async def test_the_status_follows_the_account_from_never_synced_to_ok(rig: Rig) -> None:
    await rig.link([account("a1"), account("a2", selected=False)])
    [before] = await rig.handlers.status.sync_status(rig.user)
    assert (before.aggregator_account_id, before.state) == ("a1", SyncState.NEVER_SYNCED)
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    [queued] = await rig.handlers.status.sync_status(rig.user)
    assert queued.state is SyncState.SYNCING
    rig.aggregator.lines = {"a1": lines(1)}
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)
    [after] = await rig.handlers.status.sync_status(rig.user)
    assert (after.state, after.last_success_at) == (SyncState.OK, NOW)
    assert after.last_run is not None
    assert (after.last_run.sync_run_id, after.last_run.transactions) == (run_id, 1)


async def test_the_importers_events_mark_a_reimport_and_keep_the_balance_check(rig: Rig) -> None:
    await rig.link([account("a1"), account("a2")])
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)
    checked = AccountBalanceChecked(
        user_id=rig.user,
        account_id="app-2",
        aggregator_account_id="a2",
        sync_run_id=run_id,
        bank_balance="10.00",
        computed_balance="9.00",
        balance_gap="1.00",
    )
    deleted = AccountDeleted(user_id=rig.user, account_id="app-1", aggregator_account_id="a1")
    elsewhere = AccountDeleted(user_id=f"{rig.user}-other", account_id="x", aggregator_account_id="zz")
    manual = AccountDeleted(user_id=rig.user, account_id="manual")
    await rig.handlers.importer_events.on_importer_events(
        [("ev-1", deleted), ("ev-2", checked), ("ev-3", elsewhere), ("ev-4", manual)]
    )
    states = {s.aggregator_account_id: s for s in await rig.store.account_states(rig.user)}
    assert (states["a1"].reimport, states["a1"].account_id, states["a1"].balance) == ("ev-1", None, None)
    assert states["a2"].account_id == "app-2"
    assert states["a2"].balance is not None
    assert states["a2"].balance.balance_gap == "1.00"
    assert await rig.store.account_states(f"{rig.user}-other") == [], "nothing created for unknown accounts"

    # the next run publishes a1's whole history again and lifts the mark
    rig.aggregator.lines = {"a1": lines(1), "a2": lines(2)}
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)
    states = {s.aggregator_account_id: s for s in await rig.store.account_states(rig.user)}
    assert states["a1"].reimport is None
    assert rig.aggregator.asked["a1"] == {}


async def test_entitlement_changes_pause_and_resume_in_version_order(rig: Rig) -> None:
    await rig.link([account("a1")])

    def change(allowed: bool, version: int) -> EntitlementChanged:
        return EntitlementChanged(
            user_id=rig.user,
            plan="premium" if allowed else "standard",
            options=[],
            auto_sync_allowed=allowed,
            reason=None,
            code="premium" if allowed else "cancelled",
            version=version,
        )

    await rig.handlers.pauses.on_entitlement_changed(change(False, 5), rig.corr)
    await rig.handlers.pauses.on_entitlement_changed(change(True, 4), rig.corr)  # older: changes nothing
    projected = await rig.store.projected_rights(rig.user)
    assert projected is not None
    assert (projected.allowed, projected.version) == (False, 5)
    await rig.handlers.pauses.on_entitlement_changed(change(True, 6), rig.corr)
    states = [event.data["state"] for _, event in await rig.events(CONNECTIONS)]
    assert states == ["paused", "active"]
    conn = await rig.store.connection(rig.user, "77")
    assert conn is not None
    assert conn.paused is False


# --- the night and the webhooks -------------------------------------------------------------------


async def test_the_night_requests_the_entitled_and_reports_an_overrun(rig: Rig) -> None:
    await rig.link([account("a1")])
    waiting = await rig.link([account("a1")], user=f"{rig.user}-w", state=SyncState.ACTION_NEEDED)
    no = Rights(False, "none", None, 1)
    refused_user = await rig.link([account("a1")], user=f"{rig.user}-r", rights=no)
    report = await rig.handlers.nightly.nightly_run(rig.corr, night=f"night-{rig.corr}")
    assert report == NightlyReport(users=3, requested=1, skipped=2, waiting_on_user=1)
    requested = [key for key, _ in await rig.events(SYNC_REQUESTS)]
    assert requested == [rig.user]
    assert waiting not in requested
    assert refused_user not in requested
    # the refused user was asked over HTTP, said no again, and is paused
    assert rig.entitlements.asked == [refused_user]

    overran = await rig.handlers.nightly.check_night(f"night-{rig.corr}", NOW + timedelta(hours=2), rig.corr)
    assert (overran.overran, overran.unfinished_connections) == (True, 1)
    [(key, event)] = [(k, e) for k, e in await rig.events(SYNC_STATUS) if e.name == "nightly.overran"]
    assert (key, event.subject, event.data["unfinished_connections"]) == ("nightly", f"night-{rig.corr}", 1)


async def test_a_webhook_is_checked_then_starts_a_run_that_only_reads(rig: Rig) -> None:
    await rig.link([account("a1")])
    verifier = WebhookVerifier(WEBHOOK_SECRET)
    date = NOW.isoformat()
    body = b'{"connection": {"id": 77}}'
    good = verifier.sign("POST", "/v1/webhooks/aggregator", date, body)
    check = rig.handlers.webhooks.check_webhook
    forged = check("POST", "/v1/webhooks/aggregator", "bad", date, body)
    await refused(forged, 401, "invalid_webhook_signature")
    await check("POST", "/v1/webhooks/aggregator", good, date, body)
    await refused(check("POST", "/v1/webhooks/aggregator", good, date, body), 401, "webhook_replayed")

    on_webhook = rig.handlers.webhooks.on_webhook
    agg_user = f"agg-{rig.user}"
    assert (await on_webhook(ConnectionSynced(agg_user, "99"), rig.corr)).status == "ignored"
    accepted = await on_webhook(ConnectionSynced(agg_user, "77", "2026-12-01T02:00:00"), rig.corr)
    assert accepted.status == "accepted"
    assert accepted.sync_run_id is not None
    [(_, requested)] = await rig.events(SYNC_REQUESTS)
    assert (requested.data["reason"], requested.data["connection_id"]) == ("webhook", "77")

    await rig.handlers.syncs.handle_sync_request(request(rig, accepted.sync_run_id, "webhook"), rig.corr)
    assert rig.aggregator.refreshed == [], "a webhook's run reads, it does not ask for another refresh"
    # our own refresh's webhook is no news
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)
    own = await on_webhook(ConnectionSynced(agg_user, "77", rig.aggregator.last_update), rig.corr)
    assert own.status == "already_read"


# --- erasure --------------------------------------------------------------------------------------


async def test_erasing_a_user_asks_the_aggregator_first_then_forgets_everything(rig: Rig) -> None:
    await rig.link([account("a1")])
    run_id = await rig.handlers.syncs.request_sync(rig.user, "on_demand", rig.corr)
    rig.aggregator.lines = {"a1": lines(1)}
    await rig.handlers.syncs.handle_sync_request(request(rig, run_id), rig.corr)
    deleted = await rig.handlers.eraser.erase_user(rig.user)
    assert deleted >= 5  # the aggregator user, the connection, the account state, a line, the rights
    assert rig.aggregator.deleted_users == [f"tok-{rig.user}"]
    assert await rig.store.aggregator_user(rig.user) is None
    assert await rig.store.user_connections(rig.user) == []
    assert await rig.store.account_states(rig.user) == []
    assert await rig.store.projected_rights(rig.user) is None
