"""Accounts over their whole life, end to end through the public APIs on the real stack: deleted in the
app then synced again, opened and closed at the bank, a bank linked while its site was down, a
connection that needs the user (wrong password, lapsed PSD2 consent) repaired with the reconnect webview,
and the balance check that proves nothing is lost (contract: "Account lifecycle")."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import pytest

from harness.devstack import Stack, new_user
from harness.waiting import wait_for
from services.connector.domain.lines import fingerprint
from shared.contract.topics import CONNECTIONS, TRANSACTIONS_RAW
from shared.mongo import make_client
from tests.faults import (
    TopicTail,
    bank_lines,
    count_requests,
    operations_of,
    run_async,
    settle,
    sync_completes,
)

pytestmark = pytest.mark.engines

DATABASE = "lifecycle"


def of_type(connection: dict[str, Any], kind: str) -> str:
    return next(a["aggregator_account_id"] for a in connection["accounts"] if a["type"] == kind)


def select(stack: Stack, user: str, connection_id: str, accounts: list[str]) -> None:
    with stack.client("connector", user) as api:
        api.put(
            f"/v1/users/{user}/connections/{connection_id}/accounts", json={"selected": accounts}
        ).raise_for_status()


def connections(stack: Stack, user: str) -> dict[str, dict[str, Any]]:
    with stack.client("connector", user) as api:
        answer = api.get(f"/v1/users/{user}/connections")
        answer.raise_for_status()
        return {c["connection_id"]: c for c in answer.json()}


def status_of(stack: Stack, user: str) -> dict[str, dict[str, Any]]:
    return {s["aggregator_account_id"]: s for s in stack.status(user)}


def app_accounts(stack: Stack, user: str) -> dict[str, dict[str, Any]]:
    """The importer's accounts by aggregator account id."""
    with stack.client("importer", user) as api:
        answer = api.get(f"/v1/users/{user}/accounts")
        answer.raise_for_status()
        return {a["aggregator_account_id"]: a for a in answer.json() if a["aggregator_account_id"]}


def linked(stack: Stack, user: str, *kinds: str, login: str = "demo") -> tuple[dict[str, Any], list[str]]:
    """A user entitled, a bank linked, the accounts of `kinds` selected, their first sync ended well."""
    stack.entitle(user)
    connection = stack.link_bank(user, login=login)
    accounts = [of_type(connection, kind) for kind in kinds]
    select(stack, user, connection["connection_id"], accounts)
    sync_completes(stack, user)
    return connection, accounts


def zero_gaps(stack: Stack, user: str, accounts: list[str]) -> None:
    """The importer's balance check and the connector's status agree: nothing missing, nothing extra."""
    shown = app_accounts(stack, user)
    status = status_of(stack, user)
    for account in accounts:
        assert shown[account]["bank_balance"] is not None, shown[account]
        assert Decimal(shown[account]["balance_gap"]) == 0, shown[account]
        assert shown[account]["computed_balance"] == shown[account]["bank_balance"]
        assert Decimal(status[account]["balance_gap"]) == 0, status[account]


def test_deleted_in_the_app_then_synced_again_every_operation_comes_back_recognised_once(stack):
    """The help page's workflow: payees created, the bank account deleted in Settings, a sync again."""
    user = new_user("resync")
    _, (checking,) = linked(stack, user, "checking")
    truth = bank_lines(stack, [checking])
    first = settle(stack, user, truth)
    zero_gaps(stack, user, [checking])

    # a payee of the user's own, from a memo the bank really uses
    with stack.client("importer", user) as api:
        account_id = app_accounts(stack, user)[checking]["account_id"]
        some = api.get(f"/v1/users/{user}/accounts/{account_id}/operations", params={"limit": 200}).json()
    word = Counter(
        w for op in some["items"] for w in op["memo"].split() if w.isalpha() and len(w) >= 6
    ).most_common(1)[0][0]
    with stack.client("categorizer", user) as api:
        created = api.post(
            f"/v1/users/{user}/payees",
            json={"name": f"Mon tiers {word.title()}", "category": "divers", "keywords": [word.lower()]},
        )
        assert created.status_code == 201, created.text
        payee_id = created.json()["id"]

    with stack.client("importer", user) as api:
        assert api.delete(f"/v1/users/{user}/accounts/{account_id}").status_code == 204
        assert api.get(f"/v1/users/{user}/accounts/{account_id}/operations").status_code == 404
    # the connector learnt it from banksync.operations.v1: the next sync takes the whole history again
    wait_for(lambda: status_of(stack, user)[checking]["reimport_pending"], 60, "the re-import mark")

    with TopicTail(stack.engines.kafka_bootstrap, [TRANSACTIONS_RAW]) as tail:
        stack.sync(user)
        sync_completes(stack, user)
        again = settle(stack, user, truth)
        republished = tail.distinct(TRANSACTIONS_RAW, user, "transaction.observed")
    assert again.operations == first.operations == len(truth[checking])
    assert republished == len(truth[checking]), "the whole history went out again"
    assert not status_of(stack, user)[checking]["reimport_pending"]
    back = app_accounts(stack, user)[checking]
    assert back["account_id"] == account_id, "the same app account comes back"
    mine = [
        op for op in operations_of(stack, user)[checking] if op["payee"] and op["payee"]["id"] == payee_id
    ]
    assert mine, "the payee's operations are back"
    assert all(op["category"] == "divers" for op in mine), "recognised with today's rules"
    zero_gaps(stack, user, [checking])

    # deleted again, then a replay and a re-sync at once: still one operation per bank line
    with stack.client("importer", user) as api:
        assert api.delete(f"/v1/users/{user}/accounts/{account_id}").status_code == 204
    wait_for(lambda: status_of(stack, user)[checking]["reimport_pending"], 60, "the re-import mark")
    with stack.client("importer", "ops-bot", scopes="ops") as ops_api:
        replay = ops_api.post("/v1/ops/replay", json={"user_id": user, "aggregator_account_id": checking})
        assert replay.status_code == 202, replay.text
    stack.sync(user)
    sync_completes(stack, user)
    both = settle(stack, user, truth)
    assert both.operations == len(truth[checking])
    zero_gaps(stack, user, [checking])


