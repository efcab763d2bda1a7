"""Working with operations through the importer's HTTP API, on the real stack (Kafka + FerretDB): search
and filters, the listing of every account, the CSV export, editing and deleting manual operations, and
undoing a reconciliation.

The importer runs as its own process with a database and consumer groups of its own. Bank lines come in
as the connector sends them (raw events on Kafka); categorisations are filed as the importer's consumer
of `banksync.categorizations.v1` files them (its `Categorizations`, against the service's database),
without a categorizer running.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from harness.devstack import new_user
from harness.paging import pages
from harness.waiting import wait_for
from services.importer.adapters.mongo import MongoCategorizations, OperationStore
from services.importer.handlers.categorizations import Categorizations
from shared.contract.envelope import account_key, event_type
from shared.contract.payloads import OperationCategorized, PayeeRef
from shared.contract.topics import OPERATIONS
from shared.mongo import make_client
from tests.importer_support import (
    RawProducer,
    Txn,
    account_for,
    accounts_of,
    all_operations,
    api,
    read_topic,
    synced_event,
)

pytestmark = pytest.mark.engines

DATABASE = "importer_it_operations_api"
DAY = dt.date(2026, 9, 2)
FILLERS = 520  # more than a page of the export (500)


def listing(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of a listing, checking each page's size."""

    def fetch(page_params: dict[str, Any]) -> dict[str, Any]:
        answer = client.get(path, params=page_params)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    items: list[dict[str, Any]] = []
    limit = params.pop("limit", None)
    for body in pages(fetch, limit, **params):
        items += body["items"]
        if body["next_cursor"] is not None:
            assert len(body["items"]) == int(limit or 50)
    return items


def newest_first(ops: list[dict[str, Any]]) -> list[str]:
    return [o["id"] for o in sorted(ops, key=lambda o: (o["date"], o["id"]), reverse=True)]


