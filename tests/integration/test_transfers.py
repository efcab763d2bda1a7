"""Transfers between a user's own accounts, on the real stack (Kafka + FerretDB, importer and categorizer
as their own processes): bank lines in on the raw topic, what the app shows read from the importer's API.

Two operations of one user in two accounts, with opposite amounts in one currency, dates at most three
days apart and transfer wordings, are linked to each other (`transfer`: the other leg) and categorised
`epargne` unless the user chose; whichever leg comes first, whatever is delivered twice or replayed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from harness.devstack import ServiceProcess, private_consumer_groups, running_service, user_client
from harness.paging import every_item, operations_path
from harness.waiting import wait_for
from shared.contract.envelope import CloudEvent, account_key
from shared.contract.payloads import Operation, OperationEvent
from shared.contract.topics import OPERATIONS
from shared.kafka import cloudevent_headers
from tests.importer_support import RawProducer, Txn, account_for

pytestmark = pytest.mark.engines

DAY = dt.date(2026, 3, 2)
CHECKING, SAVINGS = "8101", "8102"


@pytest.fixture(scope="module")
def stack(engines, log_dir) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    prefix = f"transfers_{uuid.uuid4().hex[:6]}"
    groups = private_consumer_groups(engines, prefix)
    importer_groups = {k: v for k, v in groups.items() if k.startswith("IMPORTER_")}
    with (
        running_service(
            "services.importer", engines, log_dir, MONGODB_DATABASE=f"{prefix}_imp", **importer_groups
        ) as importer,
        running_service(
            "services.categorizer",
            engines,
            log_dir,
            MONGODB_DATABASE=f"{prefix}_cat",
            CATEGORIZER_GROUP_ID=groups["CATEGORIZER_GROUP_ID"],
        ) as categorizer,
    ):
        yield importer, categorizer


def line(txid: int, account: str, day: int, value: str, wording: str) -> Txn:
    return Txn(txid, account, DAY + dt.timedelta(days=day), Decimal(value), wording, wording.title()[:40])


# name → the bank line; the checking account is CHECKING, the savings account SAVINGS
LINES: dict[str, Txn] = {
    # a transfer, one day apart
    "c1": line(1, CHECKING, 0, "-200.00", "VIR SEPA EMIS VERS LIVRET A M DUPONT"),
    "s1": line(2, SAVINGS, 1, "200.00", "VIR SEPA RECU /DE M JEAN DUPONT /MOTIF EPARGNE"),
    # three days apart: still one
    "c2": line(3, CHECKING, 10, "-75.00", "VIR INST EMIS VERS LIVRET A"),
    "s2": line(4, SAVINGS, 13, "75.00", "VIREMENT EN VOTRE FAVEUR M DUPONT"),
    # four days apart: not one
    "c3": line(5, CHECKING, 20, "-60.00", "VIR SEPA EMIS VERS M DUPONT"),
    "s3": line(6, SAVINGS, 24, "60.00", "VIR SEPA RECU /DE M DUPONT"),
    # one side is a card payment: not a transfer
    "c4": line(7, CHECKING, 30, "-42.00", "CB CARREFOUR MARKET 30/03"),
    "s4": line(8, SAVINGS, 30, "42.00", "VIR SEPA RECU /DE M DUPONT"),
    # both in one account: not between two accounts
    "c5": line(9, CHECKING, 40, "-33.00", "VIR SEPA EMIS VERS M DUPONT"),
    "c6": line(10, CHECKING, 40, "33.00", "VIR SEPA RECU /DE M DUPONT"),
    # amounts not opposite
    "c7": line(11, CHECKING, 50, "-50.00", "VIR SEPA EMIS VERS M DUPONT"),
    "s7": line(12, SAVINGS, 50, "-50.00", "VIR SEPA EMIS VERS M DUPONT"),
    "s8": line(13, SAVINGS, 50, "51.00", "VIR SEPA RECU /DE M DUPONT"),
    # the savings leg comes days later (a second sync)
    "c9": line(14, CHECKING, 60, "-120.00", "VIR PERMANENT LIVRET A"),
    "s9": line(15, SAVINGS, 62, "120.00", "VIR RECU /DE M DUPONT"),
    # and the other way round: the checking leg comes later
    "c10": line(16, CHECKING, 70, "-310.00", "VIREMENT EMIS VERS LIVRET A"),
    "s10": line(17, SAVINGS, 69, "310.00", "VIREMENT RECU DE M DUPONT"),
}
LATER = ("s9", "c10")
LINKED = {"c1": "s1", "c2": "s2"}


class Shown:
    """The user's operations as the importer shows them, by the name of their bank line."""

    def __init__(self, client: httpx.Client, user: str) -> None:
        self.client, self.user = client, user

    def accounts(self) -> dict[str, str]:
        found = {}
        for aggregator_account in (CHECKING, SAVINGS):
            account = account_for(self.client, self.user, aggregator_account)
            if account is not None:
                found[aggregator_account] = account["account_id"]
        return found

    def operations(self) -> dict[str, dict[str, Any]]:
        by_txid = {
            op["aggregator_transaction_id"]: op
            for account_id in self.accounts().values()
            for op in every_item(self.client, operations_path(self.user, account_id))
        }
        return {name: by_txid[str(txn.id)] for name, txn in LINES.items() if str(txn.id) in by_txid}

    def wait(self, condition: Any, what: str, timeout: float = 60) -> dict[str, dict[str, Any]]:
        def ready() -> dict[str, dict[str, Any]] | None:
            ops = self.operations()
            return ops if condition(ops) else None

        found: dict[str, dict[str, Any]] = wait_for(ready, timeout, what=what, every=0.5)
        return found