def test_accounts_opened_and_closed_at_the_bank_after_linking(stack):
    user = new_user("bankacc")
    connection, (checking, savings) = linked(stack, user, "checking", "savings")
    connection_id = connection["connection_id"]
    settle(stack, user, bank_lines(stack, [checking, savings]))
    savings_ops = app_accounts(stack, user)[savings]
    with stack.sandbox() as sandbox:
        opened = sandbox.post(f"/sandbox/connections/{connection_id}/accounts", json={"type": "savings"})
        opened.raise_for_status()
        new_account = str(opened.json()["id"])
        sandbox.post(f"/sandbox/accounts/{savings}/delete").raise_for_status()

    with TopicTail(stack.engines.kafka_bootstrap, [CONNECTIONS]) as tail:
        stack.sync(user)
        sync_completes(stack, user)
        shown = {a["aggregator_account_id"]: a for a in connections(stack, user)[connection_id]["accounts"]}
        assert shown[new_account]["selected"] is False
        assert shown[new_account]["closed"] is False
        assert shown[savings]["closed"] is True
        assert shown[checking]["closed"] is False
        status = status_of(stack, user)
        assert status[savings]["state"] == "closed"
        assert status[checking]["state"] == "ok"
        assert new_account not in status, "listed, unselected until the user chooses it"
        # a second sync announces nothing again
        stack.sync(user)
        sync_completes(stack, user)
        wait_for(lambda: tail.count(CONNECTIONS, user, "account.closed") >= 1, 30, "account.closed")
        discovered = tail.events(CONNECTIONS, user, "account.discovered")
        assert [e.data["account"]["aggregator_account_id"] for e in discovered] == [new_account]
        assert tail.count(CONNECTIONS, user, "account.closed") == 1

    # the closed account keeps its operations; the new one, once chosen, imports its whole history
    assert app_accounts(stack, user)[savings]["account_id"] == savings_ops["account_id"]
    select(stack, user, connection_id, [checking, new_account])
    wait_for(
        lambda: (s := status_of(stack, user).get(new_account)) is not None and s["state"] == "ok",
        120,
        "the new account's first sync",
    )
    truth = bank_lines(stack, [checking, savings, new_account])
    outcome = settle(stack, user, truth)
    assert outcome.operations == sum(len(ids) for ids in truth.values())
    zero_gaps(stack, user, [checking, new_account])


def test_a_bank_linked_while_its_site_was_down_gets_its_accounts_at_the_first_good_sync(stack):
    user = new_user("down")
    stack.entitle(user)
    connection = stack.link_bank(user, login="unavailable")
    assert connection["accounts"] == []
    assert connection["error"]["code"] == "websiteUnavailable"
    with stack.sandbox() as sandbox:
        sandbox.post(
            f"/sandbox/connections/{connection['connection_id']}/state", json={"state": None}
        ).raise_for_status()
    stack.sync(user)
    shown = wait_for(
        lambda: (c := connections(stack, user)[connection["connection_id"]])["accounts"] and c, 60, "accounts"
    )
    assert shown["state"] is None
    assert len(shown["accounts"]) == 3
    assert not any(a["selected"] for a in shown["accounts"])


