"""A new user's first sync through the whole pipeline (sandbox, connector, importer, categorizer).

- `first_sync`: one user links the sandbox's two demo banks in the webview and chooses 5 accounts, as
  the demo journey does (every account of the first bank, the second's savings and card): 13 months of
  history, about 1,440 lines. Measured from the account-selection request, which is what starts a
  first sync (the connector's `select_accounts` requests the "activation" run at once; a `POST /sync`
  sent then only joins that run), to the last operation's categorisation stored by the importer
  (`categorized_at`, the importer's own clock on this machine), then checked readable through the
  importer's API. Fixed target: at most 5 s.
- `first_sync_loaded`: the same on a store that already holds 1,000 other users' histories (1,440
  operations each, in the importer's `operations` and `accounts` and the categorizer's projection,
  written with `insert_many` as the services shape them, before the services start: see
  bench.documents.seed_stores; then VACUUM ANALYZE on the local engine). Compared with `first_sync` of
  the same run: at most 1.5 times it (the cost of a sync must not grow with the store).

On the local engine both record `postgres_seq_scans_during_sync`: the tables PostgreSQL read
sequentially while the sync ran (pg_stat_user_tables, schema = database, table = collection), which
names the query shapes that do not use an index.

Both wait with bounded polls (the user's operations by `user_id`, a filter the engine serves from an
index, once a second) and fail with what they saw when the pipeline does not finish in time.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from bench.connector import lines_published, synced_since
from bench.documents import PastOperation, drop_stack_databases, history, seed_stores
from bench.registry import Context, Limit, Measurement, benchmark, load_average
from harness.devstack import DEPLOY, ROOT, Stack, ensure_dir, new_user, pipeline_stack
from harness.paging import operations_by_account
from services.importer.adapters.mongo import OperationStore
from shared.mongo import make_client

Doc = dict[str, Any]
POLL_S = 1.0
PAGE = 500
# the other users of the loaded store: as many accounts and lines as the measured user
OTHER_ACCOUNTS = ("21", "22", "23", "24", "25")
OTHER_LINES_PER_ACCOUNT = 288


def link_and_choose(stack: Stack, user: str) -> list[tuple[str, list[str]]]:
    """Links both demo banks (not selecting anything yet): [(connection id, accounts to choose)]."""
    stack.entitle(user)
    chosen = []
    for bank_index in (0, 1):
        connection = stack.link_bank(user, bank_index=bank_index)
        accounts = [
            a["aggregator_account_id"]
            for a in connection["accounts"]
            if bank_index == 0 or a["type"] != "checking"  # the second bank's joint account stays out
        ]
        chosen.append((connection["connection_id"], accounts))
    return chosen


def choose(stack: Stack, user: str, chosen: list[tuple[str, list[str]]]) -> None:
    with stack.client("connector", user) as api:
        for connection_id, accounts in chosen:
            api.put(
                f"/v1/users/{user}/connections/{connection_id}/accounts", json={"selected": accounts}
            ).raise_for_status()


async def user_operations(stack: Stack, user: str) -> list[Doc]:
    client = make_client(stack.engines.mongodb_url)
    try:
        store = OperationStore(client[f"{stack.database}_imp"])
        return await store.find_shown({"user_id": user}, ["created_at"])
    finally:
        await client.close()


async def sync_runs(stack: Stack, user: str) -> list[Doc]:
    client = make_client(stack.engines.mongodb_url)
    try:
        return await client[f"{stack.database}_conn"]["account_sync"].find({"user_id": user}).to_list()
    finally:
        await client.close()


def api_operations(stack: Stack, user: str) -> list[dict[str, Any]]:
    """Every operation of the user through the importer's API (each account, every page)."""
    with stack.client("importer", user) as api:
        return [op for _, ops in operations_by_account(api, user, limit=PAGE) for op in ops]