def linked(ops: dict[str, dict[str, Any]], a: str, b: str) -> bool:
    if a not in ops or b not in ops:
        return False
    ta, tb = ops[a].get("transfer"), ops[b].get("transfer")
    return ta == {"operation_id": ops[b]["id"], "account_id": ops[b]["account_id"]} and tb == {
        "operation_id": ops[a]["id"],
        "account_id": ops[a]["account_id"],
    }


def unlinked(ops: dict[str, dict[str, Any]], *names: str) -> bool:
    return all(name in ops and ops[name].get("transfer") is None for name in names)


def assert_one_to_one(ops: dict[str, dict[str, Any]]) -> None:
    by_id = {op["id"]: op for op in ops.values()}
    for op in ops.values():
        other = op.get("transfer")
        if other is not None:
            assert by_id[other["operation_id"]]["transfer"]["operation_id"] == op["id"]
            assert other["account_id"] != op["account_id"]


async def publish_again(bootstrap: str, user: str, operations: list[dict[str, Any]]) -> None:
    """`operation.imported` of operations the categorizer already saw: a redelivery."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for shown in operations:
            op = Operation.model_validate({k: v for k, v in shown.items() if k != "transfer"})
            event = CloudEvent.new(
                service="importer",
                name="operation.imported",
                data=OperationEvent(user_id=user, operation=op).model_dump(mode="json"),
                user_id=user,
                correlation_id="redelivery",
                subject=op.id,
            )
            await producer.send_and_wait(
                OPERATIONS,
                event.to_json_bytes(),
                key=account_key(user, op.account_id).encode(),
                headers=[(k, v.encode()) for k, v in cloudevent_headers(event).items()],
            )
    finally:
        await producer.stop()


def wait_replay(ops_client: httpx.Client, user: str, aggregator_account: str) -> None:
    started = ops_client.post(
        "/v1/ops/replay", json={"user_id": user, "aggregator_account_id": aggregator_account}
    )
    assert started.status_code == 202, started.text
    replay_id = started.json()["replay_id"]
    done = wait_for(
        lambda: (
            (view := ops_client.get(f"/v1/ops/replays/{replay_id}").json())["status"] != "running" and view
        ),
        60,
        what="the replay",
    )
    assert done["status"] == "succeeded", done


async def test_transfers_between_own_accounts(stack, engines):
    importer, categorizer = stack
    user = f"transfers-{uuid.uuid4().hex[:8]}"
    first = [txn for name, txn in LINES.items() if name not in LATER]
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "bnp", first, sync_run="run-1")
    with (
        user_client(importer.url, user) as client,
        user_client(categorizer.url, user) as cat,
        user_client(importer.url, "ops", scopes="ops") as ops_client,
    ):
        shown = Shown(client, user)
        ops = shown.wait(
            lambda o: all(linked(o, a, b) for a, b in LINKED.items()), "the two transfers linked"
        )
        await asyncio.sleep(2.0)  # anything else the categorizer would do
        ops = shown.operations()
        assert len(ops) == len(first)
        for a, b in LINKED.items():
            for name in (a, b):
                assert ops[name]["category"] == "epargne"
                assert ops[name]["payee"] is None
                assert ops[name]["categorized_by"] == {"source": "global", "payee_id": None, "keyword": None}
        # four days apart, a card payment, one account, amounts not opposite, the other leg not here yet
        assert unlinked(ops, "c3", "s3", "c4", "s4", "c5", "c6", "c7", "s7", "s8", "c9", "s10")
        assert_one_to_one(ops)

        # the other legs of c9 and s10 come with the next sync, days later: both pairs are linked
        async with RawProducer(engines.kafka_bootstrap) as producer:
            await producer.send(user, "bnp", [LINES[name] for name in LATER], sync_run="run-2")
        ops = shown.wait(lambda o: linked(o, "c9", "s9") and linked(o, "c10", "s10"), "the later legs linked")
        assert {ops[n]["category"] for n in ("c9", "s9", "c10", "s10")} == {"epargne"}

        # the user's category on one leg stays, with the link; the other leg stays `epargne`
        chosen = cat.post(
            f"/v1/users/{user}/operations/{ops['c1']['id']}/payee", json={"category": "loisirs"}
        )
        assert chosen.status_code == 200, chosen.text
        assert chosen.json()["transfer"] == ops["c1"]["transfer"]
        ops = shown.wait(lambda o: o["c1"]["category"] == "loisirs", "the user's category on a leg")
        assert ops["c1"]["categorized_by"] == {"source": "manual", "payee_id": None, "keyword": None}
        assert ops["c1"]["payee"] is None
        assert linked(ops, "c1", "s1")
        assert ops["s1"]["category"] == "epargne"

        # a payee that recognises the legs' wording: the legs stay `epargne`, the user's choice stays
        payee = cat.post(
            f"/v1/users/{user}/payees",
            json={"name": "Livret A", "category": "banque", "keywords": ["LIVRET A", "M DUPONT"]},
        )
        assert payee.status_code == 201, payee.text
        wait_for(
            lambda: not cat.get(f"/v1/users/{user}/rules/status").json()["reexamination_pending"],
            60,
            what="the re-examination",
        )
        ops = shown.wait(
            lambda o: o["c3"]["category"] == "banque", "the payee on an operation that is no transfer"
        )
        await asyncio.sleep(1.5)
        ops = shown.operations()
        assert [ops[n]["category"] for n in ("c1", "s1", "c2", "s2", "c9", "s9")] == [
            "loisirs",
            "epargne",
            "epargne",
            "epargne",
            "epargne",
            "epargne",
        ]

        # forgetting the choice: the leg is `epargne` again, still linked
        cleared = cat.post(f"/v1/users/{user}/operations/{ops['c1']['id']}/payee", json={"clear": True})
        assert cleared.status_code == 200, cleared.text
        assert (cleared.json()["category"], cleared.json()["source"]) == ("epargne", "global")
        ops = shown.wait(lambda o: o["c1"]["category"] == "epargne", "the leg after clear")
        assert ops["c1"]["categorized_by"]["source"] == "global"
        assert linked(ops, "c1", "s1")

        # the same operations delivered again: the same links, never a second one
        before = {name: op["transfer"] for name, op in ops.items()}
        await publish_again(
            engines.kafka_bootstrap, user, [ops[n] for n in ("c1", "s1", "c2", "s2", "c3", "s9")]
        )
        await asyncio.sleep(3.0)
        ops = shown.operations()
        assert {name: op["transfer"] for name, op in ops.items()} == before
        assert_one_to_one(ops)

        # the savings account deleted: its legs' others lose their link and get the rules' result
        accounts = shown.accounts()
        deleted = client.delete(f"/v1/users/{user}/accounts/{accounts[SAVINGS]}")
        assert deleted.status_code == 204, deleted.text
        ops = shown.wait(
            lambda o: unlinked(o, "c1", "c2", "c9", "c10"), "the links to a deleted account gone"
        )
        assert [ops[n]["category"] for n in ("c1", "c2", "c9", "c10")] == ["banque"] * 4
        assert {ops[n]["categorized_by"]["source"] for n in ("c1", "c2", "c9", "c10")} == {"user"}

        # replayed from the raw topic: the account comes back, and its transfers with it
        wait_replay(ops_client, user, SAVINGS)
        ops = shown.wait(
            lambda o: all(linked(o, a, b) for a, b in {**LINKED, "c9": "s9", "c10": "s10"}.items()),
            "the links after replay",
        )
        await asyncio.sleep(1.5)
        ops = shown.operations()
        assert unlinked(ops, "c3", "s3", "c4", "s4", "c5", "c6", "c7", "s7", "s8")
        assert_one_to_one(ops)
        assert ops["s1"]["category"] == "epargne"