def assert_problem(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["code"] == code, answer.json()


async def operation_records(bootstrap: str, user: str, expected: int) -> list[dict[str, Any]]:
    """The user's records on banksync.operations.v1 as JSON (their attributes stay readable)."""
    records = await read_topic(
        bootstrap,
        OPERATIONS,
        match=lambda r: r.key is not None and r.key.decode().startswith(f"{user}:"),
        expected=expected,
    )
    return [json.loads(r.value) for r in records]


# ---- one user with two bank accounts and a manual one, categorised -------------------------------------


@dataclass
class World:
    user: str
    checking: str  # app account of aggregator account 8101
    savings: str  # app account of aggregator account 8102
    manual: str  # a manual account
    by_txid: dict[str, dict[str, Any]]
    manual_op: dict[str, Any]


CHECKING_LINES = [
    Txn(100, "8101", DAY, Decimal("-42.50"), "PRLV SEPA EDF CLIENTS ÉLECTRICITÉ", "Électricité de France"),
    Txn(101, "8101", DAY, Decimal("-23.10"), "CARTE X4974 02/09 CARREFOUR MARKET", "CARREFOUR MARKET"),
    Txn(102, "8101", DAY - dt.timedelta(days=3), Decimal("-61.00"), "PRLV SEPA ENGIE GAZ", "ENGIE"),
    Txn(103, "8101", DAY, Decimal("-15.00"), "CARTE X4974 02/09 FNAC", "FNAC", coming=True),
    Txn(104, "8101", DAY, Decimal("-1.00"), "=CMD|' /C calc'!A0", "+33 APPEL"),
] + [
    Txn(
        1000 + n,
        "8101",
        DAY - dt.timedelta(days=n % 80),
        Decimal(-(n % 7) - 1) - Decimal("0.20"),
        f"CARTE X4974 BOULANGERIE PAUL {n}",
        "BOULANGERIE PAUL",
    )
    for n in range(FILLERS)
]
SAVINGS_LINES = [
    Txn(
        200,
        "8102",
        DAY - dt.timedelta(days=1),
        Decimal("10.00"),
        "VIR SEPA REMBOURSEMENT ELECTRICITE",
        "REMB",
    ),
    Txn(201, "8102", DAY - dt.timedelta(days=40), Decimal("500.00"), "VIR SEPA EPARGNE", "EPARGNE"),
]


@pytest.fixture(scope="module")
async def world(importer, engines) -> World:
    user = new_user("opsapi")
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "bnp", CHECKING_LINES, sync_run="run-1")
        await producer.send(user, "bnp", SAVINGS_LINES, sync_run="run-1")
    with api(importer.url, user) as client:
        created = client.post(f"/v1/users/{user}/accounts", json={"name": "Chalet", "currency": "EUR"})
        assert created.status_code == 201, created.text
        manual = created.json()["account_id"]
        op = client.post(
            f"/v1/users/{user}/accounts/{manual}/operations",
            json={
                "date": DAY.isoformat(),
                "amount": "-42.50",
                "currency": "EUR",
                "label": "Électricité chalet",
            },
        )
        assert op.status_code == 201, op.text

        def imported() -> dict[str, dict[str, Any]] | None:
            found: dict[str, dict[str, Any]] = {}
            for acct, count in (("8101", len(CHECKING_LINES)), ("8102", len(SAVINGS_LINES))):
                account = account_for(client, user, acct)
                ops = all_operations(client, user, account["account_id"]) if account else []
                if len(ops) < count:
                    return None
                found |= {o["aggregator_transaction_id"]: o for o in ops}
            return found

        by_txid = wait_for(imported, 90, every=0.5, what="the bank lines imported")
        checking = by_txid["100"]["account_id"]
        savings = by_txid["200"]["account_id"]

    # the categorizer's results, filed as the importer's consumer files them
    def result(txid: str, category: str, payee: PayeeRef | None = None) -> OperationCategorized:
        op = by_txid[txid]
        return OperationCategorized(
            user_id=user,
            account_id=op["account_id"],
            operation_id=op["id"],
            payee=payee,
            category=category,
            source="global",
            keyword=None,
            rules_version=1,
            month=op["date"][:7],
        )

    client = make_client(engines.mongodb_url)
    try:
        categorizations = Categorizations(MongoCategorizations(OperationStore(client[DATABASE])))
        await categorizations.apply(
            [
                result("100", "energie/electricite", PayeeRef(id="p-edf", name="EDF")),
                result("102", "energie/gaz"),
                result("101", "alimentation"),
                result("200", "energie"),
            ]
        )
    finally:
        await client.close()
    return World(user, checking, savings, manual, by_txid, op.json())


def ids_of(ops: list[dict[str, Any]]) -> set[str]:
    return {o["aggregator_transaction_id"] or o["id"] for o in ops}


# ---- search and filters -------------------------------------------------------------------------------


def test_words_ignore_accents_and_case_and_must_all_match(importer, world):
    path = f"/v1/users/{world.user}/accounts/{world.checking}/operations"
    with api(importer.url, world.user) as client:
        for q in ("ELECTRICITE", "électr", "edf elec", "Électricité  France!"):
            assert ids_of(listing(client, path, q=q)) == {"100"}, q
        assert listing(client, path, q="edf gaz") == []
        assert ids_of(listing(client, path, q="carref")) == {"101"}
        assert listing(client, path, q="arrefour") == []  # a word's start, not its middle
        assert len(listing(client, path, q="!!")) == len(CHECKING_LINES)  # no word: no filter