def seconds(at: datetime | None, since: datetime) -> float | None:
    return None if at is None else round((at.replace(tzinfo=UTC) - since).total_seconds(), 3)


async def measure_first_sync(stack: Stack, timeout_s: float) -> dict[str, Any]:
    """Links and chooses 5 accounts of a new user, then times its first sync to the last category stored."""
    user = new_user("first")
    chosen = await asyncio.to_thread(link_and_choose, stack, user)
    accounts = sum(len(ids) for _, ids in chosen)
    load_before = load_average()
    since = datetime.now(UTC)
    await asyncio.to_thread(choose, stack, user, chosen)
    requested = datetime.now(UTC)
    deadline = time.monotonic() + timeout_s
    lines: int | None = None
    ops: list[Doc] = []
    polls = 0
    while True:
        polls += 1
        if lines is None and await synced_since(stack, since, [user]) >= accounts:
            lines = await lines_published(stack, [user])
        ops = await user_operations(stack, user)
        categorised = sum(1 for op in ops if op.get("categorized_at"))
        if lines is not None and len(ops) >= lines and categorised >= len(ops):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"after {timeout_s:g} s: {'all' if lines is not None else 'not all'} {accounts} accounts "
                f"synced ({lines} lines), {len(ops)} operations stored, {categorised} categorised"
            )
        await asyncio.sleep(POLL_S)
    observed = datetime.now(UTC)
    runs = await sync_runs(stack, user)
    readable = await asyncio.to_thread(api_operations, stack, user)
    recognised = sum(1 for op in ops if op.get("category"))
    if len(readable) != len(ops) or sum(1 for op in readable if op["category"]) != recognised:
        raise RuntimeError(
            f"the API shows {len(readable)} operations ({sum(1 for op in readable if op['category'])} "
            f"categorised), the store {len(ops)} ({recognised})"
        )
    last_categorised = max(op["categorized_at"] for op in ops)
    finished = [r["last_run"].get("finished_at") for r in runs if r.get("last_run")]
    return {
        "value": seconds(last_categorised, since),
        "user": user,
        "accounts": accounts,
        "lines": lines,
        "operations": len(ops),
        "recognised": recognised,
        "start": "before the account-selection PUTs (they start the first sync: connector select_accounts "
        "requests the activation run)",
        "selection_requests_s": seconds(requested, since),
        # each stage's end, in seconds from the start: the last account synced (lines published on the
        # raw topic), the last operation stored, the last categorisation stored on it
        "last_account_synced_s": seconds(max((f for f in finished if f), default=None), since),
        "last_operation_stored_s": seconds(max(op["created_at"] for op in ops), since),
        "last_categorisation_stored_s": seconds(last_categorised, since),
        "observed_by_poll_s": seconds(observed, since),
        "polls": polls,
        "poll_every_s": POLL_S,
        "api_checked_operations": len(readable),
        "load_average_1m_before_after": [load_before, load_average()],
    }


def stack_database(ctx: Context, name: str) -> str:
    return f"bench_{name}_{ctx.run_id[-6:]}"


def first_sync_stack(ctx: Context, name: str) -> Any:
    return pipeline_stack(
        ctx.engines,
        ensure_dir(ROOT / ".run" / "bench-logs"),
        stack_database(ctx, name),
        common_env={"LOG_LEVEL": "WARNING"},
    )


def measurement(found: dict[str, Any], **extra: Any) -> Measurement:
    value = found.pop("value")
    return Measurement(
        "seconds from the first sync's request to the last operation categorised (5 accounts, 13 months)",
        "s",
        value,
        {**found, **extra},
    )


@benchmark("first_sync", timeout_s=600, limit=Limit.fixed(5, higher_is_better=False))
async def first_sync(ctx: Context) -> Measurement:
    """A new user's first sync (5 accounts, ~1,440 lines) to the last operation categorised, empty store."""
    with first_sync_stack(ctx, "first") as stack:
        before = await table_scans(ctx)
        found = await measure_first_sync(stack, timeout_s=300)
        await asyncio.sleep(1)  # the statistics collector's lag
        found["postgres_seq_scans_during_sync"] = scans_between(before, await table_scans(ctx))
    return measurement(found, store="empty (this stack's own databases)")


