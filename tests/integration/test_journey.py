"""The `make demo` journey, the same code, on a private pipeline: every step's outcome checked exactly.

The journey (deploy/local/journey.py) runs once for the module against real processes (sandbox,
entitlements, connector, importer, categorizer on the session's Kafka and FerretDB); each test reads
one step of what it saw. The bank's truth comes from the sandbox's control API.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest

from deploy.local.journey import Endpoints, Journey, JourneyResult, PlainReporter, is_live
from harness.devstack import Stack, pipeline_stack
from shared.settings import ServiceSettings

# the whole journey runs in the first test's setup: under a minute on a quiet 2-core machine. Its waits
# are on progress (each fails once what it watches has not moved for STALL_S); pytest's timeout is only
# the last resort against a hang, above the journey's own bound (ran.seconds < 1000)
STALL_S = 120.0
pytestmark = [pytest.mark.engines, pytest.mark.timeout(1500)]


@dataclass
class Ran:
    result: JourneyResult
    stack: Stack
    seconds: float
    log: list[str]


@pytest.fixture(scope="module")
def ran(engines, log_dir) -> Iterator[Ran]:
    stack_name = f"journey{uuid.uuid4().hex[:6]}"
    with pipeline_stack(engines, log_dir, stack_name) as stack:
        endpoints = Endpoints(
            entitlements=stack.url("entitlements"),
            connector=stack.url("connector"),
            importer=stack.url("importer"),
            categorizer=stack.url("categorizer"),
            aggregator=stack.url("sandbox"),
        )
        log: list[str] = []
        journey = Journey(
            endpoints,
            ServiceSettings().banksync_jwt_secret.get_secret_value(),
            PlainReporter(log.append),
            stall_s=STALL_S,
            cap_s=900,
        )
        started = time.monotonic()
        try:
            result = journey.run()
        finally:
            log += [
                f"wait {what!r}: {seconds:.1f} s, at most {still:.1f} s without progress"
                for what, seconds, still in journey.result.waits
            ]
            print("\n".join(log))
            (log_dir / f"{stack_name}.journey.log").write_text("\n".join(log) + "\n")
        yield Ran(result, stack, time.monotonic() - started, log)


def bank_truth(ran: Ran, aggregator_account_id: str) -> list[dict]:
    with ran.stack.sandbox() as bank:
        answer = bank.get(f"/sandbox/accounts/{aggregator_account_id}/transactions/all")
        answer.raise_for_status()
        return answer.json()["transactions"]


def test_every_step_passed_its_own_checks(ran):
    failed = [c for c in ran.result.checks if not c.ok]
    assert not failed, failed
    assert [title for title, _ in ran.result.timings] == [title for title, _ in Journey.STEPS]
    assert ran.seconds < 1000


def test_a_standard_user_is_refused_then_subscribes(ran):
    r = ran.result
    assert r.refusal_status == 403
    assert r.refusal_content_type.startswith("application/problem+json")
    assert r.refusal["code"] == "not_entitled"
    assert r.refusal["status"] == 403
    assert "Auto-Import" in r.refusal["detail"]
    assert r.self_grant == (403, "forbidden")  # only billing changes plans and options
    assert r.entitlements["plan"] == "standard"
    assert r.entitlements["options"] == ["auto_import"]
    assert r.entitlements["auto_sync_allowed"] is True


def test_two_banks_linked_through_the_webview(ran):
    r = ran.result
    assert len(r.connections) == 2
    assert len({c["bank"]["id"] for c in r.connections}) == 2
    for connection in r.connections:
        assert connection["state"] is None
        assert sorted(a["type"] for a in connection["accounts"]) == ["card", "checking", "savings"]
    chosen = {c.aggregator_account_id for c in r.chosen}
    every = {a["aggregator_account_id"] for c in r.connections for a in c["accounts"]}
    assert len(chosen) == 5
    assert set(r.not_chosen) == every - chosen
    assert len(r.not_chosen) == 1
    modes = Counter((c.type, c.import_mode) for c in r.chosen)
    assert modes[("checking", "reconcile")] == 1


def test_a_year_of_history_each_chosen_account_has_exactly_its_bank_lines(ran):
    r = ran.result
    assert {s["aggregator_account_id"] for s in r.sync_status} == {c.aggregator_account_id for c in r.chosen}
    assert {s["state"] for s in r.sync_status} == {"ok"}
    manual_id = r.reconciliation.manual_account_id
    for chosen in r.chosen:
        ops = r.history[chosen.app_account_id]
        bank_ids = chosen.bank_txids
        assert len(bank_ids) == chosen.bank_lines > 0
        if chosen.import_mode == "reconcile":
            assert chosen.app_account_id == manual_id
            from_bank = [op for op in ops.values() if op["source"] == "bank"]
            reconciled = [op for op in ops.values() if op["source"] == "manual" and op["reconciled"]]
            unmatched = [op for op in ops.values() if op["source"] == "manual" and not op["reconciled"]]
            assert len(reconciled) == 3
            assert len(unmatched) == 1
            assert unmatched[0]["label"].startswith("Chèque")
            # each manual entry typed after a bank line was reconciled by exactly that line
            for op in reconciled:
                assert op["aggregator_transaction_id"] == r.reconciliation.manual[op["id"]]
            txids = [op["aggregator_transaction_id"] for op in from_bank + reconciled]
            assert sorted(txids) == sorted(bank_ids)
            assert len(ops) == len(bank_ids) + 1
        else:
            assert chosen.app_account_id != manual_id
            txids = [op["aggregator_transaction_id"] for op in ops.values()]
            assert sorted(txids) == sorted(bank_ids)  # every live bank line once, nothing else
            assert {op["source"] for op in ops.values()} == {"bank"}
        # the pending lines of the bank are pending operations
        pending_at_bank = {
            str(line["id"])
            for line in bank_truth(ran, chosen.aggregator_account_id)
            if line["coming"] and str(line["id"]) in bank_ids and str(line["id"]) != r.booking.pending_txid
        }
        pending_ops = {op["aggregator_transaction_id"] for op in ops.values() if op["status"] == "pending"}
        assert pending_at_bank <= pending_ops
    # the account left out has no app account and no status
    shown = {a["aggregator_account_id"] for a in r.accounts}
    assert not shown & set(r.not_chosen)
    assert len(r.accounts) == 5
    assert r.recognised_after_sync > 0.6 * sum(len(ops) for ops in r.history.values())


def test_payees_recognise_past_operations(ran):
    r = ran.result
    assert [p.how for p in r.payees] == ["keywords", "keywords", "correction"]
    for outcome in r.payees:
        assert outcome.expected, outcome.payee
        assert outcome.recognised == outcome.expected, outcome.payee["name"]
        # recognised retroactively: none of these had the payee before it existed
        assert outcome.expected - outcome.recognised_before == outcome.expected
    correction = r.payees[-1]
    assert correction.payee["keywords"], "a keyword was suggested from the memo"
    assert r.corrected_operation["id"] in correction.recognised
    assert len(correction.recognised) > 1
    assert r.final_recognised > r.recognised_after_sync


def test_the_booked_pending_line_is_one_booked_operation(ran):
    b = ran.result.booking
    assert b.before["status"] == "pending"
    assert b.before["aggregator_transaction_id"] == b.pending_txid
    assert b.after is not None
    assert b.after["id"] == b.before["id"]
    assert b.after["status"] == "booked"
    assert b.after["aggregator_transaction_id"] == b.booked_txid != b.pending_txid
    assert b.after["amount"] == b.before["amount"]
    assert b.after["category"] == b.before["category"]
    assert b.operations_after == b.operations_before
    assert (b.with_pending_txid, b.with_booked_txid) == (0, 1)
    chosen = next(c for c in ran.result.chosen if c.app_account_id == b.account_id)
    truth = {str(line["id"]): line for line in bank_truth(ran, chosen.aggregator_account_id)}
    assert not is_live(truth[b.pending_txid])
    assert is_live(truth[b.booked_txid])
    assert not truth[b.booked_txid]["coming"]
    live = [line_id for line_id, line in truth.items() if is_live(line)]
    assert len(live) == b.operations_after


def test_a_deleted_account_comes_back_by_replay_and_nothing_else_moves(ran):
    p = ran.result.replay
    assert p.before
    # the history synced at step 5, and the card purchase of step 8 if the card had no pending line
    purchase = ran.result.booking.purchase_txid and ran.result.booking.account_id == p.account_id
    assert len(p.before) == len(ran.result.history[p.account_id]) + (1 if purchase else 0)
    assert p.listed_after_delete is False
    assert p.operations_status_after_delete == 404
    assert p.replay["status"] == "succeeded"
    assert p.replay["result"]["stats"]["imported"] == len(p.before)
    assert p.after == p.before  # same ids, bank fields, payees and categories
    assert p.account_after == p.account_before
    assert p.others_after == p.others_before
    assert sum(len(ops) for ops in p.others_before.values()) > 0


def test_deleted_in_settings_then_synced_again_everything_comes_back_recognised(ran):
    r = ran.result.resync
    assert r.before
    assert r.marked["reimport_pending"] is True
    assert r.after == r.before  # same ids, bank fields, payees and categories, brought by the sync alone
    assert r.gaps
    assert all(gap is not None and Decimal(gap) == 0 for gap in r.gaps.values()), r.gaps


def test_a_refused_password_is_repaired_by_reconnecting(ran):
    c = ran.result.reconnect
    assert c.failed
    assert {s["state"] for s in c.failed} == {"action_needed"}
    assert {s["error"]["code"] for s in c.failed} == {"wrongpass"}
    assert all(s["action"] == "reconnect" and "Reconnecter" in s["message"] for s in c.failed)
    assert "/2.0/auth/webview/reconnect?" in c.offer["connect_url"]
    assert c.callback["state"] is None
    assert {s["state"] for s in c.repaired} == {"ok"}
    assert c.operations_after == c.operations_before
    assert all(gap is not None and Decimal(gap) == 0 for gap in c.gaps.values()), c.gaps


def test_cancelling_pauses_and_keeps_everything(ran):
    q = ran.result.pause
    assert q.entitlements["options"] == []
    assert q.entitlements["auto_sync_allowed"] is False
    assert q.status
    assert {s["state"] for s in q.status} == {"paused"}
    assert set(q.connection_states) == {"paused"}
    assert q.sync_answer == 403
    assert q.sync_problem["code"] == "not_entitled"
    assert q.operations_after == q.operations_before == ran.result.final_operations
    assert ran.result.final_accounts == 5
