"""The sandbox store without HTTP: stamps, activation, booking, deleted lines, listing, webhook cursor."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from sandbox.clock import FixedClock, format_ts, parse_ts
from sandbox.generator import AccountKind
from sandbox.listing import DEFAULT_LIMIT, MAX_LIMIT, TransactionQuery, clamp_limit
from sandbox.store import NewLine, SandboxError, Store

TODAY = date(2025, 3, 14)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2025, 3, 14, 9, 30, 0, tzinfo=UTC))


@pytest.fixture
def store(clock: FixedClock) -> Store:
    return Store(seed=3, clock=clock, today=TODAY)


def linked(store: Store, login: str = "demo", connector: int = 101):
    user = store.create_user()
    connection = store.create_connection(user.id, connector, login)
    accounts = store.connection_accounts(connection.id, include_disabled=True)
    return user, connection, accounts


def test_stamps_are_strictly_increasing_whole_seconds(store: Store, clock: FixedClock):
    first, second = store.stamp(), store.stamp()
    assert second == first + timedelta(seconds=1)
    clock.advance(timedelta(seconds=10))
    assert store.stamp() == first + timedelta(seconds=10)
    assert format_ts(first) == "2025-03-14T09:30:00Z"
    assert parse_ts("2025-03-14T09:30:00Z") == first
    assert parse_ts("2025-03-14 10:30:00 01:00") == first  # a "+" decoded as a space
    assert parse_ts("2025-03-14") == datetime(2025, 3, 14, tzinfo=UTC)


def test_new_accounts_are_disabled_and_hidden_until_activated(store: Store, clock: FixedClock):
    user, connection, accounts = linked(store)
    assert [a.kind for a in accounts] == ["checking", "savings", "card"]
    assert all(a.disabled is not None for a in accounts)
    assert store.user_accounts(user.id, include_disabled=False) == []
    checking = accounts[0]
    page, _ = store.list_transactions(user.id, checking.id, TransactionQuery(), 0, 50)
    assert page.total == 0
    created_stamp = connection.created
    clock.advance(timedelta(minutes=5))
    store.update_account(user.id, checking.id, disabled=False)
    page, items = store.list_transactions(
        user.id, checking.id, TransactionQuery(last_update=created_stamp), 0, 50
    )
    assert page.total > 800  # every line stamped at activation: a `last_update` follower sees them all
    assert {item["last_update"] for item in items} == {format_ts(created_stamp + timedelta(minutes=5))}


def test_book_in_place_and_as_new_id(store: Store, clock: FixedClock):
    user, _connection, accounts = linked(store)
    checking = accounts[0]
    store.update_account(user.id, checking.id, disabled=False)
    first, second = store.append(
        checking.id,
        [
            NewLine(TODAY, -1250, "CB BOULANGERIE TEST 14/03/25", coming=True),
            NewLine(TODAY, -4200, "CB SUPERMARCHE TEST 14/03/25", coming=True),
        ],
    )
    assert first.type == "card"
    assert first.simplified_wording == "BOULANGERIE TEST"
    in_place, gone = store.book(first.id, new_id=False, wording=None, day=date(2025, 3, 17))
    assert gone is None
    assert in_place.id == first.id
    assert not in_place.coming
    assert in_place.date == date(2025, 3, 17)
    booked, deleted = store.book(
        second.id, new_id=True, wording="CB SUPERMARCHE TEST 14/03/25 PARIS", day=None
    )
    assert deleted is not None
    assert deleted.id == second.id
    assert deleted.deleted is not None
    assert booked.id != second.id
    assert not booked.coming
    assert booked.deleted is None
    assert booked.last_update == deleted.last_update > in_place.last_update
    with pytest.raises(SandboxError) as refused:
        store.book(first.id, new_id=False, wording=None, day=None)
    assert refused.value.status == 409

    ids = {tx["id"] for tx in store.list_transactions(user.id, checking.id, TransactionQuery(), 0, 5000)[1]}
    assert second.id not in ids
    assert booked.id in ids
    changed = store.list_transactions(
        user.id, checking.id, TransactionQuery(last_update=in_place.last_update - timedelta(seconds=1)), 0, 50
    )[1]
    assert {tx["id"] for tx in changed} == {
        first.id,
        second.id,
        booked.id,
    }  # ...but shown to change followers
    assert next(tx for tx in changed if tx["id"] == second.id)["deleted"] is not None


def test_error_logins_and_sync(store: Store):
    user, connection, accounts = linked(store, login="sca")
    assert connection.state == "SCARequired"
    assert accounts == []
    assert connection.last_update is None
    with pytest.raises(SandboxError) as failed:
        store.sync(user.id, connection.id)
    assert (failed.value.status, failed.value.code) == (400, "SCARequired")
    store.set_state(connection.id, None)
    synced = store.sync(user.id, connection.id)
    assert synced.last_update is not None
    assert len(store.connection_accounts(connection.id, include_disabled=True)) == 3


def test_webhook_payload_covers_changes_since_last_acknowledged_push(store: Store):
    user, connection, accounts = linked(store)
    body, as_of = store.push_payload(connection.id) or ({}, None)
    assert body["connection"]["accounts"] == []  # nothing enabled yet
    store.mark_pushed(connection.id, as_of)
    store.update_account(user.id, accounts[1].id, disabled=False)
    body, as_of = store.push_payload(connection.id) or ({}, None)
    (savings,) = body["connection"]["accounts"]
    assert savings["id"] == accounts[1].id
    assert len(savings["transactions"]) > 10
    again, _ = store.push_payload(connection.id) or ({}, None)
    assert len(again["connection"]["accounts"][0]["transactions"]) == len(
        savings["transactions"]
    )  # not acked
    store.mark_pushed(connection.id, as_of)
    after, _ = store.push_payload(connection.id) or ({}, None)
    assert after["connection"]["accounts"][0]["transactions"] == []


def test_limits():
    assert clamp_limit(None) == DEFAULT_LIMIT == 50
    assert clamp_limit(5000) == MAX_LIMIT == 1000


def test_bank_side_account_changes(store: Store):
    user, connection, accounts = linked(store)
    extra = store.open_account(connection.id, AccountKind.SAVINGS)
    assert extra.disabled is not None
    assert extra.id not in {a.id for a in accounts}
    assert len(store.connection_accounts(connection.id, include_disabled=True)) == 4
    store.update_account(user.id, accounts[0].id, disabled=False)
    store.close_account(accounts[0].id)
    assert store.user_accounts(user.id, include_disabled=False) == []
    assert store.list_transactions(user.id, accounts[0].id, TransactionQuery(), 0, 10)[0].total == 0


def test_authorization_codes_are_single_use_and_expire(store: Store, clock: FixedClock):
    user = store.create_user()
    code = store.issue_authorization_code(user.id, "client-a", "https://app.test/cb")
    grant = store.redeem_authorization_code(code)
    assert grant is not None
    assert (grant.user_id, grant.client_id, grant.redirect_uri) == (
        user.id,
        "client-a",
        "https://app.test/cb",
    )
    assert store.redeem_authorization_code(code) is None  # spent by the first attempt
    late = store.issue_authorization_code(user.id, "client-a", "https://app.test/cb")
    clock.advance(timedelta(minutes=10, seconds=1))
    assert store.redeem_authorization_code(late) is None
    # the webview's entry codes (GET /auth/token/code) are another kind: never redeemable
    assert store.redeem_authorization_code(store.issue_code(user.id)) is None


def test_temporary_tokens_expire_and_permanent_ones_do_not(store: Store, clock: FixedClock):
    temporary = store.create_user(expires_in=timedelta(minutes=30))
    permanent = store.create_user()
    assert store.user_by_token(temporary.token) == temporary
    clock.advance(timedelta(minutes=31))
    assert store.user_by_token(temporary.token) is None
    assert store.user_by_token(permanent.token) == permanent


def test_clients_match_credentials_and_redirect_uris_exactly():
    from sandbox.clients import ClientApp, Clients

    clients = Clients([ClientApp("app", "s3cret", frozenset({"https://app.test/cb?x=1"}))])
    assert clients.authenticate("app", "s3cret") is not None
    for client_id, secret in (
        ("app", "wrong"),
        ("app", ""),
        ("app", None),
        ("other", "s3cret"),
        (None, None),
    ):
        assert clients.authenticate(client_id, secret) is None
    assert clients.allows("app", "https://app.test/cb?x=1")
    for uri in (
        "https://app.test/cb",
        "https://app.test/cb?x=1&y=2",
        "https://evil.example/cb?x=1",
        "",
        None,
    ):
        assert not clients.allows("app", uri)
    assert not clients.allows("other", "https://app.test/cb?x=1")