def test_category_payee_amount_status_source_reconciled(importer, world):
    path = f"/v1/users/{world.user}/accounts/{world.checking}/operations"
    with api(importer.url, world.user) as client:
        assert ids_of(listing(client, path, category="energie")) == {"100", "102"}
        assert ids_of(listing(client, path, category="energie/electricite")) == {"100"}
        assert listing(client, path, category="energie/eau") == []
        assert ids_of(listing(client, path, payee_id="p-edf")) == {"100"}
        shown = listing(client, path, category="energie", limit=1)
        assert [o["category"] for o in shown] == ["energie/electricite", "energie/gaz"]
        assert shown[0]["payee"] == {"id": "p-edf", "name": "EDF"}
        assert ids_of(listing(client, path, min_amount="-45", max_amount="-40.00")) == {"100"}
        assert ids_of(listing(client, path, min_amount="-61.00", max_amount="-42.5")) == {"100", "102"}
        assert ids_of(listing(client, path, status="pending")) == {"103"}
        assert len(listing(client, path, source="bank", reconciled="false", limit=500)) == len(CHECKING_LINES)
        assert listing(client, path, source="manual") == []
        assert listing(client, path, reconciled="true") == []
        for bad in ({"min_amount": "abc"}, {"max_amount": "1e99"}, {"min_amount": "NaN"}):
            assert_problem(client.get(path, params=bad), 422, "invalid_amount")
        assert_problem(client.get(path, params={"min_amount": "5", "max_amount": "1"}), 422, "invalid_amount")
        assert_problem(client.get(path, params={"category": "Énergie"}), 422, "validation_error")
        assert_problem(client.get(path, params={"status": "coming"}), 422, "validation_error")
        assert_problem(client.get(path, params={"cursor": "nope"}), 400, "invalid_cursor")
        assert_problem(client.get(f"/v1/users/{world.user}/accounts/nope/operations"), 404, "unknown_account")


def test_combined_filters_page_like_the_whole_listing(importer, world):
    path = f"/v1/users/{world.user}/accounts/{world.checking}/operations"
    with api(importer.url, world.user) as client:
        everything = listing(client, path, limit=500)
        expected = [
            o["id"]
            for o in everything
            if "BOULANGERIE" in o["memo"]
            and Decimal("-5.20") <= Decimal(o["amount"]) <= Decimal("-2.20")
            and "2026-07-01" <= o["date"] <= "2026-08-31"
        ]
        assert len(expected) > 50
        params = {"q": "boulang paul", "status": "booked", "min_amount": "-5.20", "max_amount": "-2.20"}
        window = {"from": "2026-07-01", "to": "2026-08-31"}
        for limit in (7, 50, 500):
            pages = listing(client, path, **params, **window, limit=limit)
            assert [o["id"] for o in pages] == expected, limit
        assert [o["id"] for o in everything] == newest_first(everything)


def test_the_listing_of_every_account(importer, world):
    path = f"/v1/users/{world.user}/operations"
    with api(importer.url, world.user) as client:
        found = listing(client, path, q="electricite", limit=1)
        assert ids_of(found) == {"100", "200", world.manual_op["id"]}
        assert [o["id"] for o in found] == newest_first(found)
        assert {o["account_id"] for o in found} == {world.checking, world.savings, world.manual}
        # every operation once, newest first across accounts, in pages that cut through days and accounts
        per_account = [
            o
            for account in (world.checking, world.savings, world.manual)
            for o in listing(client, f"/v1/users/{world.user}/accounts/{account}/operations", limit=500)
        ]
        for limit in (3, 500):
            assert [o["id"] for o in listing(client, path, limit=limit)] == newest_first(per_account)
        assert ids_of(listing(client, path, category="energie")) == {"100", "102", "200"}
        assert ids_of(listing(client, path, source="manual")) == {world.manual_op["id"]}
        assert ids_of(listing(client, path, min_amount="100")) == {"201"}
        days = listing(client, path, **{"from": "2026-08-01", "to": "2026-08-31"}, limit=500)
        assert days
        assert all(o["date"].startswith("2026-08") for o in days)
        other = new_user("nobody")
        with api(importer.url, other) as stranger:
            assert stranger.get(f"/v1/users/{other}/operations").json() == {"items": [], "next_cursor": None}


# ---- the CSV export -------------------------------------------------------------------------------------


