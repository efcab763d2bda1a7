"""From a `transaction.observed` to an observation, what makes a record a poison, and the stored state."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from services.importer.adapters.mongo import decode_lines, encode_lines
from services.importer.api import decode_cursor, encode_cursor
from services.importer.domain.identities import auto_account_id
from services.importer.domain.intake import RawLine, observation_of, problem_with
from services.importer.domain.lines import AccountLines, Target, apply
from services.importer.handlers.intake import log_imported
from services.importer.replay import partition_for
from shared.contract.envelope import CloudEvent
from shared.contract.payloads import TransactionObserved
from shared.problems import Problem
from tests.importer_support import Txn, history, raw_event


def raw(txn: Txn, *, user: str = "u1", key: str | None = None, **data: object) -> RawLine:
    event = raw_event(user, "bnp", txn)
    if data:
        event = CloudEvent.new(
            service="connector",
            name="transaction.observed",
            data={**event.data, **data},
            user_id=user,
            correlation_id="run",
        )
    return RawLine(event, TransactionObserved.model_validate(event.data), key or f"{user}:{txn.account}")


LINE = Txn(42, "7", dt.date(2026, 10, 5), Decimal("-4.20"), "CARTE X4974 05/10 PAUL", "PAUL")


def test_an_observation_takes_the_powens_date_exact_cents_and_both_wordings():
    late_evening = Txn(43, "7", dt.date(2026, 10, 5), Decimal("-0.10"), "CB PAUL", "PAUL")
    late_evening.last_update = dt.datetime(2026, 10, 5, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    obs = observation_of(raw(late_evening))
    assert obs.date == dt.date(2026, 10, 5)  # never a UTC timestamp cut into a date
    assert obs.amount == Decimal("-0.10")
    assert (obs.memo, obs.label) == ("CB PAUL", "PAUL")
    assert obs.version.startswith("2026-10-06T04:30:00")
    assert obs.sync == "sync-1"


def test_a_line_deleted_or_inactive_is_removed_and_pending_is_coming():
    deleted = Txn(44, "7", LINE.date, LINE.value, LINE.wording, LINE.simplified, coming=True)
    deleted.deleted = dt.datetime(2026, 10, 6, tzinfo=dt.UTC)
    obs = observation_of(raw(deleted))
    assert (obs.pending, obs.removed) == (True, True)
    inactive = raw(LINE)
    inactive.data.transaction.active = False
    assert observation_of(inactive).removed


def test_the_same_record_always_gives_the_same_version():
    assert observation_of(raw(LINE)) == observation_of(raw(LINE))


def test_records_that_cannot_be_imported_say_why():
    assert problem_with(raw(LINE)) is None
    assert "key" in str(problem_with(raw(LINE, key="u1:8")))
    assert "account" in str(problem_with(raw(LINE, aggregator_account_id="8")))
    assert "currency" in str(problem_with(raw(LINE, currency="euro")))
    future = Txn(45, "7", dt.date.today() + dt.timedelta(days=500), Decimal("-1.00"), "X", "X")
    assert "days after the sync" in str(problem_with(raw(future)))
    other = raw(LINE)
    other = RawLine(other.event.model_copy(update={"userid": "u2"}), other.data, other.key)
    assert "user" in str(problem_with(other))


def test_the_stored_state_round_trips():
    lines = history("7", 300, first_id=1000, seed=4)
    state, _ = apply(AccountLines(), [observation_of(raw(t)) for t in lines], Target("u1:7", "acc"))
    blob = encode_lines(state.lines.values())
    assert decode_lines(blob) == state.lines
    assert len(blob) < 300 * 60  # compressed: one small document per account, read and written by _id


def test_cursors_are_opaque_and_checked():
    cursor = encode_cursor(("2026-10-05", "op-1"))
    assert decode_cursor(cursor) == ("2026-10-05", "op-1")
    for bad in ("garbage", encode_cursor(("not a date", "x")), "e30"):
        with pytest.raises(Problem) as problem:
            decode_cursor(bad)
        assert problem.value.code == "invalid_cursor"


def test_ids_are_stable():
    assert auto_account_id("u1:7") == auto_account_id("u1:7") != auto_account_id("u1:8")
    assert partition_for("u1:7", [0, 1, 2, 3, 4, 5]) == partition_for("u1:7", [5, 4, 3, 2, 1, 0])
    assert {partition_for(f"u{i}:7", list(range(6))) for i in range(100)} == set(range(6))


def test_a_batch_joining_two_sync_runs_logs_each_run_under_its_own_correlation_id():
    lines = history("7", 3, first_id=2000, seed=5)
    raws = [raw(t) for t in lines]
    raws = [
        RawLine(r.event.model_copy(update={"correlationid": run}), r.data, r.key)
        for r, run in zip(raws, ["run-a", "run-a", "run-b"], strict=True)
    ]
    observations = [observation_of(r) for r in raws]
    _, changes = apply(AccountLines(), observations, Target("u1:7", "acc"))
    correlation = {obs.txid: r.event.correlationid for obs, r in zip(observations, raws, strict=True)}
    with capture_logs() as logs:
        log_imported("u1:7", "u1", raws, changes, correlation)
    by_run = {entry["correlation_id"]: (entry["lines"], entry["imported"]) for entry in logs}
    assert by_run == {"run-a": (2, 2), "run-b": (1, 1)}
