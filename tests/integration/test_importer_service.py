"""The importer on the real stack (Kafka 4.2 + FerretDB): raw bank events in, operations out.

Each test is its own user; the importer runs as its own process, as `make up` runs it, with a
database and consumer groups of its own.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import httpx
import pymongo
import pytest

from harness.devstack import new_user
from harness.waiting import wait_for
from services.importer.domain.identities import auto_account_id, operation_id
from services.importer.replay import partition_for
from shared.contract.envelope import CloudEvent, account_key, event_type
from shared.contract.topics import CATEGORIZATIONS, CONNECTIONS, DLQ, OPERATIONS, TRANSACTIONS_RAW
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
)
from tests.kafka_helpers import dlq_origin, opened

pytestmark = pytest.mark.engines

DATABASE = "importer_it_service"
DAY = dt.date(2026, 10, 5)
LATER = dt.datetime(2026, 10, 9, 8, tzinfo=dt.UTC)


def of_user(user: str) -> Any:
    return lambda record: record.key is not None and record.key.decode().startswith(f"{user}:")


async def operation_events(bootstrap: str, user: str, expected: int) -> list[CloudEvent]:
    records = await read_topic(bootstrap, OPERATIONS, match=of_user(user), expected=expected)
    return [opened(r.value) for r in records]


def wait_operations(
    client: httpx.Client, user: str, aggregator_account: str, count: int, timeout: float = 60
):
    def ready() -> list[dict[str, Any]] | None:
        account = account_for(client, user, aggregator_account)
        if account is None:
            return None
        ops = all_operations(client, user, account["account_id"])
        return ops if len(ops) >= count else None

    ops = wait_for(ready, timeout, every=0.5, what=f"{count} operations of {user}")
    return ops


async def test_first_sync_imports_exactly_the_bank_lines(importer, engines):
    user, aggregator_account = new_user("first"), "7001"
    txns = history(aggregator_account, 1500, first_id=900_000, seed=11)
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "bnp", txns, sync_run="run-first")

    with api(importer.url, user) as client:
        ops = wait_operations(client, user, aggregator_account, 1500)
        account = account_for(client, user, aggregator_account)
        assert account is not None
        assert account["account_id"] == auto_account_id(account_key(user, aggregator_account))
        assert account["bank_id"] == "bnp"
        assert client.get(f"/v1/users/{user}/banks").json() == [{"id": "bnp", "name": "Banque bnp"}]

        assert len(ops) == 1500
        by_txid = {op["aggregator_transaction_id"]: op for op in ops}
        assert len(by_txid) == 1500
        for txn in txns:
            op = by_txid[str(txn.id)]
            assert op["amount"] == str(txn.value.quantize(Decimal("0.01")))
            assert op["date"] == txn.date.isoformat()
            assert (op["memo"], op["label"]) == (txn.wording, txn.simplified)
            assert (op["status"], op["source"], op["reconciled"]) == ("booked", "bank", False)
            assert op["currency"] == "EUR"
        assert ops == sorted(ops, key=lambda o: (o["date"], o["id"]), reverse=True)
        expected_balance = sum((t.value for t in txns), Decimal("0"))
        assert Decimal(account["balance"]) == expected_balance

        # small pages walk the same operations, once each; dates filter both ends
        small = all_operations(client, user, account["account_id"], page=200)
        assert [o["id"] for o in small] == [o["id"] for o in ops]
        window = client.get(
            f"/v1/users/{user}/accounts/{account['account_id']}/operations",
            params={"from": "2026-01-01", "to": "2026-01-31", "limit": 500},
        ).json()
        assert window["items"]
        assert all("2026-01-01" <= o["date"] <= "2026-01-31" for o in window["items"])
        assert len(window["items"]) == sum(1 for t in txns if t.date.isoformat().startswith("2026-01"))

    events = await operation_events(engines.kafka_bootstrap, user, expected=1501)
    imported = [e for e in events if e.type == event_type("operation.imported")]
    assert len(imported) == 1500
    assert len({e.id for e in imported}) == 1500
    assert {e.data["operation"]["id"] for e in imported} == {o["id"] for o in ops}
    assert all(e.correlationid == "run-first" for e in imported)
    assert all(e.data["operation"]["memo"] and e.data["operation"]["label"] for e in imported)
    created = [e for e in events if e.type == event_type("account.created")]
    assert [e.data["account"]["account_id"] for e in created] == [account["account_id"]]


async def test_pending_lines_book_once_and_twins_stay_two(importer, engines):
    user, acct = new_user("pending"), "7002"
    first_update = dt.datetime(2026, 10, 5, 20, tzinfo=dt.UTC)
    in_place = Txn(100, acct, DAY, Decimal("-23.90"), "PAIEMENT CB FNAC", "FNAC", coming=True)
    new_id = Txn(101, acct, DAY, Decimal("-61.00"), "PAIEMENT CB TOTAL", "TOTAL", coming=True)
    cancelled = Txn(102, acct, DAY, Decimal("-1.00"), "PAIEMENT CB PEAGE", "PEAGE", coming=True)
    twins = [
        Txn(103, acct, DAY, Decimal("-4.20"), "CARTE X4974 05/10 BOULANGERIE PAUL", "BOULANGERIE PAUL"),
        Txn(104, acct, DAY, Decimal("-4.20"), "CARTE X4974 05/10 BOULANGERIE PAUL", "BOULANGERIE PAUL"),
    ]
    for txn in (in_place, new_id, cancelled, *twins):
        txn.last_update = first_update
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "lcl", [in_place, new_id, cancelled, *twins], sync_run="run-1")
        with api(importer.url, user) as client:
            first = wait_operations(client, user, acct, 5)
        assert sorted(o["status"] for o in first) == ["booked", "booked", "pending", "pending", "pending"]
        pending_op = {o["aggregator_transaction_id"]: o["id"] for o in first}

        booked_in_place = Txn(
            100, acct, DAY + dt.timedelta(days=1), Decimal("-23.90"), "CARTE X4974 05/10 FNAC", "FNAC",
            last_update=LATER,
        )  # fmt: skip
        booked_new_id = Txn(
            105, acct, DAY + dt.timedelta(days=2), Decimal("-61.00"), "CARTE X4974 05/10 TOTAL ENERGIES",
            "TOTAL ENERGIES", last_update=LATER,
        )  # fmt: skip
        old_deleted = Txn(101, acct, DAY, Decimal("-61.00"), "PAIEMENT CB TOTAL", "TOTAL", coming=True)
        old_deleted.deleted, old_deleted.last_update = LATER, LATER
        gone = Txn(102, acct, DAY, Decimal("-1.00"), "PAIEMENT CB PEAGE", "PEAGE", coming=True)
        gone.deleted, gone.last_update = LATER, LATER
        # the booking with a new id comes before the old line's deletion, as in one Powens listing
        await producer.send(
            user, "lcl", [booked_new_id, booked_in_place, old_deleted, gone], sync_run="run-2"
        )
        # and then the first sync again, older versions included: nothing may regress or double
        await producer.send(user, "lcl", [in_place, new_id, cancelled, *twins], sync_run="run-1")
        sentinel = Txn(106, acct, DAY, Decimal("-9.99"), "CARTE X4974 05/10 PICARD", "PICARD")
        await producer.send(user, "lcl", [sentinel], sync_run="run-3")

    # Events are announced after their batch's writes: once the sentinel's is out, the listing is final.
    # (The sentinel itself may show earlier: a batch that also holds the other runs inserts new
    # operations before it updates the known ones.)
    events = await operation_events(engines.kafka_bootstrap, user, expected=10)
    assert any(e.data.get("operation", {}).get("aggregator_transaction_id") == "106" for e in events)
    with api(importer.url, user) as client:
        account = account_for(client, user, acct)
        assert account is not None
        final = all_operations(client, user, account["account_id"])
    by_txid = {o["aggregator_transaction_id"]: o for o in final}
    assert sorted(by_txid) == ["100", "103", "104", "105", "106"]
    assert all(o["status"] == "booked" for o in final)
    assert by_txid["100"]["id"] == pending_op["100"]
    assert (by_txid["100"]["date"], by_txid["100"]["memo"]) == ("2026-10-06", "CARTE X4974 05/10 FNAC")
    # the booking under a new id kept the pending line's operation: one operation, never two
    assert by_txid["105"]["id"] == pending_op["101"]
    assert by_txid["105"]["label"] == "TOTAL ENERGIES"
    assert by_txid["103"]["id"] != by_txid["104"]["id"]

    kinds = [
        (e.type.split(".")[-2], e.data["operation"]["aggregator_transaction_id"])
        for e in events
        if "operation" in e.data
    ]
    assert ("deleted", "102") in kinds
    assert kinds.count(("imported", "101")) == 1
    assert ("updated", "105") in kinds
    assert not any(kind == "imported" and txid == "105" for kind, txid in kinds)


async def test_reconcile_mode_marks_manual_operations(importer, engines):
    user, acct = new_user("reconcile"), "7003"
    with api(importer.url, user) as client:
        created = client.post(f"/v1/users/{user}/accounts", json={"name": "Compte joint", "currency": "EUR"})
        assert created.status_code == 201
        target = created.json()["account_id"]
        assert created.json()["aggregator_account_id"] is None

        def manual(day: dt.date, amount: str, label: str) -> dict[str, Any]:
            answer = client.post(
                f"/v1/users/{user}/accounts/{target}/operations",
                json={"date": day.isoformat(), "amount": amount, "currency": "EUR", "label": label},
            )
            assert answer.status_code == 201, answer.text
            return answer.json()

        m1 = manual(DAY, "-42.50", "Courses")
        m2 = manual(DAY + dt.timedelta(days=3), "-42.50", "Courses bis")
        m3 = manual(DAY, "-10.00", "Ciné")
        assert (m1["source"], m1["reconciled"], m1["status"]) == ("manual", False, "booked")

        retried = client.post(
            f"/v1/users/{user}/accounts/{target}/operations",
            json={"date": DAY.isoformat(), "amount": "-5.00", "currency": "EUR", "label": "Café"},
            headers={"Idempotency-Key": "cafe-1"},
        )
        again = client.post(
            f"/v1/users/{user}/accounts/{target}/operations",
            json={"date": DAY.isoformat(), "amount": "-5.00", "currency": "EUR", "label": "Café"},
            headers={"Idempotency-Key": "cafe-1"},
        )
        assert (retried.status_code, again.status_code) == (201, 200)
        assert retried.json()["id"] == again.json()["id"]

        link = client.put(
            f"/v1/users/{user}/links/{acct}", json={"target_account_id": target, "import_mode": "reconcile"}
        )
        assert link.status_code == 200, link.text
        assert link.json()["import_mode"] == "reconcile"

    bank = [
        Txn(
            300, acct, DAY + dt.timedelta(days=1), Decimal("-42.50"), "CARTE X4974 05/10 MONOPRIX", "MONOPRIX"
        ),
        Txn(301, acct, DAY, Decimal("-99.99"), "PRLV SEPA BOUYGUES", "BOUYGUES"),
        Txn(302, acct, DAY + dt.timedelta(days=10), Decimal("-10.00"), "CARTE X4974 15/10 UGC", "UGC"),
    ]
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "sg", bank, sync_run="run-rec")

    with api(importer.url, user) as client:
        ops = wait_for(
            lambda: (
                (found := all_operations(client, user, target))
                and len(found) >= 6
                and any(o["reconciled"] for o in found)
                and found
            ),
            30,
            what="reconciled operations",
        )
        assert len(ops) == 6  # 4 manual (one of them reconciled) + 2 bank lines that matched nothing
        by_id = {o["id"]: o for o in ops}
        assert by_id[m1["id"]]["reconciled"] is True
        assert by_id[m1["id"]]["aggregator_transaction_id"] == "300"
        assert by_id[m1["id"]]["label"] == "Courses"
        assert by_id[m2["id"]]["reconciled"] is False
        assert by_id[m3["id"]]["reconciled"] is False
        bank_ops = sorted(o["aggregator_transaction_id"] for o in ops if o["source"] == "bank")
        assert bank_ops == ["301", "302"]
        assert account_for(client, user, acct) is None  # no account created: the target was chosen
        assert [a["account_id"] for a in accounts_of(client, user)] == [target]

    events = await operation_events(engines.kafka_bootstrap, user, expected=8)
    reconciled = [e for e in events if e.type == event_type("operation.reconciled")]
    assert [e.data["operation"]["id"] for e in reconciled] == [m1["id"]]
    assert reconciled[0].correlationid == "run-rec"


async def test_bad_records_go_to_the_dlq_and_the_partition_moves_on(importer, engines):
    user, acct = new_user("dlq"), "7004"
    key = account_key(user, acct)
    good = Txn(400, acct, DAY, Decimal("-12.00"), "CARTE X4974 05/10 DECATHLON", "DECATHLON")

    def variant(**changes: Any) -> bytes:
        event = raw_event(user, "bnp", good)
        data = json.loads(json.dumps(event.data))
        for path, value in changes.items():
            holder = data
            *parents, leaf = path.split("__")
            for parent in parents:
                holder = holder[parent]
            holder[leaf] = value
        return CloudEvent.new(
            service="connector",
            name="transaction.observed",
            data=data,
            user_id=user,
            correlation_id="run-dlq",
        ).to_json_bytes()

    # a link to an account that does not exist (written as an older version of the service could have)
    pymongo.MongoClient(engines.mongodb_url)[DATABASE]["links"].insert_one(
        {
            "_id": account_key(user, "7099"),
            "user_id": user,
            "aggregator_account_id": "7099",
            "target_account_id": "no-such-account",
            "import_mode": "reconcile",
        }
    )
    orphan = Txn(401, "7099", DAY, Decimal("-3.00"), "CARTE X4974 05/10 RELAY", "RELAY")
    poisons = {
        "bad json": (key, b"{not json"),
        "wrong schema": (key, variant(transaction={"id": 1})),
        "absurd amount": (key, variant(transaction__value=1e12)),
        "absurd date": (key, variant(transaction__date="1900-01-01")),
        "far future": (key, variant(transaction__date="2031-01-01")),
        "key of another account": (account_key(user, "7005"), variant()),
        "unknown account": (account_key(user, "7099"), raw_event(user, "bnp", orphan).to_json_bytes()),
    }
    produced: dict[str, tuple[int, int]] = {}
    async with RawProducer(engines.kafka_bootstrap) as producer:
        for name, (record_key, value) in poisons.items():
            produced[name] = await producer.send_raw(record_key, value)
        await producer.send(user, "bnp", [good], sync_run="run-dlq")
        partition, _ = await producer.send_raw(key, variant(transaction__id=402))
    assert partition == partition_for(key, list(range(6)))  # the replay's partitioner is the producers'

    with api(importer.url, user) as client:
        ops = wait_operations(client, user, acct, 2, timeout=45)
    assert sorted(o["aggregator_transaction_id"] for o in ops) == ["400", "402"]

    wanted = {(TRANSACTIONS_RAW, p, o) for p, o in produced.values()}

    dead = await read_topic(
        engines.kafka_bootstrap,
        DLQ,
        match=lambda r: dlq_origin(r) in wanted,
        expected=len(wanted),
        within_s=45,
    )
    assert {dlq_origin(r) for r in dead} == wanted
    errors = {dlq_origin(r): dict((k, v.decode()) for k, v in r.headers)["dlq.error"] for r in dead}
    assert "unknown account" in errors[(TRANSACTIONS_RAW, *produced["unknown account"])]
    assert "key" in errors[(TRANSACTIONS_RAW, *produced["key of another account"])]
    assert all(dict((k, v.decode()) for k, v in r.headers)["dlq.service"] == "importer" for r in dead)


async def test_delete_account_then_replay_brings_everything_back(importer, engines):
    user, acct = new_user("replay"), "7006"
    txns = history(acct, 300, first_id=700_000, seed=5)
    pending = Txn(799_000, acct, DAY, Decimal("-18.00"), "PAIEMENT CB UBER", "UBER", coming=True)
    booked = Txn(
        799_001, acct, DAY, Decimal("-18.00"), "CARTE X4974 05/10 UBER EATS", "UBER EATS", last_update=LATER
    )
    pending_gone = Txn(799_000, acct, DAY, Decimal("-18.00"), "PAIEMENT CB UBER", "UBER", coming=True)
    pending_gone.deleted, pending_gone.last_update = LATER, LATER
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "bnp", [*txns, pending], sync_run="run-a")
        await producer.send(user, "bnp", [booked, pending_gone], sync_run="run-b")

    with api(importer.url, user) as client, api(importer.url, "ops-bot", scopes="ops") as ops_client:
        first = wait_operations(client, user, acct, 301)
        account_id = first[0]["account_id"]
        before = wait_for(
            lambda: (
                (found := all_operations(client, user, account_id))
                and any(o["aggregator_transaction_id"] == "799001" for o in found)
                and found
            ),
            30,
            what="the booking",
        )
        assert len(before) == 301
        link = client.put(f"/v1/users/{user}/links/{acct}", json={"target_account_id": account_id})
        assert link.status_code == 200

        assert client.delete(f"/v1/users/{user}/accounts/{account_id}").status_code == 204
        assert account_for(client, user, acct) is None
        gone = client.get(f"/v1/users/{user}/accounts/{account_id}/operations")
        assert (gone.status_code, gone.json()["code"]) == (404, "unknown_account")
        assert client.delete(f"/v1/users/{user}/accounts/{account_id}").status_code == 204  # idempotent
        assert client.get(f"/v1/users/{user}/links").json()[0]["target_account_id"] == account_id

        assert (
            client.post("/v1/ops/replay", json={"user_id": user, "aggregator_account_id": acct}).status_code
            == 403
        )
        started = ops_client.post("/v1/ops/replay", json={"user_id": user, "aggregator_account_id": acct})
        assert started.status_code == 202, started.text
        replay_id = started.json()["replay_id"]
        done = wait_for(
            lambda: (
                (view := ops_client.get(f"/v1/ops/replays/{replay_id}").json())["status"] != "running"
                and view
            ),
            60,
            what="the replay",
        )
        assert done["status"] == "succeeded", done
        assert done["result"]["records_matched"] == 303
        assert done["result"]["stats"]["imported"] == 301

        after = all_operations(client, user, account_id)
        assert sorted((o["id"], o["aggregator_transaction_id"], o["status"]) for o in after) == sorted(
            (o["id"], o["aggregator_transaction_id"], o["status"]) for o in before
        )
        assert account_for(client, user, acct)["account_id"] == account_id  # type: ignore[index]

        # a replay of what is known changes nothing; a replay from a date reads only from there
        again = ops_client.post("/v1/ops/replay", json={"user_id": user, "aggregator_account_id": acct})
        view = wait_for(
            lambda: (
                (v := ops_client.get(f"/v1/ops/replays/{again.json()['replay_id']}").json())["status"]
                != "running"
                and v
            ),
            60,
        )
        assert view["result"]["stats"]["imported"] == 0
        assert view["result"]["stats"]["unchanged"] == 303
        later = ops_client.post(
            "/v1/ops/replay", json={"user_id": user, "aggregator_account_id": acct, "since": "2100-01-01"}
        )
        view = wait_for(
            lambda: (
                (v := ops_client.get(f"/v1/ops/replays/{later.json()['replay_id']}").json())["status"]
                != "running"
                and v
            ),
            60,
        )
        assert view["result"]["records_matched"] == 0

    events = await operation_events(engines.kafka_bootstrap, user, expected=2 * 301 + 4)
    assert [e.data["generation"] for e in events if e.type == event_type("account.created")] == [1, 2]
    deleted = {e.id: e.data["generation"] for e in events if e.type == event_type("account.deleted")}
    assert list(deleted.values()) == [1]  # the second DELETE restated the same fact, with the same id
    imported = [e for e in events if e.type == event_type("operation.imported")]
    assert len(imported) == 2 * 301  # once per life of the account, with distinct event ids
    assert len({e.id for e in imported}) == 2 * 301


async def test_categorizations_are_stored_and_the_users_choice_wins(importer, engines):
    user, acct = new_user("categ"), "7007"
    lines = [
        Txn(500, acct, DAY, Decimal("-30.00"), "PAIEMENT CB CARREFOUR", "CARREFOUR", coming=True),
        Txn(501, acct, DAY, Decimal("-52.10"), "PRLV SEPA EDF CLIENTS", "EDF CLIENTS"),
    ]
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "bnp", lines, sync_run="run-c")
        with api(importer.url, user) as client:
            ops = wait_operations(client, user, acct, 2)
        account_id = ops[0]["account_id"]
        op_a = operation_id(account_key(user, acct), "500")
        op_b = operation_id(account_key(user, acct), "501")
        assert {o["id"] for o in ops} == {op_a, op_b}

        def categorized(op: str, source: str | None, category: str | None, version: int) -> bytes:
            payee = {"id": f"payee-{category}", "name": str(category).title()} if category else None
            return CloudEvent.new(
                service="categorizer",
                name="operation.categorized",
                data={
                    "user_id": user,
                    "account_id": account_id,
                    "operation_id": op,
                    "payee": payee,
                    "category": category,
                    "source": source,
                    "keyword": "carrefour" if source != "manual" else None,
                    "rules_version": version,
                },
                user_id=user,
                correlation_id="cat",
            ).to_json_bytes()

        key = account_key(user, account_id)
        for value in (
            categorized(op_a, "global", "alimentation", 1),
            categorized(op_a, "manual", "loisirs", 1),
            categorized(op_a, "user", "shopping", 2),  # a rule result never replaces the user's choice
            categorized(op_b, "user", "energie/electricite", 2),
            categorized(op_b, "global", "divers", 1),  # an older rule set's result comes late
        ):
            await producer.send_raw(key, value, topic=CATEGORIZATIONS)

        def stored() -> dict[str, Any] | None:
            with api(importer.url, user) as client:
                found = {o["id"]: o for o in all_operations(client, user, account_id)}
            ready = found[op_a]["category"] == "loisirs" and found[op_b]["category"] == "energie/electricite"
            return found if ready else None

        found = wait_for(stored, 30, what="categorizations")
        assert found[op_a]["categorized_by"] == {
            "source": "manual",
            "payee_id": "payee-loisirs",
            "keyword": None,
        }
        assert found[op_a]["payee"] == {"id": "payee-loisirs", "name": "Loisirs"}
        assert found[op_b]["categorized_by"]["source"] == "user"

        # the pending line books in place: its operation keeps the user's category
        booked = Txn(
            500, acct, DAY, Decimal("-30.00"), "CARTE X4974 05/10 CARREFOUR", "CARREFOUR", last_update=LATER
        )
        await producer.send(user, "bnp", [booked], sync_run="run-d")

    def booked_now() -> dict[str, Any] | None:
        with api(importer.url, user) as client:
            op = {o["id"]: o for o in all_operations(client, user, account_id)}[op_a]
        return op if op["status"] == "booked" else None

    op = wait_for(booked_now, 30, what="the booking")
    assert (op["category"], op["categorized_by"]["source"]) == ("loisirs", "manual")


def test_api_answers_problems_with_stable_codes(importer):
    user = new_user("api")
    with api(importer.url, user) as client:
        assert client.get(f"/v1/users/{user}/accounts").json() == []
        missing = client.get(f"/v1/users/{user}/accounts/nope/operations")
        assert (missing.status_code, missing.json()["code"]) == (404, "unknown_account")
        assert missing.headers["content-type"].startswith("application/problem+json")
        link = client.put(
            f"/v1/users/{user}/links/1", json={"target_account_id": "nope", "import_mode": "create"}
        )
        assert (link.status_code, link.json()["code"]) == (404, "unknown_account")
        no_target = client.put(f"/v1/users/{user}/links/1", json={"import_mode": "reconcile"})
        assert (no_target.status_code, no_target.json()["code"]) == (422, "validation_error")
        bad_name = client.post(f"/v1/users/{user}/accounts", json={"name": "", "currency": "EUR"})
        assert (bad_name.status_code, bad_name.json()["code"]) == (422, "validation_error")
        account = client.post(f"/v1/users/{user}/accounts", json={"name": "Livret", "currency": "EUR"}).json()
        path = f"/v1/users/{user}/accounts/{account['account_id']}/operations"
        for body, code in (
            (
                {"date": "2026-10-05", "amount": -42.5, "currency": "EUR", "label": "float"},
                "validation_error",
            ),
            ({"date": "2026-10-05", "amount": "abc", "currency": "EUR", "label": "nan"}, "invalid_amount"),
            (
                {"date": "2026-10-05", "amount": "1e12", "currency": "EUR", "label": "absurd"},
                "invalid_amount",
            ),
            (
                {"date": "1850-10-05", "amount": "-1.00", "currency": "EUR", "label": "old"},
                "validation_error",
            ),
        ):
            answer = client.post(path, json=body)
            assert (answer.status_code, answer.json()["code"]) == (422, code), body
        usd = client.post(
            path, json={"date": "2026-10-05", "amount": "-1.00", "currency": "USD", "label": "x"}
        )
        assert (usd.status_code, usd.json()["code"]) == (422, "currency_mismatch")
        cursor = client.get(path, params={"cursor": "garbage"})
        assert (cursor.status_code, cursor.json()["code"]) == (400, "invalid_cursor")
        assert client.get(f"/v1/users/{user}/accounts/{account['account_id']}/operations").json() == {
            "items": [],
            "next_cursor": None,
        }
        assert client.get("/v1/users/someone-else/accounts").status_code == 403
    assert httpx.get(f"{importer.url}/v1/users/{user}/accounts").status_code == 401
    with api(importer.url, user) as client:
        assert (
            client.post("/v1/ops/replay", json={"user_id": user, "aggregator_account_id": "1"}).status_code
            == 403
        )
    with api(importer.url, "ops", scopes="ops") as ops_client:
        assert ops_client.get(f"/v1/users/{user}/accounts").status_code == 200
        unknown = ops_client.get("/v1/ops/replays/nope")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_replay")


async def test_accounts_take_the_name_iban_and_balance_the_bank_gives(importer, engines):
    user = new_user("named")

    def discovered(account: str, name: str, balance: str) -> bytes:
        return CloudEvent.new(
            service="connector",
            name="account.discovered",
            data={
                "user_id": user,
                "connection_id": "c1",
                "bank": {"id": "bnp", "name": "BNP Paribas"},
                "account": {
                    "aggregator_account_id": account,
                    "name": name,
                    "iban": f"FR76300040000{account}",
                    "balance": balance,
                    "currency": "EUR",
                    "type": "checking",
                },
            },
            user_id=user,
            correlation_id="link",
        ).to_json_bytes()

    async with RawProducer(engines.kafka_bootstrap) as producer:
        # known before its first line, usually (the topics are read independently)
        await producer.send_raw(user, discovered("7008", "Compte chèques", "1523.10"), topic=CONNECTIONS)
        await producer.send(user, "bnp", [Txn(800, "7008", DAY, Decimal("-1.00"), "CB X", "X")])
        # and one discovered after its account was created
        await producer.send(user, "bnp", [Txn(801, "7009", DAY, Decimal("-2.00"), "CB Y", "Y")])
        with api(importer.url, user) as client:
            wait_operations(client, user, "7009", 1)
        await producer.send_raw(user, discovered("7009", "Livret A", "800.00"), topic=CONNECTIONS)

    with api(importer.url, user) as client:

        def named(account: str, name: str) -> dict[str, Any] | None:
            found = account_for(client, user, account)
            return found if found is not None and found["name"] == name else None

        # whichever comes first, the discovery or the first line, the account ends with the bank's name
        first = wait_for(lambda: named("7008", "Compte chèques"), 30, what="the first account's name")
        assert (first["iban"], first["balance"], first["bank_id"]) == ("FR763000400007008", "1523.10", "bnp")
        second = wait_for(lambda: named("7009", "Livret A"), 30, what="the second account's name")
        assert second["balance"] == "800.00"