def test_reconnect_after_wrongpass_keeps_the_cursor_nothing_twice_nothing_missed(stack):
    user = new_user("reconnect")
    connection, (checking,) = linked(stack, user, "checking")
    connection_id = connection["connection_id"]
    settle(stack, user, bank_lines(stack, [checking]))

    with TopicTail(stack.engines.kafka_bootstrap, [TRANSACTIONS_RAW]) as tail:
        with stack.sandbox() as sandbox:
            sandbox.post(
                f"/sandbox/connections/{connection_id}/state", json={"state": "wrongpass"}
            ).raise_for_status()
            before = sandbox.post(
                f"/sandbox/accounts/{checking}/transactions",
                json=[
                    {"date": "2026-12-01", "value": -12.5, "original_wording": "CB BOULANGERIE AVANT 01/12"}
                ],
            ).json()["ids"]
        stack.sync(user)
        failed = wait_for(
            lambda: (s := status_of(stack, user)[checking])["state"] == "action_needed" and s,
            60,
            "action_needed",
        )
        assert failed["error"]["code"] == "wrongpass"
        assert failed["action"] == "reconnect"
        assert "Reconnecter" in failed["message"]

        # the night leaves it alone: only the user can repair it
        requests = count_requests(stack, user)
        with stack.client("connector", "ops-bot", scopes="ops") as ops:
            report = ops.post("/v1/ops/nightly-run").json()
        assert report["waiting_on_user"] >= 1
        assert count_requests(stack, user) == requests

        with stack.sandbox() as sandbox:
            after = sandbox.post(
                f"/sandbox/accounts/{checking}/transactions",
                json=[{"date": "2026-12-02", "value": -7.2, "original_wording": "CB PRIMEUR APRES 02/12"}],
            ).json()["ids"]
        with stack.client("connector", user) as api:
            offered = api.post(f"/v1/users/{user}/connections/{connection_id}/reconnect")
            assert offered.status_code == 200, offered.text
        assert "/2.0/auth/webview/reconnect?" in offered.json()["connect_url"]
        back = stack.reconnect_bank(user, connection_id)
        assert back.status_code == 200, back.text
        assert back.json()["state"] is None
        # the reconnect starts a sync from the kept cursor
        wait_for(lambda: status_of(stack, user)[checking]["state"] == "ok", 90, "synced after the reconnect")
        truth = bank_lines(stack, [checking])
        settle(stack, user, truth)
        wait_for(
            lambda: tail.count(TRANSACTIONS_RAW, user, "transaction.observed") >= 2, 30, "the two new lines"
        )
        published = Counter(
            str(e.data["transaction"]["id"])
            for e in tail.events(TRANSACTIONS_RAW, user, "transaction.observed")
        )
    assert published == Counter({str(before[0]): 1, str(after[0]): 1}), (
        "each new line once, nothing else again"
    )
    zero_gaps(stack, user, [checking])


def test_the_balance_gap_fires_when_an_operation_is_really_missing(stack):
    """A booked line the bank counts in its balance never reaches the app (here: the connector is made
    to believe it published it already, as a change-detection bug would): the next check says so."""
    user = new_user("gap")
    _, (checking,) = linked(stack, user, "checking")
    settle(stack, user, bank_lines(stack, [checking]))
    zero_gaps(stack, user, [checking])
    with stack.sandbox() as sandbox:
        added = sandbox.post(
            f"/sandbox/accounts/{checking}/transactions",
            json=[{"date": "2026-12-03", "value": -9.99, "original_wording": "CB LIGNE PERDUE 03/12"}],
        )
        added.raise_for_status()
    lost = added.json()["transactions"][0]

    async def mark_published() -> None:
        client = make_client(stack.engines.mongodb_url)
        try:
            key = f"{user}:{checking}"
            await client[f"{DATABASE}_conn"]["seen_transactions"].insert_one(
                {"_id": f"{key}:{lost['id']}", "account": key, "fp": fingerprint(lost)}
            )
        finally:
            await client.close()

    run_async(mark_published())
    stack.sync(user)
    sync_completes(stack, user)
    gap = wait_for(
        lambda: (g := app_accounts(stack, user)[checking]["balance_gap"]) and Decimal(g) != 0 and Decimal(g),
        60,
        "the gap",
    )
    assert gap == Decimal("-9.99"), "the bank counts the line the app never got"
    shown = wait_for(
        lambda: (g := status_of(stack, user)[checking]["balance_gap"]) and Decimal(g) != 0 and Decimal(g),
        30,
        "the gap in the sync status",
    )
    assert shown == gap
    metrics = httpx.get(f"{stack.url('importer')}/metrics", timeout=10).text
    gauge = next(line for line in metrics.splitlines() if line.startswith("banksync_balance_gap_accounts"))
    assert float(gauge.split()[-1]) >= 1


def test_a_lapsed_psd2_consent_needs_the_reconnect_webview(stack):
    """Last in the module: it moves the sandbox's clock 181 days forward."""
    user = new_user("consent")
    connection, (checking,) = linked(stack, user, "checking")
    with stack.sandbox() as sandbox:
        sandbox.post("/sandbox/clock", json={"advance_days": 181}).raise_for_status()
    stack.sync(user)
    lapsed = wait_for(
        lambda: (s := status_of(stack, user)[checking])["state"] == "action_needed" and s, 60, "action_needed"
    )
    assert lapsed["error"]["code"] == "SCARequired"
    assert stack.reconnect_bank(user, connection["connection_id"]).json()["state"] is None
    wait_for(lambda: status_of(stack, user)[checking]["state"] == "ok", 90, "synced after the reconnect")
    settle(stack, user, bank_lines(stack, [checking]))
