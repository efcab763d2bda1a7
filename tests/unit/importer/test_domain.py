"""The dedup and reconciliation rules, one situation at a time."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from services.importer.domain.identities import line_ref, operation_id
from services.importer.domain.lines import (
    AccountLines,
    ImportMode,
    ManualCandidate,
    Observation,
    Target,
    apply,
    version_of,
)
from services.importer.domain.memos import memo_similarity, memo_tokens

AKEY = "u1:acc-9"
CREATE = Target(AKEY, "account-1")
RECONCILE = Target(AKEY, "account-1", ImportMode.RECONCILE)
DAY = dt.date(2026, 3, 10)
T0 = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC)


def obs(
    txid: str,
    amount: str = "-20.00",
    *,
    day: int = 0,
    memo: str = "CARTE X1234 10/03 CARREFOUR MARKET",
    label: str = "CARREFOUR MARKET",
    pending: bool = False,
    removed: bool = False,
    at: int = 0,
    sync: str = "s1",
) -> Observation:
    return Observation(
        txid=txid,
        date=DAY + dt.timedelta(days=day),
        amount=Decimal(amount),
        memo=memo,
        label=label,
        pending=pending,
        removed=removed,
        version=version_of(T0 + dt.timedelta(hours=at), pending=pending, removed=removed, content=memo),
        seen=DAY,
        sync=sync,
    )


def run(*observations: Observation, target: Target = CREATE, state: AccountLines | None = None):
    return apply(state or AccountLines(), observations, target)


def shown(state: AccountLines) -> dict[str, tuple[str, str]]:
    """Operation id -> (aggregator id, status) of what the app shows."""
    return {op: (line.txid, line.status) for op, line in state.visible().items()}


def test_a_new_booked_line_is_one_operation_with_a_stable_id():
    state, changes = run(obs("100"))
    assert shown(state) == {operation_id(AKEY, "100"): ("100", "booked")}
    assert [line.txid for line in changes.imported] == ["100"]
    assert state.lines["100"].account_id == "account-1"


def test_redelivery_and_older_versions_change_nothing():
    state, _ = run(obs("100", pending=True, at=0), obs("100", at=5))
    again, changes = run(obs("100", at=5), obs("100", pending=True, at=0), state=state)
    assert changes.empty
    assert again.lines == state.lines
    assert shown(again) == {operation_id(AKEY, "100"): ("100", "booked")}


def test_a_pending_line_booked_in_place_is_the_same_operation_updated():
    state, _ = run(obs("100", pending=True, memo="PAIEMENT CB CARREFOUR"))
    after, changes = run(obs("100", day=2, at=5), state=state)
    assert shown(after) == {operation_id(AKEY, "100"): ("100", "booked")}
    assert [line.txid for line in changes.updated] == ["100"]
    assert after.lines["100"].date == DAY + dt.timedelta(days=2)


def test_a_booking_under_a_new_id_takes_over_the_pending_operation():
    state, _ = run(obs("100", pending=True, memo="PAIEMENT CB CARREFOUR", sync="s1"))
    after, changes = run(
        obs("105", day=1, at=5, sync="s2"),
        obs("100", pending=True, removed=True, memo="PAIEMENT CB CARREFOUR", at=5, sync="s2"),
        state=state,
    )
    assert shown(after) == {operation_id(AKEY, "100"): ("105", "booked")}
    assert [line.txid for line in changes.updated] == ["105"]
    assert not changes.imported
    assert not changes.deleted
    assert after.lines["100"].claimed_by == "105"


def test_the_old_line_deleted_before_its_booking_arrives_still_gives_one_operation():
    state, _ = run(obs("100", pending=True, sync="s1"))
    after, _ = run(
        obs("100", pending=True, removed=True, at=5, sync="s2"),
        obs("105", day=1, at=5, sync="s2"),
        state=state,
    )
    assert [txid for txid, _ in shown(after).values()] == ["105"]
    assert after.lines["100"].claimed_by == "105"


def test_a_booking_seen_before_its_pending_line_in_the_same_sync_is_still_one_operation():
    state, _ = run(obs("105", day=1), obs("100", pending=True, memo="PAIEMENT CB CARREFOUR"))
    assert [txid for txid, _ in shown(state).values()] == ["105"]
    assert state.lines["100"].claimed_by == "105"


def test_genuine_twins_stay_two():
    state, _ = run(obs("100"), obs("101"))
    assert sorted(txid for txid, _ in shown(state).values()) == ["100", "101"]


def test_a_line_booked_later_than_its_window_or_with_another_amount_or_memo_is_not_the_same():
    pending = obs("100", pending=True, memo="PAIEMENT CB CARREFOUR")
    for booked in (
        obs("105", day=6, at=5),
        obs("105", amount="-20.01", at=5),
        obs("105", memo="CARTE X1234 SNCF INTERNET", label="SNCF INTERNET", at=5),
        obs("99", at=5),  # an id older than the pending line's cannot be its booking
    ):
        state, _ = run(pending, booked)
        assert len(state.visible()) == 2, booked


def test_a_cancelled_pending_line_goes():
    state, _ = run(obs("100", pending=True))
    after, changes = run(obs("100", pending=True, removed=True, at=5), state=state)
    assert shown(after) == {}
    assert [op for op, _ in changes.deleted] == [operation_id(AKEY, "100")]


def test_a_wrong_guess_between_look_alikes_is_undone_by_the_deletion_that_came_with_the_booking():
    state, _ = run(obs("100", pending=True, day=0, sync="s1"), obs("101", pending=True, day=1, sync="s1"))
    # "100" books as "105" dated like "101": "105" first claims "101"; then "100"'s deletion tells
    after, _ = run(
        obs("105", day=1, at=5, sync="s2"),
        obs("100", pending=True, removed=True, at=5, sync="s2"),
        state=state,
    )
    assert sorted(shown(after).values()) == [("101", "pending"), ("105", "booked")]


def test_a_pending_line_taken_for_another_ones_booking_gets_an_operation_back_when_it_books():
    state, _ = run(obs("100", pending=True, sync="s1"), obs("105", day=1, sync="s2"))
    assert sorted(shown(state).values()) == [("105", "booked")]
    after, changes = run(obs("100", day=1, at=5, sync="s3"), state=state)
    assert sorted(shown(after).values()) == [("100", "booked"), ("105", "booked")]
    assert [line.txid for line in changes.imported] == ["100"]


def test_a_withdrawn_booking_shows_its_pending_line_again():
    state, _ = run(obs("100", pending=True, sync="s1"), obs("105", day=1, sync="s2"))
    after, changes = run(obs("105", day=1, removed=True, at=5, sync="s3"), state=state)
    assert shown(after) == {operation_id(AKEY, "100"): ("100", "pending")}
    assert not changes.deleted


def test_a_deleted_line_that_comes_back_gets_a_fresh_operation_id():
    state, _ = run(obs("100"), obs("100", removed=True, at=1), obs("100", at=2))
    ((op, (txid, _)),) = shown(state).items()
    assert txid == "100"
    assert op != operation_id(AKEY, "100")


def manual(op_id: str, amount: str = "-42.50", day: int = 0, by: str | None = None) -> ManualCandidate:
    return ManualCandidate(op_id, DAY + dt.timedelta(days=day), Decimal(amount), by)


def test_reconcile_mode_marks_the_closest_manual_operation_then_the_oldest():
    state = AccountLines(
        manual={m.op_id: m for m in (manual("m2", day=2), manual("m1", day=-2), manual("m3"))}
    )
    after, changes = run(obs("100", "-42.50"), target=RECONCILE, state=state)
    assert [(m, line.txid) for m, line in changes.reconciled] == [("m3", "100")]
    assert after.visible() == {}
    assert after.manual["m3"].reconciled_by == line_ref(AKEY, "100")

    tie = AccountLines(manual={m.op_id: m for m in (manual("m9", day=1), manual("m4", day=-1))})
    _, changes = run(obs("100", "-42.50"), target=RECONCILE, state=tie)
    assert [m for m, _ in changes.reconciled] == ["m4"]


def test_reconcile_mode_creates_what_matches_nothing_and_never_matches_twice():
    state = AccountLines(manual={"m1": manual("m1"), "m2": manual("m2", by="other#1")})
    _, changes = run(
        obs("100", "-42.50"), obs("101", "-42.50"), obs("102", "-42.50", day=9), target=RECONCILE, state=state
    )
    assert [m for m, _ in changes.reconciled] == ["m1"]
    assert sorted(line.txid for line in changes.imported) == ["101", "102"]


def test_a_deleted_bank_line_releases_its_manual_operation_and_a_rerun_finds_its_own_match():
    state = AccountLines(manual={"m1": manual("m1", amount="-20.00")})
    after, _ = run(obs("100", pending=True), target=RECONCILE, state=state)
    assert after.reconciliations()["m1"].txid == "100"
    released, changes = run(obs("100", pending=True, removed=True, at=5), target=RECONCILE, state=after)
    assert [m for m, _ in changes.unreconciled] == ["m1"]
    assert released.manual["m1"].reconciled_by is None

    # a batch re-run after a crash: the manual operation is already marked by this very line
    rerun = AccountLines(manual={"m1": manual("m1", amount="-20.00", by=line_ref(AKEY, "100"))})
    _, changes = run(obs("100"), target=RECONCILE, state=rerun)
    assert [m for m, _ in changes.reconciled] == ["m1"]


def test_a_booking_under_a_new_id_keeps_the_reconciliation_of_its_pending_line():
    state = AccountLines(manual={"m1": manual("m1", amount="-20.00")})
    state, _ = run(obs("100", pending=True, sync="s1"), target=RECONCILE, state=state)
    after, changes = run(obs("105", day=1, at=5, sync="s2"), target=RECONCILE, state=state)
    assert after.reconciliations()["m1"].txid == "105"
    assert [(m, line.txid) for m, line in changes.rereconciled] == [("m1", "105")]
    assert after.visible() == {}


def test_memos_are_compared_on_the_words_that_name_the_counterpart():
    assert memo_tokens("FACTURE CARTE DU 120324 HALL'S BEER CARTE 4974XXXXXXXX1234") == {"HALL", "BEER"}
    assert memo_tokens("Prélèvement SEPA Électricité") == {"ELECTRICITE"}
    pending, booked = obs("1", memo="PAIEMENT CB HALL'S BEER", label=""), obs("2", memo="CB HALLS BEER 12/03")
    assert memo_similarity(run(pending)[0].lines["1"], run(booked)[0].lines["2"]) >= 0.5


def test_versions_order_by_update_then_lifecycle():
    stamp = T0
    pending = version_of(stamp, pending=True, removed=False, content="a")
    booked = version_of(stamp, pending=False, removed=False, content="a")
    removed = version_of(stamp, pending=False, removed=True, content="a")
    later = version_of(stamp + dt.timedelta(microseconds=1), pending=True, removed=False, content="a")
    assert pending < booked < removed < later
    paris = dt.timezone(dt.timedelta(hours=1))
    assert version_of(stamp.astimezone(paris), pending=True, removed=False, content="a") == pending


def test_forgetting_keeps_pending_lines_and_recent_ones():
    state, _ = run(obs("100"), obs("101", pending=True), obs("102", removed=True))
    assert state.forget(DAY + dt.timedelta(days=1)) == 2
    assert list(state.lines) == ["101"]
