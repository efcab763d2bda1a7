"""Balances: the order of lines and `account.synced` in a batch, the opening balance, the gap, and what
the importer says and stores of a check (no engine: the pure part, and the import path with its stores
stubbed where it only dispatches)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.importer.adapters.locks import KeyLocks
from services.importer.adapters.mongo import account_of, balance_fields
from services.importer.domain import accounts, balances, events
from services.importer.domain.balances import (
    BalanceCheck,
    BalanceState,
    BankBalance,
    after_reports,
    amount_of,
    balance_is_checked,
    due,
    in_key_order,
    segments,
)
from services.importer.domain.intake import (
    ImportStats,
    RawBalance,
    RawLine,
    RawRecord,
    problem_with,
    raw_record,
)
from services.importer.handlers.intake import Importer
from services.importer.replay import _parse
from shared.consumer import TopicConsumer
from shared.contract.catalog import (
    CATEGORIZER_OPERATION_READS,
    IMPORTER_RAW_LINE_READS,
    IMPORTER_RAW_READS,
    topic_doc,
)
from shared.contract.envelope import CloudEvent
from shared.contract.payloads import (
    AccountBalanceChecked,
    AccountSynced,
    ReplayRequested,
    TransactionObserved,
)
from shared.contract.topics import OPERATIONS, TRANSACTIONS_RAW
from tests.importer_support import Txn, raw_event, synced_event

T0 = dt.datetime(2026, 10, 5, 3, tzinfo=dt.UTC)


def report(
    sync: str, balance: int | None, *, hours: int = 0, coming: int | None = None, checked: bool = True
) -> BankBalance:
    return BankBalance(sync, T0 + dt.timedelta(hours=hours), balance, coming, checked)


def account_view(doc: dict[str, Any], balance_cents: int | None = None) -> dict[str, Any]:
    """An account document as the API shows it (the document read by the MongoDB adapter)."""
    return accounts.account_view(account_of(doc), balance_cents).model_dump()


def balance_checked_event(raw: RawBalance, doc: dict[str, Any], check: BalanceCheck) -> CloudEvent:
    return events.balance_checked_event(raw, account_of(doc), check)


def unchanged_since_check(doc: dict[str, Any], reports: list[BankBalance], lines_rev: int | None) -> bool:
    return balances.unchanged_since_check(account_of({"_id": "a", **doc}).balance, reports, lines_rev)


def check_balances(
    state: BalanceState, booked_cents: int, reports: list[BankBalance]
) -> tuple[BalanceState, list[BalanceCheck]]:
    """What the account keeps after `reports`, and the checks they made."""
    after, _, checks = after_reports(state, booked_cents, reports)
    return after, checks


# ---- order: per key, runs of lines then the balances after them -----------------------------------------


def test_a_backlog_of_two_syncs_is_two_segments_in_order():
    items = ["l1", "l2", "B1", "l3", "B2"]
    cut = segments(items, lambda x: x.startswith("B"))
    assert [(s.lines, s.balances) for s in cut] == [(["l1", "l2"], ["B1"]), (["l3"], ["B2"])]


def test_balances_without_lines_and_lines_after_the_last_balance_keep_their_place():
    cut = segments(["B0", "B1", "l1", "B2", "B3", "l2", "l3"], lambda x: x.startswith("B"))
    assert [(s.lines, s.balances) for s in cut] == [
        ([], ["B0", "B1"]),
        (["l1"], ["B2", "B3"]),
        (["l2", "l3"], []),
    ]
    assert segments([], lambda x: True) == []


@given(st.lists(st.booleans(), max_size=60))
def test_each_balance_meets_exactly_the_lines_before_it(kinds: list[bool]):
    items = [(n, balance) for n, balance in enumerate(kinds)]
    applied: list[tuple[int, bool]] = []
    lines_seen: dict[int, int] = {}
    for segment in segments(items, lambda item: item[1]):
        assert all(not balance for _, balance in segment.lines)
        assert all(balance for _, balance in segment.balances)
        applied += segment.lines
        for item in segment.balances:
            lines_seen[item[0]] = sum(1 for _, balance in applied if not balance)
            applied.append(item)
    assert applied == items  # nothing lost, nothing moved
    for n, balance in items:
        if balance:
            assert lines_seen[n] == sum(1 for _, b in items[:n] if not b)


def test_groups_keep_the_order_of_each_key():
    items = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("a", 3)]
    assert in_key_order(items, lambda item: item[0]) == {
        "a": [("a", 1), ("a", 2), ("a", 3)],
        "b": [("b", 1), ("b", 2)],
        "c": [("c", 1)],
    }


# ---- the arithmetic ------------------------------------------------------------------------------------


def test_the_first_check_fixes_the_opening_balance_and_finds_no_gap():
    state, [check] = check_balances(BalanceState(), booked_cents=-12_345, reports=[report("s1", 87_655)])
    assert (check.first, check.opening_cents) == (True, 100_000)
    assert (check.computed_cents, check.gap_cents) == (87_655, 0)
    assert state == BalanceState(rev=1, opening_cents=100_000, at=T0, alarm=False)


def test_lines_the_bank_counts_and_the_app_holds_keep_the_gap_at_zero():
    state, _ = check_balances(BalanceState(), -12_345, [report("s1", 87_655)])
    # the bank books -20.00 and -5.50; the app holds them too
    state, [check] = check_balances(state, -12_345 - 2_550, [report("s2", 87_655 - 2_550, hours=24)])
    assert (check.first, check.gap_cents, check.alarm) == (False, 0, False)
    assert (state.opening_cents, state.rev) == (100_000, 2)


def test_a_line_the_bank_counts_and_the_app_never_got_is_a_gap_of_its_amount():
    state, _ = check_balances(BalanceState(), 0, [report("s1", 50_000)])
    state, [check] = check_balances(state, -1_000, [report("s2", 50_000 - 1_000 - 2_500, hours=24)])
    assert (check.computed_cents, check.gap_cents, check.alarm) == (49_000, -2_500, True)
    assert amount_of(check.gap_cents) == Decimal("-25.00")
    assert state.alarm
    # it arrives later: the gap closes
    state, [check] = check_balances(state, -3_500, [report("s3", 46_500, hours=48)])
    assert (check.gap_cents, state.alarm) == (0, False)


def test_stale_reports_and_reports_without_a_balance_are_not_checked():
    state, _ = check_balances(BalanceState(), 0, [report("s2", 1_000, hours=24)])
    assert due(state, [report("s1", 900), report("s0", None, hours=30)]) == []
    again = report("s2", 1_000, hours=24)
    assert due(state, [again]) == [again]  # the latest one again: checked again, same outcome
    after, checks = check_balances(state, 0, [report("s1", 900), again])
    assert [(c.report.sync, c.gap_cents) for c in checks] == [("s2", 0)]
    assert after.rev == state.rev + 1
    unchanged, none = check_balances(state, 0, [report("s1", 900)])
    assert (unchanged, none) == (state, [])


def test_several_reports_in_a_row_are_checked_in_order_against_the_same_operations():
    reports = [report("s1", 5_000), report("s2", 5_000, hours=1), report("s3", 4_000, hours=2)]
    later, checks = check_balances(BalanceState(), 1_000, reports)
    assert [(c.report.sync, c.gap_cents) for c in checks] == [("s1", 0), ("s2", 0), ("s3", -1_000)]
    assert [c.first for c in checks] == [True, False, False]
    assert later == BalanceState(rev=1, opening_cents=4_000, at=T0 + dt.timedelta(hours=2), alarm=True)
    # out of order within a batch: the older one is stale
    _, checks = check_balances(BalanceState(), 0, [report("s2", 5_000, hours=1), report("s1", 4_000)])
    assert [c.report.sync for c in checks] == ["s2"]


def test_a_revived_account_starts_again_without_an_opening_balance():
    old, _ = check_balances(BalanceState(), 0, [report("s1", 10_000, hours=50)])
    revived = BalanceState()  # AccountStore.revive clears what the account kept of its checks
    state, [check] = check_balances(revived, 2_000, [report("s1", 10_000)])
    assert (check.first, check.opening_cents, check.gap_cents) == (True, 8_000, 0)
    assert old.opening_cents == 10_000 != state.opening_cents


def test_an_account_whose_balance_is_not_its_booked_lines_keeps_the_figures_without_a_check():
    assert [balance_is_checked(t) for t in ("checking", "savings", None, "unknown", "Card", "loan")] == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    card = report("s1", -10_932, coming=-10_932, checked=False)
    state, latest, checks = after_reports(BalanceState(), 0, [card])
    assert (latest, checks) == (card, [])
    assert state == BalanceState(rev=1, opening_cents=None, at=T0, alarm=False)
    fields = balance_fields(state, card, None, T0)
    assert (fields["bank_balance"], fields["bank_coming"], fields["balance_rev"]) == ("-109.32", "-109.32", 1)
    assert {fields[k] for k in ("computed_balance", "balance_gap", "balance_checked_at")} == {None}
    assert "opening_cents" not in fields


def test_what_an_account_stores_of_a_check():
    state, latest, [check] = after_reports(BalanceState(), -2_500, [report("s1", 7_500, coming=-310)])
    assert latest is check.report
    fields = balance_fields(state, check.report, check, T0 + dt.timedelta(minutes=1))
    assert fields == {
        "bank_balance": "75.00",
        "bank_coming": "-3.10",
        "bank_balance_at": T0,
        "balance_sync_run_id": "s1",
        "balance_rev": 1,
        "balance_alarm": False,
        "opening_cents": 10_000,
        "computed_balance": "75.00",
        "balance_gap": "0.00",
        "balance_checked_at": T0 + dt.timedelta(minutes=1),
    }


def test_amounts_of_cents():
    shown = [str(amount_of(c)) for c in (0, 5, -5, 123_456, -2_500)]
    assert shown == ["0.00", "0.05", "-0.05", "1234.56", "-25.00"]


# ---- the event and the records ---------------------------------------------------------------------------


def test_account_synced_takes_decimal_strings_numbers_and_nulls():
    event = synced_event("u1", "bnp", "7", sync_run="s1", balance="1234.5", coming=-12)
    data = AccountSynced.model_validate(event.data)
    assert (data.balance, data.coming, data.transactions) == (Decimal("1234.50"), Decimal("-12.00"), 0)
    assert AccountSynced.model_validate({**event.data, "balance": None, "coming": None}).balance is None
    for bad in ({"balance": "abc"}, {"balance": 1e12}, {"transactions": -1}, {"transactions": None}):
        with pytest.raises(ValidationError):
            AccountSynced.model_validate({**event.data, **bad})
    # the connector's event id restates the sync: the same for the same user, account and run
    again = synced_event("u1", "bnp", "7", sync_run="s1", balance="1234.5")
    assert again.id == event.id != synced_event("u1", "bnp", "7", sync_run="s2", balance="1").id


def balance(user: str = "u1", account: str = "7", key: str | None = None, **data: Any) -> RawBalance:
    event = synced_event(user, "bnp", account, sync_run="s1", balance="100.00")
    if data:
        event = event.model_copy(update={"data": {**event.data, **data}})
    parsed = raw_record(event, AccountSynced.model_validate(event.data), key or f"{user}:{account}")
    assert isinstance(parsed, RawBalance)
    return parsed


def test_balance_records_that_cannot_be_applied_say_why():
    assert problem_with(balance()) is None
    assert "key" in str(problem_with(balance(key="u1:8")))
    assert "key" in str(problem_with(balance(aggregator_account_id="8")))
    assert "currency" in str(problem_with(balance(currency="euro")))
    other = balance()
    other = RawBalance(other.event.model_copy(update={"userid": "u2"}), other.data, other.key)
    assert "user" in str(problem_with(other))


def test_a_balance_record_reports_cents_and_its_time():
    raw = balance(balance="-42.5", coming="-3.10")
    got = raw.report()
    assert (got.sync, got.balance_cents, got.coming_cents, got.at) == ("s1", -4_250, -310, raw.event.time)
    assert balance(balance=None).report().balance_cents is None


def test_the_replay_imports_the_two_types_the_consumer_imports():
    assert set(IMPORTER_RAW_LINE_READS) == {"transaction.observed", "account.synced"}
    # the consumer also reads the replay requests, which it runs and never imports
    assert {**IMPORTER_RAW_LINE_READS, "replay.requested": ReplayRequested} == IMPORTER_RAW_READS
    importer_reads = topic_doc(TRANSACTIONS_RAW).consumers[0]
    assert dict(importer_reads.models) == IMPORTER_RAW_READS
    line = raw_event("u1", "bnp", Txn(1, "7", dt.date(2026, 10, 5), Decimal("-1.00"), "CB X", "X"))
    assert isinstance(_parse(line, "u1:7"), RawLine)
    synced = synced_event("u1", "bnp", "7", sync_run="s1", balance="1.00")
    assert isinstance(_parse(synced, "u1:7"), RawBalance)
    other = CloudEvent.new(service="connector", name="sync.started", data={}, user_id="u1", correlation_id="")
    assert _parse(other, "u1:7") is None
    asked = {"replay_id": "r1", "user_id": "u1", "aggregator_account_id": "7", "requested_at": T0.isoformat()}
    request = CloudEvent.new(
        service="importer", name="replay.requested", data=asked, user_id="u1", correlation_id=""
    )
    assert _parse(request, "u1:7") is None


def test_the_check_event_restates_one_account_sync_and_life_and_is_what_the_catalog_says():
    raw = balance()
    _, [check] = check_balances(BalanceState(), 2_500, [raw.report()])
    account = {"_id": "acc-1", "user_id": "u1", "generation": 1, "currency": "EUR"}
    event = balance_checked_event(raw, account, check)
    assert event.type == "fr.budgetfacile.banksync.account.balance_checked.v1"
    assert (event.subject, event.correlationid, event.userid) == ("acc-1", raw.event.correlationid, "u1")
    assert event.data == {
        "user_id": "u1",
        "account_id": "acc-1",
        "aggregator_account_id": "7",
        "sync_run_id": "s1",
        "bank_balance": "100.00",
        "computed_balance": "100.00",
        "balance_gap": "0.00",
        "currency": "EUR",
        "generation": 1,
    }
    doc = topic_doc(OPERATIONS).event("account.balance_checked")
    assert doc.model is AccountBalanceChecked
    AccountBalanceChecked.model_validate(event.data)
    assert balance_checked_event(raw, account, check).id == event.id
    assert balance_checked_event(raw, {**account, "generation": 2}, check).id != event.id


def test_accounts_show_their_latest_check_or_nulls():
    manual = {"_id": "m", "user_id": "u1", "name": "Livret", "currency": "EUR", "bank_balance": None}
    assert account_view(manual, 1_050) == {
        "account_id": "m",
        "bank_id": None,
        "name": "Livret",
        "iban": None,
        "balance": "10.50",
        "currency": "EUR",
        "aggregator_account_id": None,
        "bank_balance": None,
        "computed_balance": None,
        "balance_gap": None,
    }
    # a reconciliation account: its balance stays the sum of its operations, the bank's figures are apart
    target = {**manual, "bank_balance": "12.00", "bank_balance_at": T0, "balance_checked_at": T0}
    target |= {"computed_balance": "14.50", "balance_gap": "-2.50"}
    view = account_view(target, 1_050)
    assert (view["balance"], view["bank_balance"], view["computed_balance"], view["balance_gap"]) == (
        "10.50",
        "12.00",
        "14.50",
        "-2.50",
    )
    # an account of a bank account: what the connector said of it before any sync is its balance, unchecked
    created = {**manual, "aggregator_account_id": "7", "bank_id": "bnp", "bank_balance": "12.00"}
    assert (account_view(created)["balance"], account_view(created)["bank_balance"]) == ("12.00", None)
    # a deferred card: the sync's balance, no check
    card = {**created, "bank_balance": "-109.32", "bank_balance_at": T0, "balance_checked_at": None}
    view = account_view(card)
    assert (view["balance"], view["bank_balance"], view["balance_gap"]) == ("-109.32", None, None)


async def test_the_categorizer_skips_the_check_event_without_a_dead_letter():
    assert (
        "account.balance_checked" not in CATEGORIZER_OPERATION_READS
    )  # as `account.created`: not its business
    event = CloudEvent.new(
        service="importer",
        name="account.balance_checked",
        data={"user_id": "u1", "account_id": "acc-1"},
        user_id="u1",
        correlation_id="s1",
    )
    dead: list[str] = []
    handled: list[Any] = []

    class Recording(TopicConsumer):
        async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: str, code: str) -> None:
            dead.append(error)

    async def handle(batch: list[Any]) -> None:
        handled.extend(batch)

    consumer = Recording(
        cast(Any, None), "categorizer", OPERATIONS, dict(CATEGORIZER_OPERATION_READS), handle
    )
    record = ConsumerRecord(OPERATIONS, 0, 7, 0, 0, b"u1:acc-1", event.to_json_bytes(), None, 0, 0, [])
    await consumer.process([record])
    assert (handled, dead) == ([], [])


# ---- the import path: each key's records in order, balances between the runs of lines -------------------


class Dispatching(Importer):
    """The import path with the stores out of the way: records what it would import and check."""

    def __init__(self) -> None:
        super().__init__(
            cast(Any, None),
            cast(Any, None),
            cast(Any, None),
            cast(Any, None),
            locks=KeyLocks(),
            op_locks=KeyLocks(),
        )
        self.calls: list[tuple[str, str, list[str]]] = []

    async def import_account(self, akey: str, lines: Any) -> ImportStats:
        self.calls.append((akey, "lines", [str(raw.data.transaction.id) for raw in lines]))
        return ImportStats(lines=len(lines))

    async def check_balances(self, akey: str, balances: Any) -> ImportStats:
        self.calls.append((akey, "balances", [raw.data.sync_run_id for raw in balances]))
        return ImportStats(balances=len(balances))


def line_of(user: str, account: str, txid: int, sync: str) -> RawLine:
    event = raw_event(user, "bnp", Txn(txid, account, dt.date(2026, 10, 5), Decimal("-1.00"), "CB", "X"))
    event = event.model_copy(update={"correlationid": sync})
    return RawLine(event, TransactionObserved.model_validate(event.data), f"{user}:{account}")


def balance_of(user: str, account: str, sync: str) -> RawBalance:
    event = synced_event(user, "bnp", account, sync_run=sync, balance="1.00")
    return RawBalance(event, AccountSynced.model_validate(event.data), f"{user}:{account}")


async def test_a_batch_applies_each_balance_between_the_lines_of_its_key():
    importer = Dispatching()
    records: list[RawRecord] = [
        line_of("u1", "7", 1, "s1"),
        line_of("u1", "8", 50, "t1"),
        line_of("u1", "7", 2, "s1"),
        balance_of("u1", "7", "s1"),
        balance_of("u1", "8", "t1"),
        line_of("u1", "7", 3, "s2"),
        balance_of("u1", "7", "s2"),
        line_of("u1", "7", 4, "s3"),
        balance_of("u1", "9", "x1"),  # a sync without any line
    ]
    result = await importer.import_records(records)
    assert result.rejected == []
    assert (result.stats.lines, result.stats.balances) == (5, 4)
    by_key: dict[str, list[tuple[str, list[str]]]] = {}
    for akey, kind, what in importer.calls:
        by_key.setdefault(akey, []).append((kind, what))
    assert by_key == {
        "u1:7": [
            ("lines", ["1", "2"]),
            ("balances", ["s1"]),
            ("lines", ["3"]),
            ("balances", ["s2"]),
            ("lines", ["4"]),
        ],
        "u1:8": [("lines", ["50"]), ("balances", ["t1"])],
        "u1:9": [("balances", ["x1"])],
    }


async def test_a_balance_that_cannot_be_applied_is_rejected_and_its_key_goes_on():
    importer = Dispatching()
    bad = balance_of("u1", "7", "s1")
    bad = RawBalance(bad.event, bad.data, "u1:other")
    result = await importer.import_records([line_of("u1", "7", 1, "s1"), bad, balance_of("u1", "7", "s2")])
    assert [(raw is bad, "key" in why) for raw, why in result.rejected] == [(True, True)]
    assert [(kind, what) for _, kind, what in importer.calls] == [("lines", ["1"]), ("balances", ["s2"])]


def test_a_check_is_skipped_only_when_balance_and_lines_are_as_checked() -> None:
    import datetime as dt

    at = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    checked = {
        "bank_balance": "120.40",
        "balance_checked_at": at,
        "opening_cents": 1000,
        "balance_lines_rev": 7,
    }
    same = [BankBalance(sync="s2", at=at, balance_cents=12040)]
    assert unchanged_since_check(checked, same, 7)
    assert not unchanged_since_check(checked, same, 8), "lines imported since"
    moved = [BankBalance(sync="s2", at=at, balance_cents=12000)]
    assert not unchanged_since_check(checked, moved, 7), "the bank's balance moved"
    assert not unchanged_since_check({**checked, "opening_cents": None}, same, 7), "never checked"
    assert not unchanged_since_check({**checked, "balance_checked_at": None}, same, 7)
    card = [BankBalance(sync="s2", at=at, balance_cents=12040, checked=False)]
    assert not unchanged_since_check(checked, card, 7)