async def seed_other_users(mongodb_url: str, database: str, users: int) -> dict[str, Any]:
    """`users` other users' 13-month histories in the importer's and categorizer's stores (see
    bench.documents.seed_stores), 4 users per round of inserts."""

    def rounds() -> Iterator[list[PastOperation]]:
        for first in range(0, users, 4):
            yield [
                op
                for i in range(first, min(users, first + 4))
                for op in history(f"other-{i:05d}", OTHER_ACCOUNTS, OTHER_LINES_PER_ACCOUNT, seed=i)
            ]

    return {"other_users": users, **await seed_stores(mongodb_url, database, rounds())}


def postgres(ctx: Context, sql: str) -> list[list[str]]:
    """Rows of one statement on the local engine's PostgreSQL (deploy/local/ferretdb.sh psql)."""
    done = subprocess.run(
        [str(DEPLOY / "ferretdb.sh"), "psql", "-At", "-F", "\t", "-c", sql],
        env=ctx.engines.env,
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    return [line.split("\t") for line in done.stdout.splitlines() if line]


async def vacuum_analyze(ctx: Context) -> float | None:
    """PostgreSQL's statistics and GIN pending lists brought up to date after the bulk load (the local
    engine only), as autovacuum would some time later: the measured sync's plans must not depend on
    when it does (measured: the same ratio without). Seconds taken; None on an engine not started here."""
    if not ctx.engines.owned:
        return None
    started = time.perf_counter()
    await asyncio.to_thread(postgres, ctx, "VACUUM ANALYZE")
    return round(time.perf_counter() - started, 1)


SCANS = "SELECT schemaname || '.' || relname, seq_scan, seq_tup_read FROM pg_stat_user_tables"


async def table_scans(ctx: Context) -> dict[str, tuple[int, int]]:
    """Sequential scans so far per table (schema = database, table = collection): (scans, rows read)."""
    if not ctx.engines.owned:
        return {}
    rows = await asyncio.to_thread(postgres, ctx, SCANS)
    return {name: (int(scans), int(read)) for name, scans, read in rows}


def scans_between(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The tables scanned in between, most rows read first (the statistics lag by up to 0.5 s)."""
    grown = {
        name: (scans - before.get(name, (0, 0))[0], read - before.get(name, (0, 0))[1])
        for name, (scans, read) in after.items()
    }
    top = sorted(((n, d) for n, d in grown.items() if d[1] > 0), key=lambda item: -item[1][1])[:6]
    return {name: {"seq_scans": scans, "rows_read": read} for name, (scans, read) in top}


@benchmark("first_sync_loaded", timeout_s=2400, limit=Limit("first_sync", target=1.5, higher_is_better=False))
async def first_sync_loaded(ctx: Context) -> Measurement:
    """The same first sync on a store that already holds 1,000 other users' operations."""
    users = ctx.size(full=1_000, quick=50)
    database = stack_database(ctx, "loaded")
    try:
        seeded = await seed_other_users(ctx.engines.mongodb_url, database, users)
        seeded["vacuum_analyze_after_seed_s"] = await vacuum_analyze(ctx)
        with first_sync_stack(ctx, "loaded") as stack:
            before = await table_scans(ctx)
            found = await measure_first_sync(stack, timeout_s=600)
            await asyncio.sleep(1)  # the statistics collector's lag
            found["postgres_seq_scans_during_sync"] = scans_between(before, await table_scans(ctx))
    finally:  # millions of documents: not left to weigh on the benchmarks after this one
        await drop_stack_databases(ctx.engines.mongodb_url, database)
    return measurement(found, **seeded, quick_mode_fewer_users=ctx.quick)
