"""Connector throughput against the aggregator sandbox (no latency): the real HTTP, Kafka and MongoDB path.

- `connector_fetch_publish`: bank lines fetched from the sandbox and published on the raw topic per second,
  during the first sync of a batch of users (all of each user's accounts).
- `nightly_run`: the nightly run of 1,000 users x 2 accounts (after their first sync), from
  `POST /v1/ops/nightly-run` to the last account synced, with one connector process.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from bench.linking import SyncWatcher, nightly_run_now, set_up_night
from bench.registry import Context, Limit, Measurement, benchmark
from harness.devstack import ROOT, Stack, connector_stack, ensure_dir, new_user
from harness.waiting import wait_for_async
from shared.mongo import make_client

CONCURRENCY = 16


async def in_threads(items: list[str], work: Any) -> list[Any]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(item: str) -> Any:
        async with gate:
            return await asyncio.to_thread(work, item)

    return await asyncio.gather(*(one(item) for item in items))


def link_and_select(stack: Stack, user: str, account_types: set[str] | None) -> int:
    """Subscribes, links a demo bank through the webview, selects accounts; returns how many."""
    stack.entitle(user)
    connection = stack.link_bank(user, bank_index=hash(user) % 2)
    chosen = [
        a["aggregator_account_id"]
        for a in connection["accounts"]
        if account_types is None or a["type"] in account_types
    ]
    with stack.client("connector", user) as api:
        api.put(
            f"/v1/users/{user}/connections/{connection['connection_id']}/accounts", json={"selected": chosen}
        ).raise_for_status()
    return len(chosen)


async def synced_since(stack: Stack, since: datetime, users: list[str]) -> int:
    """Accounts of `users` whose last run started after `since` and finished."""
    client = make_client(stack.engines.mongodb_url)
    try:
        collection = client[f"{stack.database}_conn"]["account_sync"]
        return await collection.count_documents(
            {
                "user_id": {"$in": users},
                "last_run.started_at": {"$gte": since},
                "state": {"$in": ["ok", "error", "action_needed"]},
            }
        )
    finally:
        await client.close()


async def lines_published(stack: Stack, users: list[str]) -> int:
    client = make_client(stack.engines.mongodb_url)
    try:
        docs = (
            await client[f"{stack.database}_conn"]["account_sync"].find({"user_id": {"$in": users}}).to_list()
        )
        return sum(int((d.get("last_run") or {}).get("transactions", 0)) for d in docs)
    finally:
        await client.close()


async def wait_synced(
    stack: Stack, since: datetime, users: list[str], accounts: int, timeout_s: float
) -> float:
    # each poll scans the collection on FerretDB (over a second with 2,000 accounts on a busy engine):
    # polled often, the measurement would load the database it measures
    every = min(2.0, max(0.25, accounts / 1000))
    await wait_for_async(
        lambda: synced_since(stack, since, users),
        timeout_s,
        f"{accounts} accounts synced (accounts synced so far)",
        every,
        until=lambda synced: synced >= accounts,
    )
    return time.monotonic()


def bench_stack(ctx: Context, name: str, **common_env: str) -> Any:
    return connector_stack(
        ctx.engines,
        ensure_dir(ROOT / ".run" / "bench-logs"),
        f"bench_{name}_{ctx.run_id[-6:]}",
        common_env={"LOG_LEVEL": "WARNING", **common_env},
    )


@benchmark("connector_fetch_publish", timeout_s=900, limit=Limit("kafka_produce", target=0.02))
async def connector_fetch_publish(ctx: Context) -> Measurement:
    """First syncs of a batch of users: lines fetched from the sandbox and published per second."""
    users_n = ctx.size(full=20, quick=4)
    with bench_stack(ctx, "fetch") as stack:
        users = [new_user("bench") for _ in range(users_n)]
        # link everything first, without selecting: the measured part is the syncs only
        accounts = sum(await in_threads(users, lambda u: link_and_select(stack, u, account_types=set())))
        assert accounts == 0
        started_at = datetime.now(UTC)
        started = time.monotonic()
        selected = sum(await in_threads(users, lambda u: _select_all(stack, u)))
        finished = await wait_synced(stack, started_at, users, selected, timeout_s=600)
        lines = await lines_published(stack, users)
    elapsed = finished - started
    return Measurement(
        "bank lines fetched and published per second (first syncs, one connector process)",
        "lines/s",
        lines / elapsed,
        {"users": users_n, "accounts": selected, "lines": lines, "elapsed_s": round(elapsed, 2)},
    )


def _select_all(stack: Stack, user: str) -> int:
    with stack.client("connector", user) as api:
        connection = api.get(f"/v1/users/{user}/connections").json()[0]
        ids = [a["aggregator_account_id"] for a in connection["accounts"]]
        api.put(
            f"/v1/users/{user}/connections/{connection['connection_id']}/accounts", json={"selected": ids}
        ).raise_for_status()
    return len(ids)


@benchmark("nightly_run", timeout_s=3600, needs=("kafka_produce",))
async def nightly_run(ctx: Context) -> Measurement:
    """The nightly run of N users x 2 accounts, from the request to the last account synced."""
    users_n = ctx.user_count(full=1_000, quick=100)
    # one month of history: the night reads only what changed since the last sync, whatever the history's
    # length, and a year each would make the first syncs of the set-up most of the run
    with bench_stack(ctx, "nightly", AGGREGATOR_SANDBOX_HISTORY_MONTHS="1") as stack:
        users = [new_user("night") for _ in range(users_n)]
        # two accounts each (savings and card), linked and first-synced before the measured night
        setup = await set_up_night(stack, users)
        night_at = datetime.now(UTC)
        started = time.monotonic()
        async with SyncWatcher(ctx.engines.kafka_bootstrap, night_at, set(users)) as night:
            report = await nightly_run_now(stack)
            published = time.monotonic()
            await night.wait(setup.accounts, timeout_s=900 + 2 * users_n)
            finished = time.monotonic()
    wall = finished - started
    return Measurement(
        "nightly run wall time (one connector process)",
        "s",
        wall,
        {
            "users": users_n,
            "accounts": setup.accounts,
            "accounts_failed": night.failed,
            "setup_s": setup.steps["first_synced_s"],
            "setup_steps_s": setup.steps,
            "requests_published_s": round(published - started, 2),
            "users_per_s": round(users_n / wall, 1),
            "accounts_per_s": round(setup.accounts / wall, 1),
            "kafka_produce_limit_records_per_s": round(ctx.value("kafka_produce")),
            "report": report,
        },
    )
