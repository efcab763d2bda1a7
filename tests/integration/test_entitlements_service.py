"""The entitlements service on the real stack: API, idempotence, history, and the event stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from harness.devstack import ServiceProcess, bearer, running_service, user_client
from harness.waiting import wait_for_async
from shared.contract.envelope import CloudEvent
from shared.contract.topics import ENTITLEMENTS
from tests.kafka_helpers import opened

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def entitlements(engines, log_dir) -> Iterator[ServiceProcess]:
    with running_service("services.entitlements", engines, log_dir, MONGODB_DATABASE="ent_test") as proc:
        yield proc


def client_for(proc: ServiceProcess, user: str, scopes: str = "") -> httpx.Client:
    return user_client(proc.url, user, scopes, timeout=10)


async def events_for(bootstrap: str, user: str, expected: int, within_s: float = 30) -> list[CloudEvent]:
    consumer = AIOKafkaConsumer(
        ENTITLEMENTS,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[CloudEvent] = []
    try:

        async def read() -> list[CloudEvent]:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                found.extend(opened(r.value) for r in records if r.key == user.encode())
            return found

        if expected:
            await wait_for_async(
                read, within_s, f"{expected} events of {user}", 0, until=lambda f: len(f) >= expected
            )
        # read a little more to see that nothing extra follows
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            found += [opened(r.value) for r in records if r.key == user.encode()]
    finally:
        await consumer.stop()
    return found


async def test_standard_user_journey_with_history_and_events(entitlements, engines):
    user = f"user-{uuid.uuid4().hex[:8]}"
    with client_for(entitlements, user) as own, client_for(entitlements, "billing-backend", "billing") as api:
        fresh = own.get(f"/v1/users/{user}/entitlements").json()
        assert fresh["plan"] == "standard"
        assert fresh["options"] == []
        assert fresh["auto_sync_allowed"] is False
        assert fresh["code"] == "auto_import_required"
        assert "Auto-Import" in fresh["reason"]

        first = api.post(f"/v1/users/{user}/options/auto_import", headers={"X-Correlation-ID": "req-sub-1"})
        assert first.status_code == 200
        assert first.json()["auto_sync_allowed"] is True
        assert first.json()["options"] == ["auto_import"]
        again = api.post(f"/v1/users/{user}/options/auto_import").json()
        assert again["version"] == first.json()["version"] == 1

        cancelled = api.delete(f"/v1/users/{user}/options/auto_import").json()
        assert cancelled["auto_sync_allowed"] is False
        premium = api.put(f"/v1/users/{user}/plan", json={"plan": "premium"}).json()
        assert premium["auto_sync_allowed"] is True
        assert premium["options"] == []
        conflict = api.post(f"/v1/users/{user}/options/auto_import")
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "option_included_in_plan"

        history = own.get(f"/v1/users/{user}/entitlements/history").json()
        assert [h["action"] for h in history] == ["plan_changed", "option_cancelled", "option_subscribed"]
        assert history[-1]["request_id"] == "req-sub-1"
        assert all(h["actor"] == {"sub": "billing-backend", "scope": "billing"} for h in history)

    events = await events_for(engines.kafka_bootstrap, user, expected=3)
    assert [e.data["version"] for e in events] == [1, 2, 3]
    assert [e.data["auto_sync_allowed"] for e in events] == [True, False, True]
    assert all(e.type == "fr.budgetfacile.banksync.entitlement.changed.v1" for e in events)
    assert events[0].correlationid == "req-sub-1"
    assert len({e.id for e in events}) == 3
    assert all(e.data["actor"] == {"sub": "billing-backend", "scope": "billing"} for e in events)


async def test_only_billing_or_ops_change_plans_and_options(entitlements, engines):
    """A user's own token reads its rights but cannot grant itself Premium or Auto-Import."""
    user = f"free-{uuid.uuid4().hex[:8]}"
    with client_for(entitlements, user) as own:
        for method, path, body in (
            ("PUT", f"/v1/users/{user}/plan", {"plan": "premium"}),
            ("POST", f"/v1/users/{user}/options/auto_import", None),
            ("DELETE", f"/v1/users/{user}/options/auto_import", None),
        ):
            refused = own.request(method, path, json=body)
            assert refused.status_code == 403, (method, path, refused.text)
            assert refused.json()["code"] == "forbidden"
            assert "billing" in refused.json()["detail"]
        rights = own.get(f"/v1/users/{user}/entitlements").json()
        assert (rights["plan"], rights["options"], rights["version"]) == ("standard", [], 0)
    with client_for(entitlements, "ops-alice", "ops") as ops:
        assert ops.put(f"/v1/users/{user}/plan", json={"plan": "premium"}).json()["plan"] == "premium"
        [entry] = ops.get(f"/v1/users/{user}/entitlements/history").json()
        assert entry["actor"] == {"sub": "ops-alice", "scope": "ops"}
    [event] = await events_for(engines.kafka_bootstrap, user, expected=1)
    assert event.data["actor"] == {"sub": "ops-alice", "scope": "ops"}


async def test_concurrent_changes_keep_one_version_line(entitlements, engines):
    user = f"race-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(
        base_url=entitlements.url, headers=bearer("billing-backend", "billing"), timeout=30
    ) as api:
        calls = [
            api.post(f"/v1/users/{user}/options/auto_import")
            if i % 2 == 0
            else api.delete(f"/v1/users/{user}/options/auto_import")
            for i in range(12)
        ]
        answers = await asyncio.gather(*calls)
        assert all(a.status_code == 200 for a in answers)
        final = (await api.get(f"/v1/users/{user}/entitlements", headers=bearer(user))).json()
    events = await events_for(engines.kafka_bootstrap, user, expected=final["version"])
    assert [e.data["version"] for e in events] == list(range(1, final["version"] + 1))
    assert events[-1].data["auto_sync_allowed"] == final["auto_sync_allowed"]


def test_auth_and_validation_errors(entitlements):
    with client_for(entitlements, "alice") as alice:
        assert alice.get("/v1/users/bob/entitlements").status_code == 403
    with client_for(entitlements, "billing-backend", "billing") as billing:
        bad_plan = billing.put("/v1/users/alice/plan", json={"plan": "gold"})
        assert bad_plan.status_code == 422
        assert bad_plan.json()["code"] == "validation_error"
        unknown = billing.post("/v1/users/alice/options/teleport")
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "unknown_option"
    assert httpx.get(f"{entitlements.url}/v1/users/alice/entitlements").status_code == 401
    with client_for(entitlements, "ops-bot", scopes="ops") as ops:
        assert ops.get("/v1/users/bob/entitlements").status_code == 200
