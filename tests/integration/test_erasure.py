"""Erasing a user (RGPD art. 17) on the real stack: every service, topic, collection and log.

Two users synced through the whole pipeline; one is erased through `POST /v1/ops/users/{id}/erase`. Then
nothing of theirs can be read anywhere: their records stay in Kafka but no longer open (their key is
destroyed), their documents are gone from every service's database, the aggregator no longer knows them,
and the logs never held their memos or IBANs. The other user is untouched: a replay still restores their
account exactly. A record of the erased user read again is skipped with a count, not dead-lettered.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from bson import json_util

from harness.devstack import Stack, new_user
from harness.waiting import wait_for
from services.connector.domain.secrets import TokenCipher
from shared.contract.topics import DLQ, TOPICS, TRANSACTIONS_RAW
from shared.mongo import make_client
from shared.settings import DEV_TOKEN_KEY
from shared.vault import BlockingOpener, Shredded, is_sealed
from tests.faults import bank_lines, operations_of, produce, run_async, settle, sync_completes
from tests.kafka_helpers import read_raw

pytestmark = pytest.mark.engines

DATABASE = "erasure"
SERVICE_DATABASES = tuple(f"{DATABASE}_{suffix}" for suffix in ("ent", "conn", "imp", "cat"))


def synced(stack: Stack, user: str) -> tuple[list[str], dict[str, Any]]:
    """The user entitled, the demo bank linked, the checking account selected and synced, all imported."""
    stack.entitle(user)
    connection = stack.link_bank(user)
    accounts = [a["aggregator_account_id"] for a in connection["accounts"] if a["type"] == "checking"]
    with stack.client("connector", user) as api:
        api.put(
            f"/v1/users/{user}/connections/{connection['connection_id']}/accounts",
            json={"selected": accounts},
        ).raise_for_status()
    sync_completes(stack, user)
    settle(stack, user, bank_lines(stack, accounts))
    return accounts, connection


def secrets_of(stack: Stack, user: str, connection: dict[str, Any]) -> set[str]:
    """What identifies the user's bank data: their memos and their IBANs."""
    memos = {op["memo"] for ops in operations_of(stack, user).values() for op in ops if len(op["memo"]) >= 12}
    ibans = {a["iban"] for a in connection["accounts"] if a.get("iban")}
    assert memos
    assert ibans
    return memos | ibans


def every_record(bootstrap: str) -> list[tuple[str, str, bytes]]:
    return [
        (spec.name, key, value)
        for spec in TOPICS
        for key, value, _, _, _ in run_async(read_raw(bootstrap, spec.name))
    ]


def every_document(mongodb_url: str) -> dict[str, list[str]]:
    """Every document of the stack's databases, as text, by `database.collection`."""

    async def dump() -> dict[str, list[str]]:
        client = make_client(mongodb_url)
        try:
            found: dict[str, list[str]] = {}
            for name in SERVICE_DATABASES:
                db = client[name]
                for collection in await db.list_collection_names():
                    docs = await db[collection].find({}).to_list()
                    found[f"{name}.{collection}"] = [json_util.dumps(doc, ensure_ascii=False) for doc in docs]
            return found
        finally:
            await client.close()

    result: dict[str, list[str]] = run_async(dump())
    return result


def shredded_reads(stack: Stack) -> float:
    """The importer's count of raw records it skipped because their user's key is gone."""
    text = httpx.get(stack.url("importer") + "/metrics", timeout=10).text
    wanted = ("banksync_events_consumed_total{", 'outcome="shredded"', f'topic="{TRANSACTIONS_RAW}"')
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if all(part in line for part in wanted)
    )


def in_clear(secrets: set[str], values: list[bytes]) -> set[str]:
    blob = b"\n".join(values)
    return {s for s in secrets if s.encode() in blob}


def aggregator_token(mongodb_url: str, user: str) -> str:
    async def read() -> str:
        client = make_client(mongodb_url)
        try:
            doc = await client[f"{DATABASE}_conn"]["aggregator_users"].find_one({"_id": user})
        finally:
            await client.close()
        assert doc is not None
        return TokenCipher(DEV_TOKEN_KEY).decrypt(doc["token_enc"], user)

    token: str = run_async(read())
    return token


