"""The sync gate on the real stack: entitlements decide who may sync, everywhere a sync can start."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator

import pytest

from harness.devstack import ServiceProcess, Stack, connector_stack, free_port, new_user
from harness.paging import operations_by_account
from harness.waiting import wait_for, wait_for_async
from shared.contract.topics import CATEGORIZATIONS, CONNECTIONS, SYNC_REQUESTS, TRANSACTIONS_RAW
from shared.kafka import start_group_at_end
from shared.mongo import make_client
from tests.faults import count_requests
from tests.kafka_helpers import events_where

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def stack(engines, log_dir) -> Iterator[Stack]:
    with connector_stack(engines, log_dir, "gate") as running:
        # the importer too, so that "nothing imported is lost" is checked on operations
        suffix = uuid.uuid4().hex[:6]
        groups = {
            TRANSACTIONS_RAW: f"gate-imp-{suffix}",
            CATEGORIZATIONS: f"gate-cat-{suffix}",
            CONNECTIONS: f"gate-conn-{suffix}",
        }
        for topic, group in groups.items():
            asyncio_run(start_group_at_end(engines.kafka_bootstrap, group, [topic]))
        running.start(
            "importer",
            "services.importer",
            MONGODB_DATABASE="gate_imp",
            IMPORTER_GROUP_ID=groups[TRANSACTIONS_RAW],
            IMPORTER_CATEGORIZATIONS_GROUP_ID=groups[CATEGORIZATIONS],
            IMPORTER_CONNECTIONS_GROUP_ID=groups[CONNECTIONS],
        )
        yield running


def operations_of(stack: Stack, user: str) -> int:
    with stack.client("importer", user) as api:
        return sum(len(ops) for _, ops in operations_by_account(api, user, limit=500))


def test_standard_user_refused_then_subscribes_cancels_and_comes_back(stack):
    user = new_user("std")
    with stack.client("connector", user) as api:
        refused = api.post(f"/v1/users/{user}/sync/activate")
        assert refused.status_code == 403
        problem = refused.json()
        assert problem["code"] == "not_entitled"
        assert "Auto-Import" in problem["detail"]
        assert problem["reason"] == "auto_import_required"
        assert api.post(f"/v1/users/{user}/sync").status_code == 403

    stack.entitle(user)  # subscribes to Auto-Import
    connection = stack.link_bank(user)
    stack.select_all(user, connection)
    run = stack.sync(user)
    assert {s["state"] for s in stack.wait_run(user, run)} == {"ok"}
    raw_lines = len(
        asyncio_run(
            events_where(
                stack.engines.kafka_bootstrap,
                TRANSACTIONS_RAW,
                lambda k, e: e.userid == user and e.name == "transaction.observed",
            )
        )
    )
    assert raw_lines > 1000
    imported = wait_for(lambda: (n := operations_of(stack, user)) >= raw_lines - 20 and n, timeout=120)

    with stack.billing() as ent:
        ent.delete(f"/v1/users/{user}/options/auto_import").raise_for_status()
    paused = wait_for(lambda: (s := stack.status(user)) and all(x["state"] == "paused" for x in s) and s)
    assert paused
    with stack.client("connector", user) as api:
        assert api.get(f"/v1/users/{user}/connections").json()[0]["state"] == "paused"
        assert api.post(f"/v1/users/{user}/sync").status_code == 403

    requests_before = count_requests(stack, user)
    with stack.client("connector", "ops-bot", scopes="ops") as ops:
        report = ops.post("/v1/ops/nightly-run").json()
    assert report["skipped"] >= 1
    assert count_requests(stack, user) == requests_before  # the nightly run skipped them
    # nothing already imported is lost, and the bank link is kept
    after = asyncio_run(
        events_where(
            stack.engines.kafka_bootstrap,
            TRANSACTIONS_RAW,
            lambda k, e: e.userid == user and e.name == "transaction.observed",
        )
    )
    assert len(after) == raw_lines
    assert operations_of(stack, user) == imported
    with stack.client("connector", user) as api:
        assert len(api.get(f"/v1/users/{user}/connections").json()) == 1

    # subscribing again resumes, without a new bank setup
    stack.entitle(user)
    wait_for(lambda: (s := stack.status(user)) and all(x["state"] != "paused" for x in s))
    resumed = stack.sync(user)
    assert {s["state"] for s in stack.wait_run(user, resumed)} == {"ok"}


def test_premium_is_allowed_without_the_option(stack):
    user = new_user("prem")
    stack.entitle(user, plan="premium", auto_import=False)
    with stack.client("connector", user) as api:
        answer = api.post(f"/v1/users/{user}/sync/activate")
    assert answer.status_code == 200
    assert answer.json()["connect_url"].startswith(stack.url("sandbox"))


def test_cross_user_token_is_refused(stack):
    owner, intruder = new_user("own"), new_user("bad")
    stack.entitle(owner)
    with stack.client("connector", intruder) as api:
        for method, path in [
            ("POST", f"/v1/users/{owner}/sync/activate"),
            ("POST", f"/v1/users/{owner}/sync"),
            ("GET", f"/v1/users/{owner}/connections"),
            ("GET", f"/v1/users/{owner}/sync/status"),
        ]:
            assert api.request(method, path).status_code == 403
        assert api.post("/v1/ops/nightly-run").status_code == 403


def test_entitlements_down_fails_closed_for_unknown_users(stack):
    known = new_user("known")
    stack.entitle(known)
    with stack.client("connector", known) as api:
        assert api.post(f"/v1/users/{known}/sync/activate").status_code == 200  # answer now projected
    stack.stop("entitlements")
    try:
        stranger = new_user("stranger")
        with stack.client("connector", stranger) as api:
            refused = api.post(f"/v1/users/{stranger}/sync/activate")
        assert refused.status_code == 503
        assert refused.json()["code"] == "entitlements_unavailable"
        # a user whose rights the connector already holds is still served
        with stack.client("connector", known) as api:
            assert api.post(f"/v1/users/{known}/sync/activate").status_code == 200
    finally:
        stack.processes["entitlements"].start()


async def test_replaying_the_entitlements_topic_rebuilds_the_same_projection(stack, engines, log_dir):
    users = [new_user("replay") for _ in range(3)]
    stack.entitle(users[0])
    stack.entitle(users[1], plan="premium", auto_import=False)
    stack.entitle(users[2])
    with stack.billing() as ent:
        ent.delete(f"/v1/users/{users[2]}/options/auto_import").raise_for_status()
    client = make_client(engines.mongodb_url)
    try:
        original = client[f"{stack.database}_conn"]["entitlement_projection"]

        async def projected(collection) -> dict:
            docs = await collection.find({"_id": {"$in": users}}).to_list()
            return {d["_id"]: (d["allowed"], d["code"], d["version"]) for d in docs}

        async def all_projected() -> bool:
            # the third user's cancellation (version 2) comes after its subscription: wait for it too
            found = await projected(original)
            return len(found) == 3 and found[users[2]][2] >= 2

        await wait_for_async(all_projected, 30, "the three users' entitlements projected", 0.3)
        expected = await projected(original)
        assert expected[users[0]][0] is True
        assert expected[users[1]][0] is True
        assert expected[users[2]] == (False, "auto_import_required", 2)

        port = free_port()
        rebuilt_db = f"{stack.database}_rebuilt"
        fresh = ServiceProcess(
            "services.connector",
            port,
            engines.service_env(
                MONGODB_DATABASE=rebuilt_db,
                ENTITLEMENTS_GROUP=f"rebuild-{port}",
                SYNC_WORKERS_GROUP=f"rebuild-sync-{port}",
                ENTITLEMENTS_URL="http://127.0.0.1:9",
                NIGHTLY_ENABLED="false",
            ),
            log_dir / f"connector-rebuild-{port}.log",
        ).start()
        try:
            rebuilt = client[rebuilt_db]["entitlement_projection"]
            await wait_for_async(
                lambda: projected(rebuilt), 60, "the rebuilt projection", 0.5, until=expected.__eq__
            )
            assert await projected(rebuilt) == expected
        finally:
            fresh.stop()
    finally:
        await client.close()


def asyncio_run(coro):
    import concurrent.futures

    # sync tests run inside pytest-asyncio's loop-less context; a worker thread gives a fresh loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_the_nightly_run_requests_one_sync_per_entitled_user(stack):
    """In sets: one request per entitled user with a live connection; a user whose connection already
    has a live run joins it; a user who lost the right is skipped and paused."""
    synced, busy, lapsed = new_user("night"), new_user("busy"), new_user("lapsed")
    for user in (synced, busy, lapsed):
        stack.entitle(user)
        stack.select_all(user, stack.link_bank(user))
        stack.wait_run(user, stack.sync(user))
    with stack.billing() as ent:
        ent.delete(f"/v1/users/{lapsed}/options/auto_import").raise_for_status()
    wait_for(lambda: (s := stack.status(lapsed)) and all(x["state"] == "paused" for x in s))
    with stack.client("connector", busy) as api:
        busy_connection = api.get(f"/v1/users/{busy}/connections").json()[0]["connection_id"]
    live_run = str(uuid.uuid4())
    asyncio_run(claim_for_an_hour(stack, f"{busy}:{busy_connection}", live_run))
    before = {user: count_requests(stack, user) for user in (synced, busy, lapsed)}

    with stack.client("connector", "ops-bot", scopes="ops") as ops:
        report = ops.post("/v1/ops/nightly-run").json()
    assert report["users"] == report["requested"] + report["skipped"]
    assert report["skipped"] >= 2  # at least `busy` (joined its live run) and `lapsed`
    assert count_requests(stack, synced) == before[synced] + 1
    assert count_requests(stack, busy) == before[busy]
    assert count_requests(stack, lapsed) == before[lapsed]
    _, night = asyncio_run(
        events_where(stack.engines.kafka_bootstrap, SYNC_REQUESTS, lambda k, e: e.userid == synced)
    )[-1]
    assert (night.data["reason"], night.data["user_id"]) == ("nightly", synced)
    # the night's run is the one that syncs: its accounts finish with that run id
    assert {s["state"] for s in stack.wait_run(synced, night.data["sync_run_id"])} == {"ok"}


async def claim_for_an_hour(stack: Stack, connection_key: str, run_id: str) -> None:
    client = make_client(stack.engines.mongodb_url)
    try:
        now = dt.datetime.now(dt.UTC)
        await client[f"{stack.database}_conn"]["active_runs"].replace_one(
            {"_id": connection_key},
            {"run_id": run_id, "claimed_at": now, "expires_at": now + dt.timedelta(hours=1)},
            upsert=True,
        )
    finally:
        await client.close()
