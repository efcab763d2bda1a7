"""Balances on the real stack (Kafka 4.2 + FerretDB): lines and `account.synced` in, exact figures out.

The importer runs as its own process with a database and consumer groups of its own; the tests publish
on the raw topic what the connector publishes (each sync's lines, then the account's `account.synced`)
and read what the importer says: the account's `bank_balance`, `computed_balance` and `balance_gap`
over the API, its `account.balance_checked` events, the gauge `banksync_balance_gap_accounts`, the
warning in its log, and the opening balance it fixed in MongoDB.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pymongo
import pytest

from harness.devstack import ServiceProcess, new_user
from harness.waiting import wait_for, wait_for_async
from services.importer.domain.identities import auto_account_id
from shared.contract.envelope import CloudEvent, account_key, event_type
from shared.contract.topics import DLQ, OPERATIONS
from tests.importer_support import (
    RawProducer,
    Txn,
    account_for,
    accounts_of,
    all_operations,
    api,
    history,
    raw_event,
    read_topic,
    synced_event,
)
from tests.kafka_helpers import opened

pytestmark = pytest.mark.engines

DATABASE = "importer_it_balances"
DAY = dt.date(2026, 11, 20)
LATER = dt.datetime(2026, 11, 23, 8, tzinfo=dt.UTC)
CHECKED = event_type("account.balance_checked")


def total(txns: list[Txn]) -> Decimal:
    return sum((t.value for t in txns), Decimal("0.00"))


class Bank:
    """What the connector publishes for one aggregator account: each sync's lines, then its balance. Every
    record is kept, so that the same records can be sent again byte for byte (a redelivery)."""

    def __init__(self, producer: RawProducer, user: str, account: str, bank_id: str = "bnp") -> None:
        self.producer, self.user, self.account, self.bank_id = producer, user, account, bank_id
        self.sent: dict[str, list[CloudEvent]] = {}

    async def sync(
        self,
        run: str,
        lines: list[Txn],
        balance: Decimal,
        coming: Decimal | None = None,
        initial: bool = False,
    ) -> None:
        events = [raw_event(self.user, self.bank_id, t, sync_run=run, initial=initial) for t in lines]
        events.append(
            synced_event(
                self.user,
                self.bank_id,
                self.account,
                sync_run=run,
                balance=balance,
                coming=coming,
                transactions=len(lines),
                initial=initial,
            )
        )
        self.sent[run] = events
        await self.send(events)

    async def send(self, events: list[CloudEvent]) -> None:
        for event in events:
            await self.producer.send_event(account_key(self.user, self.account), event)

    async def redeliver(self, *runs: str) -> None:
        await self.send([event for run in runs for event in self.sent[run]])


async def checks(
    bootstrap: str, user: str, done: Callable[[list[dict[str, Any]]], bool], within_s: float = 90
) -> list[dict[str, Any]]:
    """The `account.balance_checked` events of `user` (data, with the event id), once `done` says so."""

    async def found() -> list[dict[str, Any]]:
        records = await read_topic(
            bootstrap,
            OPERATIONS,
            match=lambda r: r.key is not None and r.key.decode().startswith(f"{user}:"),
            within_s=20,
            quiet_s=0.5,
        )
        events = [opened(r.value) for r in records]
        return [{**e.data, "id": e.id} for e in events if e.type == CHECKED]

    return await wait_for_async(found, within_s, f"the balance checks of {user}", 0.5, until=done)


def of_run(found: list[dict[str, Any]], run: str, generation: int = 1) -> list[dict[str, Any]]:
    return [c for c in found if c["sync_run_id"] == run and c["generation"] == generation]


def gap_accounts(importer: ServiceProcess) -> float:
    for line in httpx.get(f"{importer.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("banksync_balance_gap_accounts "):
            return float(line.split()[1])
    raise AssertionError("no banksync_balance_gap_accounts in /metrics")


def gauge_says(importer: ServiceProcess, expected: float) -> None:
    wait_for(lambda: gap_accounts(importer) == expected, 10, what=f"the gauge at {expected}")


def stored_account(engines, account_id: str) -> dict[str, Any]:
    doc = pymongo.MongoClient(engines.mongodb_url)[DATABASE]["accounts"].find_one({"_id": account_id})
    assert doc is not None
    return doc


def figures(client: httpx.Client, user: str, account_id: str) -> tuple[str, str, str]:
    [account] = [a for a in accounts_of(client, user) if a["account_id"] == account_id]
    return account["bank_balance"], account["computed_balance"], account["balance_gap"]


def logged(importer: ServiceProcess, event: str, user: str) -> list[dict[str, Any]]:
    entries = []
    for line in importer.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            entry = json.loads(line)
            if entry.get("event") == event and entry.get("user_id") == user:
                entries.append(entry)
    return entries


async def test_the_gap_stays_zero_through_bookings_deletions_redeliveries_and_a_replay(importer, engines):
    user, acct = new_user("balance"), "8101"
    account_id = auto_account_id(account_key(user, acct))
    opening = Decimal("1000.00")
    past = history(acct, 60, first_id=810_000, seed=3, end=DAY)
    card = Txn(819_000, acct, DAY, Decimal("-23.90"), "PAIEMENT CB FNAC", "FNAC", coming=True)
    fuel = Txn(819_001, acct, DAY, Decimal("-61.00"), "PAIEMENT CB TOTAL", "TOTAL", coming=True)
    toll = Txn(819_002, acct, DAY, Decimal("-1.00"), "PAIEMENT CB PEAGE", "PEAGE", coming=True)
    bank1 = opening + total(past)

    async with RawProducer(engines.kafka_bootstrap) as producer:
        bank = Bank(producer, user, acct)
        await bank.sync("s1", [*past, card, fuel, toll], bank1, coming=Decimal("-85.90"), initial=True)
        found = await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "s1")))
        [first] = of_run(found, "s1")
        assert (first["bank_balance"], first["computed_balance"], first["balance_gap"]) == (
            str(bank1),
            str(bank1),
            "0.00",
        )
        assert (first["account_id"], first["aggregator_account_id"], first["currency"]) == (
            account_id,
            acct,
            "EUR",
        )
        doc = stored_account(engines, account_id)
        assert (
            doc["opening_cents"] == 100_000
        )  # the bank's balance minus the 60 booked lines, not the pending ones
        assert (doc["bank_balance"], doc["bank_coming"]) == (str(bank1), "-85.90")
        with api(importer.url, user) as client:
            assert figures(client, user, account_id) == (str(bank1), str(bank1), "0.00")

        # the card books in place, the fuel books under a new id (its pending line deleted), the toll is
        # cancelled, a new line books, and the bank withdraws a booked line of the past
        card_booked = Txn(
            819_000, acct, DAY + dt.timedelta(days=1), Decimal("-23.90"), "CARTE X4974 FNAC", "FNAC"
        )
        fuel_booked = Txn(
            819_003, acct, DAY + dt.timedelta(days=2), Decimal("-61.00"), "CARTE X4974 TOTAL", "TOTAL"
        )
        fuel_gone = Txn(819_001, acct, DAY, Decimal("-61.00"), "PAIEMENT CB TOTAL", "TOTAL", coming=True)
        toll_gone = Txn(819_002, acct, DAY, Decimal("-1.00"), "PAIEMENT CB PEAGE", "PEAGE", coming=True)
        new = Txn(819_004, acct, DAY + dt.timedelta(days=2), Decimal("-9.99"), "CARTE X4974 PICARD", "PICARD")
        withdrawn = past[5]
        withdrawn_gone = Txn(
            withdrawn.id, acct, withdrawn.date, withdrawn.value, withdrawn.wording, withdrawn.simplified
        )
        for txn in (card_booked, fuel_booked, new):
            txn.last_update = LATER
        for txn in (fuel_gone, toll_gone, withdrawn_gone):
            txn.deleted, txn.last_update = LATER, LATER
        bank2 = bank1 - Decimal("23.90") - Decimal("61.00") - Decimal("9.99") - withdrawn.value
        await bank.sync("s2", [fuel_booked, card_booked, fuel_gone, toll_gone, new, withdrawn_gone], bank2)
        found = await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "s2")))
        assert [
            (c["bank_balance"], c["computed_balance"], c["balance_gap"]) for c in of_run(found, "s2")
        ] == [(str(bank2), str(bank2), "0.00")]
        with api(importer.url, user) as client:
            assert figures(client, user, account_id) == (str(bank2), str(bank2), "0.00")
            ops = all_operations(client, user, account_id)
        assert len(ops) == 60 - 1 + 2 + 1  # one withdrawn; the card and the fuel, booked; the new line
        assert sum(Decimal(o["amount"]) for o in ops if o["status"] == "booked") == bank2 - opening

        # the same records again (a redelivery), then a sync that says when they have all been read
        await bank.redeliver("s1", "s2")
        last = Txn(819_005, acct, DAY + dt.timedelta(days=3), Decimal("120.00"), "VIR SEPA RECU ACME", "ACME")
        bank3 = bank2 + Decimal("120.00")
        await bank.sync("s3", [last], bank3)
        found = await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "s3")))
        # the older balance came again too late to be checked; the latest one again, with the same figures
        assert len(of_run(found, "s1")) == 1
        assert {c["id"] for c in of_run(found, "s2")} == {of_run(found, "s2")[0]["id"]}
        assert {c["balance_gap"] for c in found} == {"0.00"}
        assert stored_account(engines, account_id)["opening_cents"] == 100_000

    with api(importer.url, user) as client, api(importer.url, "ops-bot", scopes="ops") as ops_client:
        assert figures(client, user, account_id) == (str(bank3), str(bank3), "0.00")
        assert client.delete(f"/v1/users/{user}/accounts/{account_id}").status_code == 204
        assert account_for(client, user, acct) is None
        doc = stored_account(engines, account_id)
        assert not {"opening_cents", "balance_gap", "balance_rev"} & set(doc)
        started = ops_client.post("/v1/ops/replay", json={"user_id": user, "aggregator_account_id": acct})
        assert started.status_code == 202, started.text
        replay_id = started.json()["replay_id"]
        done = wait_for(
            lambda: (
                (view := ops_client.get(f"/v1/ops/replays/{replay_id}").json())["status"] != "running"
                and view
            ),
            90,
            what="the replay",
        )
        assert done["status"] == "succeeded", done
        # s1, s2 twice, s3: the lines and the balances of the topic, in one batch of the replay
        assert done["result"]["stats"]["balances"] == 5
        assert figures(client, user, account_id) == (str(bank3), str(bank3), "0.00")

    found = await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "s3", generation=2)))
    again = [c for c in found if c["generation"] == 2]
    assert [c["sync_run_id"] for c in again][:2] == ["s1", "s2"]  # checked in order, each after its lines
    assert {c["balance_gap"] for c in again} == {"0.00"}
    assert not {c["id"] for c in again} & {c["id"] for c in found if c["generation"] == 1}
    assert stored_account(engines, account_id)["opening_cents"] == 100_000  # fixed again at the first sync

    dead = await read_topic(
        engines.kafka_bootstrap, DLQ, match=lambda r: r.key is not None and r.key.decode().startswith(user)
    )
    assert dead == []


async def test_a_line_the_bank_counts_but_never_sent_is_an_exact_gap_and_an_alarm(importer, engines):
    user, acct = new_user("gap"), "8102"
    account_id = auto_account_id(account_key(user, acct))
    past = history(acct, 10, first_id=820_000, seed=8, end=DAY)
    bank1 = Decimal("500.00") + total(past)
    before = gap_accounts(importer)

    async with RawProducer(engines.kafka_bootstrap) as producer:
        bank = Bank(producer, user, acct)
        await bank.sync("g1", past, bank1, initial=True)
        await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "g1")))
        gauge_says(importer, before)

        # the bank books two lines; the second never reaches the importer
        sent = Txn(820_100, acct, DAY, Decimal("-12.00"), "CARTE X4974 BOULANGERIE", "BOULANGERIE")
        lost = Txn(820_101, acct, DAY, Decimal("-25.00"), "CARTE X4974 PHARMACIE", "PHARMACIE")
        bank2 = bank1 - Decimal("12.00") - Decimal("25.00")
        await bank.sync("g2", [sent], bank2)
        found = await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "g2")))
        [alarm] = of_run(found, "g2")
        assert (alarm["bank_balance"], alarm["computed_balance"], alarm["balance_gap"]) == (
            str(bank2),
            str(bank1 - Decimal("12.00")),
            "-25.00",
        )
        with api(importer.url, user) as client:
            assert figures(client, user, account_id) == (str(bank2), str(bank1 - Decimal("12.00")), "-25.00")
        gauge_says(importer, before + 1)
        warnings = logged(importer, "balance_gap", user)
        assert [(w["account_id"], w["bank"], w["bank_balance"], w["gap"]) for w in warnings] == [
            (account_id, "bnp", str(bank2), "-25.00")
        ]
        assert warnings[0]["level"] == "warning"

        # the missing line comes with the next sync: the gap closes
        await bank.sync("g3", [lost], bank2)
        found = await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "g3")))
        assert [(c["computed_balance"], c["balance_gap"]) for c in of_run(found, "g3")] == [
            (str(bank2), "0.00")
        ]
        gauge_says(importer, before)

        # another one is lost; then the user deletes the account: no account in alarm is left
        bank4 = bank2 - Decimal("7.50")
        await bank.sync("g4", [], bank4)
        found = await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "g4")))
        assert [c["balance_gap"] for c in of_run(found, "g4")] == ["-7.50"]
        gauge_says(importer, before + 1)
    with api(importer.url, user) as client:
        assert client.delete(f"/v1/users/{user}/accounts/{account_id}").status_code == 204
    gauge_says(importer, before)


async def test_a_manual_operation_backs_the_balance_once_its_bank_line_is_booked(importer, engines):
    user, acct = new_user("reconciled"), "8103"
    with api(importer.url, user) as client:
        target = client.post(f"/v1/users/{user}/accounts", json={"name": "Compte joint", "currency": "EUR"})
        target_id = target.json()["account_id"]
        assert client.get(f"/v1/users/{user}/accounts").json()[0]["balance_gap"] is None  # no bank yet
        for day, amount, label in ((DAY, "-42.50", "Courses"), (DAY, "-10.00", "Ciné")):
            made = client.post(
                f"/v1/users/{user}/accounts/{target_id}/operations",
                json={"date": day.isoformat(), "amount": amount, "currency": "EUR", "label": label},
            )
            assert made.status_code == 201, made.text
        link = client.put(
            f"/v1/users/{user}/links/{acct}",
            json={"target_account_id": target_id, "import_mode": "reconcile"},
        )
        assert link.status_code == 200, link.text

    pending = Txn(830_000, acct, DAY, Decimal("-42.50"), "PAIEMENT CB MONOPRIX", "MONOPRIX", coming=True)
    bill = Txn(830_001, acct, DAY, Decimal("-99.99"), "PRLV SEPA BOUYGUES", "BOUYGUES")
    bank1 = Decimal("300.00")  # booked lines only: the pending card payment is not in it
    async with RawProducer(engines.kafka_bootstrap) as producer:
        bank = Bank(producer, user, acct, "sg")
        await bank.sync("r1", [pending, bill], bank1, coming=Decimal("-42.50"), initial=True)
        found = await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "r1")))
        assert [(c["account_id"], c["balance_gap"]) for c in of_run(found, "r1")] == [(target_id, "0.00")]
        with api(importer.url, user) as client:
            ops = all_operations(client, user, target_id)
        assert sorted((o["source"], o["amount"], o["reconciled"]) for o in ops) == [
            ("bank", "-99.99", False),
            ("manual", "-10.00", False),
            ("manual", "-42.50", True),
        ]
        assert stored_account(engines, target_id)["opening_cents"] == 30_000 + 9_999

        booked = Txn(
            830_000, acct, DAY + dt.timedelta(days=1), Decimal("-42.50"), "CARTE X4974 MONOPRIX", "MONOPRIX"
        )
        booked.last_update = LATER
        await bank.sync("r2", [booked], bank1 - Decimal("42.50"))
        found = await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "r2")))
        assert [(c["computed_balance"], c["balance_gap"]) for c in of_run(found, "r2")] == [
            ("257.50", "0.00")
        ]
    with api(importer.url, user) as client:
        assert figures(client, user, target_id) == ("257.50", "257.50", "0.00")
        # the balance of a manual account stays the sum of its operations (bank lines and the user's own)
        [account] = accounts_of(client, user)
        assert account["balance"] == "-152.49"


async def test_a_deferred_card_keeps_the_banks_figures_without_a_check(importer, engines):
    """A deferred debit card's balance is what its next debit takes (its pending lines), not its booked
    lines: the account shows it as its balance, and no check is made of it."""
    user, acct = new_user("card"), "8104"
    account_id = auto_account_id(account_key(user, acct))
    purchases = [
        Txn(840_000, acct, DAY, Decimal("-18.70"), "CB BOULANGERIE DU MARCHE", "BOULANGERIE", coming=True),
        Txn(840_001, acct, DAY, Decimal("-90.62"), "CB FNAC", "FNAC"),
    ]
    async with RawProducer(engines.kafka_bootstrap) as producer:
        for run, balance in (("c1", "-18.70"), ("c2", "-109.32")):
            await producer.send(user, "bnp", purchases, sync_run=run)
            card = synced_event(
                user, "bnp", acct, sync_run=run, balance=balance, coming=balance, account_type="card"
            )
            await producer.send_event(account_key(user, acct), card)
        # then a checking account of the same user, to know when the card's records have been read
        await Bank(producer, user, "8105").sync("k1", [], Decimal("10.00"))
    await checks(engines.kafka_bootstrap, user, lambda f: bool(of_run(f, "k1")))
    with api(importer.url, user) as client:
        [shown] = [a for a in accounts_of(client, user) if a["account_id"] == account_id]
    assert (shown["balance"], shown["bank_balance"], shown["computed_balance"], shown["balance_gap"]) == (
        "-109.32",
        None,
        None,
        None,
    )
    doc = stored_account(engines, account_id)
    assert (doc["bank_coming"], doc["balance_alarm"], doc["balance_sync_run_id"]) == ("-109.32", False, "c2")
    found = await checks(engines.kafka_bootstrap, user, lambda f: True)
    assert [c["aggregator_account_id"] for c in found] == ["8105"]