def test_an_erased_user_can_no_longer_be_read_anywhere_and_others_are_untouched(stack, engines):
    gone, kept = new_user("erased"), new_user("kept")
    _, gone_connection = synced(stack, gone)
    kept_accounts, kept_connection = synced(stack, kept)
    # the erased user's own: memos both users' banks write (the same shop, say) are not theirs alone
    secrets = secrets_of(stack, gone, gone_connection) - secrets_of(stack, kept, kept_connection)
    assert len(secrets) > 10
    kept_before = operations_of(stack, kept)
    token = aggregator_token(engines.mongodb_url, gone)
    with stack.sandbox() as sandbox:
        assert sandbox.get("/2.0/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    # sealed on the wire already: no topic holds a memo or an IBAN in clear, before any erasure
    records = every_record(engines.kafka_bootstrap)
    theirs = [(topic, value) for topic, key, value in records if key.split(":", 1)[0] == gone]
    assert any(topic == TRANSACTIONS_RAW for topic, _ in theirs)
    assert not in_clear(secrets, [value for _, value in theirs])
    sealed = [json.loads(v) for t, v in theirs if t == TRANSACTIONS_RAW]
    assert sealed
    assert all(is_sealed(e) and e["userid"] == gone for e in sealed)
    opener = BlockingOpener(engines.mongodb_url, DEV_TOKEN_KEY)
    assert all(not isinstance(opener.open(v), Shredded) for t, v in theirs)
    opener.close()

    with stack.client("entitlements", "ops-dpo", scopes="ops") as ops:
        with stack.client("entitlements", gone) as own:
            refused = own.post(f"/v1/ops/users/{gone}/erase")
            assert refused.status_code == 403
            assert refused.json()["code"] == "forbidden"
        answer = ops.post(f"/v1/ops/users/{gone}/erase")
        assert answer.status_code == 202, answer.text
        erase_id = answer.json()["erase_id"]
        done = wait_for(
            lambda: (view := ops.get(f"/v1/ops/erasures/{erase_id}").json())["state"] == "done" and view,
            120,
            "every service answered the erasure",
        )
        assert set(done["services"]) == {"entitlements", "connector", "importer", "categorizer"}
        assert done["services"]["importer"]["documents_deleted"] > 0
        assert done["services"]["connector"]["documents_deleted"] > 0
        # asking again is the same erasure, harmless
        again = ops.post(f"/v1/ops/users/{gone}/erase")
        assert again.status_code == 202
        assert again.json()["erase_id"] == erase_id
        unknown = ops.get("/v1/ops/erasures/no-such-erasure")
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "unknown_erasure"

    # every topic: the user's records are still there, and none opens any more
    records = every_record(engines.kafka_bootstrap)
    fresh = BlockingOpener(engines.mongodb_url, DEV_TOKEN_KEY)
    theirs = [(topic, value) for topic, key, value in records if key.split(":", 1)[0] == gone]
    sealed_now = [value for topic, value in theirs if is_sealed(json.loads(value))]
    assert len(sealed_now) >= len(sealed)
    assert all(isinstance(fresh.open(value), Shredded) for value in sealed_now)
    assert not in_clear(secrets, [value for _, _, value in records])
    # what stays in clear on the user's key is no bank data (rights, requests, sync outcomes)
    assert {topic for topic, value in theirs if not is_sealed(json.loads(value))} <= {
        "banksync.entitlements.v1",
        "banksync.sync-requests.v1",
        "banksync.sync-status.v1",
    }
    fresh.close()

    # every collection of every service: nothing of the user but the erasure's own record
    documents = every_document(engines.mongodb_url)
    left = {
        where: [d for d in docs if gone in d or any(s in d for s in secrets)]
        for where, docs in documents.items()
        if where != f"{DATABASE}_ent.erasures"
    }
    assert not {where: len(docs) for where, docs in left.items() if docs}, {
        w: d[:2] for w, d in left.items() if d
    }
    # every log of the stack
    for log in stack.log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert not [s for s in secrets if s in text], log

    # the public APIs and the aggregator agree
    with stack.client("importer", gone) as api:
        assert api.get(f"/v1/users/{gone}/accounts").json() == []
    with stack.client("connector", gone) as api:
        assert api.get(f"/v1/users/{gone}/connections").json() == []
    with stack.sandbox() as sandbox:
        assert sandbox.get("/2.0/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401

    # a record of the erased user read again: skipped and counted, neither a DLQ entry nor a crash
    shredded_before = shredded_reads(stack)
    again = [
        (key, value, {})
        for topic, key, value in records
        if topic == TRANSACTIONS_RAW and key.startswith(gone)
    ]
    run_async(produce(engines.kafka_bootstrap, TRANSACTIONS_RAW, again[:20]))
    wait_for(
        lambda: shredded_reads(stack) >= shredded_before + len(again[:20]),
        60,
        "the importer skipped the erased user's records",
    )
    dlq = run_async(read_raw(engines.kafka_bootstrap, DLQ))
    assert not [key for key, *_ in dlq if key.startswith(gone)]
    assert httpx.get(stack.url("importer") + "/readyz", timeout=10).status_code == 200

    # the other user: untouched, and a replay still restores their account exactly
    assert operations_of(stack, kept) == kept_before
    with stack.client("importer", kept) as api:
        accounts = {a["aggregator_account_id"]: a for a in api.get(f"/v1/users/{kept}/accounts").json()}
        checking = kept_accounts[0]
        assert api.delete(f"/v1/users/{kept}/accounts/{accounts[checking]['account_id']}").status_code == 204
    with stack.client("importer", "ops-replayer", scopes="ops") as ops:
        started = ops.post("/v1/ops/replay", json={"user_id": kept, "aggregator_account_id": checking})
        assert started.status_code == 202, started.text
        replay_id = started.json()["replay_id"]
        view = wait_for(
            lambda: (v := ops.get(f"/v1/ops/replays/{replay_id}").json())["status"] != "running" and v,
            90,
            "replay",
        )
        assert view["status"] == "succeeded", view
        assert view["result"]["records_shredded"] == 0

    def memos(ops: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, str]]:
        return sorted((o["date"], o["amount"], o["memo"]) for o in ops.get(checking, []))

    wait_for(lambda: memos(operations_of(stack, kept)) == memos(kept_before), 90, "the replayed account")
