"""`banksync replay` and `banksync dlq redrive` through the real importer (skipped until the importer
serves the contract's POST /v1/ops/replay)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.devstack import ServiceProcess, free_port, private_consumer_groups, user_client
from harness.paging import operations_by_account
from harness.waiting import wait_for, wait_for_async
from shared.contract.envelope import CLOUDEVENTS_CONTENT_TYPE, CloudEvent
from shared.contract.topics import TRANSACTIONS_RAW
from tests.cli import run_banksync
from tests.kafka_helpers import publish as publish_events

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def importer(engines, log_dir) -> Iterator[ServiceProcess]:
    port, database = free_port(), f"opsimp{uuid.uuid4().hex[:6]}"
    process = ServiceProcess(
        "services.importer",
        port,
        engines.service_env(MONGODB_DATABASE=database, **private_consumer_groups(engines, database)),
        log_dir / f"importer-ops-{port}.log",
    )
    process.start()
    try:
        paths = httpx.get(f"{process.url}/openapi.json", timeout=10).json().get("paths", {})
        if "/v1/ops/replay" not in paths:
            pytest.skip("the importer does not serve POST /v1/ops/replay yet")
        yield process
    finally:
        process.stop()


def api(importer: ServiceProcess, user: str) -> httpx.Client:
    return user_client(importer.url, user)


def line(user: str, account: str, n: int, **changes: Any) -> CloudEvent:
    transaction = {
        "id": f"{account}-{n}",
        "id_account": account,
        "date": f"2026-01-{10 + n:02d}",
        "value": f"-{n + 1}.25",
        "original_wording": f"CB BOULANGERIE {n}",
        **changes,
    }
    return CloudEvent.new(
        service="connector",
        name="transaction.observed",
        data={
            "user_id": user,
            "connection_id": "c1",
            "aggregator_account_id": account,
            "bank": {"id": "101", "name": "Banque Démo Société"},
            "sync_run_id": "ops-test",
            "initial": True,
            "transaction": {k: v for k, v in transaction.items() if v is not None},
        },
        user_id=user,
        correlation_id=f"ops-{user}",
    )


async def publish(bootstrap: str, items: list[tuple[str, CloudEvent]]) -> None:
    await publish_events(bootstrap, TRANSACTIONS_RAW, items, "ops-test-raw")


def operations_by_bank_account(importer: ServiceProcess, user: str) -> dict[str, list[dict[str, Any]]]:
    with api(importer, user) as http:
        return {
            account["aggregator_account_id"]: ops
            for account, ops in operations_by_account(http, user, limit=500)
            if account.get("aggregator_account_id")
        }


def wait_operations(
    importer: ServiceProcess, user: str, counts: dict[str, int], within_s: float = 60
) -> dict:
    found: dict[str, list[dict[str, Any]]] = wait_for(
        lambda: operations_by_bank_account(importer, user),
        within_s,
        f"{counts} operations",
        0.5,
        until=lambda found: {k: len(v) for k, v in found.items()} == counts,
    )
    return found


async def banksync(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    return await run_banksync(*args, env=env, within_s=180)


async def test_replay_restores_one_account_and_leaves_the_others(engines, importer):
    user = f"ops-replay-{uuid.uuid4().hex[:8]}"
    await publish(
        engines.kafka_bootstrap,
        [(f"{user}:r1", line(user, "r1", n)) for n in range(6)]
        + [(f"{user}:r2", line(user, "r2", n)) for n in range(3)],
    )
    before = await asyncio.to_thread(wait_operations, importer, user, {"r1": 6, "r2": 3})
    with api(importer, user) as http:
        accounts = {a["aggregator_account_id"]: a for a in http.get(f"/v1/users/{user}/accounts").json()}
        http.delete(f"/v1/users/{user}/accounts/{accounts['r1']['account_id']}").raise_for_status()
    await asyncio.to_thread(wait_operations, importer, user, {"r2": 3})

    env = engines.service_env(IMPORTER_URL=importer.url)
    code, out, err = await banksync("replay", "--user", user, "--account", "r1", env=env)
    assert code == 0, err
    final = json.loads(out)  # the replay's status, followed until it ended
    assert (final["status"], final["state"], final["attempts"]) == ("succeeded", "succeeded", 1)
    assert (final["result"]["records_matched"], final["result"]["stats"]["imported"]) == (6, 6)
    assert final["runner"]  # the importer that owns the account's partition ran it
    after = await asyncio.to_thread(wait_operations, importer, user, {"r1": 6, "r2": 3})
    assert sorted(o["aggregator_transaction_id"] for o in after["r1"]) == sorted(
        o["aggregator_transaction_id"] for o in before["r1"]
    )
    assert after["r2"] == before["r2"]  # untouched

    code, _, err = await banksync(
        "replay", "--user", user, "--account", "r1", "--since", "2999-01-01", env=env
    )
    assert code == 2
    assert "in the future" in err


async def test_dlq_redrive_of_a_fixed_record_imports_it_once(engines, importer, tmp_path: Path):
    user = f"ops-fixed-{uuid.uuid4().hex[:8]}"
    key = f"{user}:f1"
    broken = line(user, "f1", 1, date=None)  # a bank line without its date: invalid
    await publish(engines.kafka_bootstrap, [(key, broken)])
    env = engines.service_env()
    bootstrap = ["--bootstrap", engines.kafka_bootstrap]

    async def listed() -> dict[str, Any] | None:
        code, out, err = await banksync("dlq", "list", "--json", *bootstrap, env=env)
        assert code == 0, err
        return next((d for d in json.loads(out) if d["key"] == key), None)

    letter = await wait_for_async(listed, 60, "the broken line in `banksync dlq list`", 0.5)
    assert letter is not None, "the importer never dead-lettered the broken line"
    assert letter["service"] == "importer"
    assert letter["headers"]["content-type"] == CLOUDEVENTS_CONTENT_TYPE

    fixed = json.loads(letter["value"])
    fixed["data"]["transaction"]["date"] = "2026-01-11"
    path = tmp_path / "fixed.json"
    path.write_text(json.dumps(fixed))
    code, _, err = await banksync(
        "dlq", "redrive", letter["id"], "--value-file", str(path), *bootstrap, env=env
    )
    assert code == 0, err
    await asyncio.to_thread(wait_operations, importer, user, {"f1": 1})

    code, _, err = await banksync("dlq", "redrive", letter["id"], *bootstrap, env=env)
    assert code == 1
    assert "already redriven" in err
    await asyncio.sleep(2)
    assert {k: len(v) for k, v in operations_by_bank_account(importer, user).items()} == {"f1": 1}
