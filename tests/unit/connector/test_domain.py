import random
from datetime import UTC, datetime, timedelta

import pytest

from services.connector.domain.failures import (
    SyncState,
    backoff_delays,
    classify_connection_error,
    classify_http_status,
)
from services.connector.domain.lines import changed_lines, fingerprint
from services.connector.domain.nightly import NightlyWindow, spread_offset
from services.connector.domain.secrets import InvalidState, StateSigner, TokenCipher
from services.connector.domain.sync_run import fetch_window
from shared.settings import DEV_TOKEN_KEY


@pytest.mark.parametrize("state", ["wrongpass", "SCARequired", "actionNeeded", "passwordExpired"])
def test_states_that_need_the_user_are_not_retried(state):
    failure = classify_connection_error(state)
    assert failure.state is SyncState.ACTION_NEEDED
    assert not failure.retryable
    assert failure.code == state
    assert failure.message


@pytest.mark.parametrize("state", ["websiteUnavailable", "rateLimiting", "bug", "somethingNew"])
def test_passing_troubles_are_retried(state):
    failure = classify_connection_error(state)
    assert failure.retryable
    assert failure.state is SyncState.ERROR


def test_http_statuses():
    assert classify_http_status(429).code == "rateLimiting"
    assert classify_http_status(503).retryable
    assert not classify_http_status(400).retryable


def test_fingerprint_ignores_bookkeeping_but_sees_real_changes():
    line = {
        "id": 7,
        "id_account": 1,
        "date": "2026-03-12",
        "value": -12.5,
        "coming": True,
        "last_update": "a",
    }
    assert fingerprint(line) == fingerprint({**line, "last_update": "b", "date_scraped": "x"})
    assert fingerprint(line) != fingerprint({**line, "coming": False})
    assert fingerprint(line) != fingerprint({**line, "value": -12.51})
    known = {"7": fingerprint(line)}
    assert changed_lines([line], known) == []
    booked = {**line, "coming": False}
    assert changed_lines([booked], known) == [(booked, fingerprint(booked))]


def test_first_sync_takes_everything_then_changes_since_cursor_with_overlap():
    first = fetch_window(None, timedelta(minutes=30))
    assert first.initial
    assert first.params() == {}
    cursor = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    later = fetch_window(cursor, timedelta(minutes=30))
    assert not later.initial
    assert later.params() == {"last_update": "2026-11-26 09:30:00"}


def test_backoff_is_bounded_and_jittered():
    delays = list(backoff_delays(6, base_s=0.5, cap_s=4, rng=random.Random(1)))
    assert len(delays) == 6
    assert all(0 <= d <= min(4, 0.5 * 2**i) for i, d in enumerate(delays))
    assert len(set(delays)) == 6


def test_nightly_window_in_paris_time_across_dst():
    window = NightlyWindow.parse("02:00-04:00", "Europe/Paris")
    # winter (UTC+1): 02:00 Paris is 01:00 UTC
    assert window.next_start(datetime(2026, 1, 10, 12, 0, tzinfo=UTC)) == datetime(
        2026, 1, 11, 1, 0, tzinfo=UTC
    )
    # summer (UTC+2): 02:00 Paris is 00:00 UTC
    assert window.next_start(datetime(2026, 7, 10, 12, 0, tzinfo=UTC)) == datetime(
        2026, 7, 11, 0, 0, tzinfo=UTC
    )
    # just before the start, the same night
    assert window.next_start(datetime(2026, 1, 11, 0, 59, tzinfo=UTC)) == datetime(
        2026, 1, 11, 1, 0, tzinfo=UTC
    )
    assert window.span() == timedelta(hours=2)
    assert timedelta(0) <= spread_offset("u1", window.span()) < timedelta(hours=2)
    with pytest.raises(ValueError, match="end after"):
        NightlyWindow.parse("04:00-02:00", "Europe/Paris")


def test_token_cipher_is_authenticated_and_bound_to_the_user():
    cipher = TokenCipher(DEV_TOKEN_KEY)
    sealed = cipher.encrypt("permanent-token-abc", "alice")
    assert "permanent-token-abc" not in sealed
    assert cipher.decrypt(sealed, "alice") == "permanent-token-abc"
    with pytest.raises(ValueError, match="does not decrypt"):
        cipher.decrypt(sealed, "mallory")
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(ValueError, match="decrypt"):
        cipher.decrypt(tampered, "alice")
    with pytest.raises(ValueError, match="32 bytes"):
        TokenCipher("c2hvcnQ=")


def test_activation_state_is_signed_and_expires():
    signer = StateSigner("secret-a" * 4, ttl_s=60)
    token, issued = signer.issue("alice", now=1000)
    assert signer.verify(token, now=1030) == issued
    with pytest.raises(InvalidState, match="expired"):
        signer.verify(token, now=2000)
    with pytest.raises(InvalidState, match="signature"):
        StateSigner("secret-b" * 4).verify(token, now=1030)
    payload, _, signature = token.partition(".")
    with pytest.raises(InvalidState):
        signer.verify(payload[:-2] + "xx." + signature, now=1030)