def test_the_csv_export(importer, world):
    path = f"/v1/users/{world.user}/accounts/{world.checking}/operations.csv"
    with api(importer.url, world.user) as client:
        answer = client.get(path, params={"category": "energie"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "text/csv; charset=utf-8"
        disposition = answer.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="operations-Banque-bnp-8101-')
        assert disposition.endswith(".csv")
        raw = answer.content
        assert raw.startswith(b"\xef\xbb\xbf")
        lines = raw[3:].decode("utf-8").split("\r\n")
        assert lines[0] == "Date;Libellé;Mémo;Montant;Devise;Catégorie;Tiers;Statut;Source;Rapprochée"
        assert lines[1:] == [
            "02/09/2026;Électricité de France;PRLV SEPA EDF CLIENTS ÉLECTRICITÉ;-42,50;EUR;"
            "energie/electricite;EDF;comptabilisée;banque;non",
            "30/08/2026;ENGIE;PRLV SEPA ENGIE GAZ;-61,00;EUR;energie/gaz;;comptabilisée;banque;non",
            "",
        ]
        guarded = client.get(path, params={"q": "appel"}).content.decode("utf-8-sig").split("\r\n")
        assert guarded[1] == "02/09/2026;'+33 APPEL;'=CMD|' /C calc'!A0;-1,00;EUR;;;comptabilisée;banque;non"
        pending = client.get(path, params={"status": "pending"}).content.decode("utf-8-sig")
        assert "à venir" in pending
        # the whole account: more than one page of the export, every operation once, newest first
        rows = client.get(path).content.decode("utf-8-sig").split("\r\n")[1:-1]
        everything = listing(
            client, f"/v1/users/{world.user}/accounts/{world.checking}/operations", limit=500
        )
        assert len(rows) == len(everything) == len(CHECKING_LINES) > 500
        assert [r.split(";")[3] for r in rows] == [o["amount"].replace(".", ",") for o in everything]
        assert_problem(client.get(path, params={"max_amount": "x"}), 422, "invalid_amount")
        assert_problem(
            client.get(f"/v1/users/{world.user}/accounts/nope/operations.csv"), 404, "unknown_account"
        )


# ---- editing and deleting manual operations ---------------------------------------------------------------


async def test_manual_operations_are_edited_and_deleted(importer, engines, world):
    user = world.user
    base = f"/v1/users/{user}/accounts/{world.manual}/operations"
    with api(importer.url, user) as client:
        created = client.post(
            base, json={"date": "2026-08-10", "amount": "-12.30", "currency": "EUR", "label": "Boulangerie"}
        )
        assert created.status_code == 201, created.text
        op_id = created.json()["id"]
        edited = client.patch(
            f"{base}/{op_id}", json={"amount": "-14.5", "date": "2026-09-01", "label": "Fromager"}
        )
        assert edited.status_code == 200, edited.text
        body = edited.json()
        assert (body["amount"], body["date"], body["label"], body["source"]) == (
            "-14.50",
            "2026-09-01",
            "Fromager",
            "manual",
        )
        shown = {o["id"]: o for o in listing(client, base)}
        assert (shown[op_id]["amount"], shown[op_id]["date"], shown[op_id]["label"]) == (
            "-14.50",
            "2026-09-01",
            "Fromager",
        )
        assert ids_of(listing(client, base, q="FROMAGER")) == {op_id}
        assert listing(client, base, q="boulangerie") == []
        only_label = client.patch(f"{base}/{op_id}", json={"label": "Fromagerie"})
        assert (only_label.json()["label"], only_label.json()["amount"]) == ("Fromagerie", "-14.50")
        balance = {a["account_id"]: a["balance"] for a in accounts_of(client, user)}[world.manual]
        assert Decimal(balance) == Decimal("-42.50") + Decimal("-14.50")

        assert_problem(client.patch(f"{base}/{op_id}", json={"amount": "abc"}), 422, "invalid_amount")
        assert_problem(client.patch(f"{base}/{op_id}", json={"date": "2026-13-01"}), 422, "validation_error")
        assert_problem(client.patch(f"{base}/{op_id}", json={"label": ""}), 422, "validation_error")
        assert_problem(client.patch(f"{base}/{op_id}", json={"memo": "x"}), 422, "validation_error")
        assert_problem(client.patch(f"{base}/{op_id}", json={"currency": "USD"}), 422, "currency_mismatch")
        assert_problem(client.patch(f"{base}/nope", json={"label": "x"}), 404, "unknown_operation")
        # another account's operation through this account's path is unknown here
        bank_op = world.by_txid["101"]["id"]
        assert_problem(client.patch(f"{base}/{bank_op}", json={"label": "x"}), 404, "unknown_operation")
        checking = f"/v1/users/{user}/accounts/{world.checking}/operations/{bank_op}"
        assert_problem(client.patch(checking, json={"label": "x"}), 409, "bank_operation")
        assert_problem(client.delete(checking), 409, "bank_operation")

        assert client.delete(f"{base}/{op_id}").status_code == 204
        assert op_id not in {o["id"] for o in listing(client, base)}
        assert_problem(client.delete(f"{base}/{op_id}"), 404, "unknown_operation")
        assert_problem(client.patch(f"{base}/{op_id}", json={"label": "x"}), 404, "unknown_operation")

    records = await operation_records(engines.kafka_bootstrap, user, expected=1)
    mine = [(r["type"], r["subject"]) for r in records if r["subject"] == op_id]
    assert mine == [
        (event_type("operation.created"), op_id),
        (event_type("operation.updated"), op_id),
        (event_type("operation.updated"), op_id),
        (event_type("operation.deleted"), op_id),
    ]
    assert all(r["id"] for r in records)


# ---- undoing a reconciliation -------------------------------------------------------------------------


async def test_an_undone_reconciliation_stays_undone(importer, engines):
    user, acct = new_user("undo"), "8201"
    matched = Txn(300, acct, DAY, Decimal("-42.50"), "PRLV SEPA EDF CLIENTS", "EDF")
    other = Txn(301, acct, DAY, Decimal("-99.99"), "PRLV SEPA BOUYGUES", "BOUYGUES")
    with api(importer.url, user) as client:
        target = client.post(f"/v1/users/{user}/accounts", json={"name": "Courant"}).json()["account_id"]
        base = f"/v1/users/{user}/accounts/{target}/operations"
        manual = client.post(
            base,
            json={"date": DAY.isoformat(), "amount": "-42.50", "currency": "EUR", "label": "Facture EDF"},
        ).json()
        link = client.put(
            f"/v1/users/{user}/links/{acct}", json={"target_account_id": target, "import_mode": "reconcile"}
        )
        assert link.status_code == 200, link.text
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "sg", [matched, other], sync_run="run-1")
        await producer.send_event(
            account_key(user, acct),
            synced_event(user, "sg", acct, sync_run="run-1", balance="1000.00", transactions=2),
        )

    with api(importer.url, user) as client:

        def checked() -> dict[str, Any] | None:
            account = next(a for a in accounts_of(client, user) if a["account_id"] == target)
            return account if account["bank_balance"] == "1000.00" else None

        wait_for(checked, 60, every=0.5, what="the first balance check")
        ops = {o["id"]: o for o in listing(client, base)}
        assert ops[manual["id"]]["reconciled"] is True
        assert ops[manual["id"]]["aggregator_transaction_id"] == "300"
        assert len(ops) == 2  # the manual operation (reconciled) and line 301

        # the date and amount of a reconciled operation wait for the match to be undone; its label does not
        one = f"{base}/{manual['id']}"
        assert_problem(client.patch(one, json={"amount": "-40.00"}), 409, "reconciled_operation")
        assert_problem(client.patch(one, json={"date": "2026-09-03"}), 409, "reconciled_operation")
        assert_problem(client.delete(one), 409, "reconciled_operation")
        relabelled = client.patch(one, json={"label": "Facture EDF septembre", "amount": "-42.50"})
        assert relabelled.status_code == 200, relabelled.text
        assert relabelled.json()["reconciled"] is True

        undone = client.delete(f"{one}/reconciliation")
        assert undone.status_code == 200, undone.text
        body = undone.json()
        assert body["operation"]["id"] == manual["id"]
        assert (body["operation"]["reconciled"], body["operation"]["memo"]) == (False, "")
        assert body["operation"]["aggregator_transaction_id"] is None
        bank = body["bank_operation"]
        assert (bank["source"], bank["aggregator_transaction_id"], bank["amount"]) == (
            "bank",
            "300",
            "-42.50",
        )
        assert (bank["memo"], bank["account_id"], bank["reconciled"]) == (
            "PRLV SEPA EDF CLIENTS",
            target,
            False,
        )

        ops = {o["id"]: o for o in listing(client, base)}
        assert {manual["id"], bank["id"]} <= set(ops)
        assert len(ops) == 3
        assert ops[manual["id"]]["reconciled"] is False
        assert_problem(client.delete(f"{one}/reconciliation"), 409, "not_reconciled")
        assert_problem(client.delete(f"{base}/{bank['id']}/reconciliation"), 409, "not_reconciled")
        assert_problem(client.delete(f"{base}/nope/reconciliation"), 404, "unknown_operation")
        # now the manual operation is the user's again
        assert client.patch(one, json={"date": (DAY + dt.timedelta(days=1)).isoformat()}).status_code == 200

    # the same line again; then in a new sync a newer version of it, its deletion and its return (a new
    # start: the only path where a line looks for a manual operation again), one more line, the balance
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "sg", [matched], sync_run="run-1")
        versions = []
        for n, (wording, deleted) in enumerate([("ECH", False), ("ECH", True), ("ECH 2", False)]):
            version = Txn(300, acct, DAY, Decimal("-42.50"), f"PRLV SEPA EDF CLIENTS {wording}", "EDF")
            version.last_update = dt.datetime(2026, 9, 3 + n, tzinfo=dt.UTC)
            version.deleted = version.last_update if deleted else None
            versions.append(version)
        extra = Txn(302, acct, DAY, Decimal("-5.00"), "CARTE X4974 02/09 PAUL", "PAUL")
        await producer.send(user, "sg", [*versions, extra], sync_run="run-2")
        await producer.send_event(
            account_key(user, acct),
            synced_event(user, "sg", acct, sync_run="run-2", balance="995.00", transactions=4),
        )
    with api(importer.url, user) as client:

        def second_check() -> dict[str, Any] | None:
            account = next(a for a in accounts_of(client, user) if a["account_id"] == target)
            return account if account["bank_balance"] == "995.00" else None

        account = wait_for(second_check, 60, every=0.5, what="the second balance check")
        assert (account["computed_balance"], account["balance_gap"]) == ("995.00", "0.00")
        ops = listing(client, base)
        assert len(ops) == 4  # the manual operation, 300 on its own, 301, 302: nothing matched again
        by_txid = {o["aggregator_transaction_id"]: o for o in ops}
        assert set(by_txid) == {None, "300", "301", "302"}
        assert by_txid[None]["id"] == manual["id"]
        assert by_txid[None]["reconciled"] is False
        assert by_txid["300"]["source"] == "bank"
        assert by_txid["300"]["memo"] == "PRLV SEPA EDF CLIENTS ECH 2"

    records = await operation_records(engines.kafka_bootstrap, user, expected=1)
    about = [(r["type"], r["subject"]) for r in records]
    assert (event_type("operation.imported"), bank["id"]) in about  # the categorizer categorises it
    assert (event_type("operation.updated"), manual["id"]) in about
