"""The user journey on the running stack (`make demo`), through public APIs only.

A Standard user is refused, subscribes to Auto-Import, links two demo banks through the aggregator's
webview, chooses the accounts, syncs a year of history and sees the result; then cancels and is paused.
Each step prints what happened and how long it took; the stack keeps running afterwards.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from shared.auth import issue_token
from shared.devstack import WebviewForm
from shared.settings import ServiceSettings

settings = ServiceSettings()
ENTITLEMENTS = settings.entitlements_url
CONNECTOR = settings.connector_url
IMPORTER = settings.importer_url
timings: list[tuple[str, float]] = []


@contextmanager
def step(title: str) -> Iterator[None]:
    print(f"\n▶ {title}", flush=True)
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    timings.append((title, elapsed))
    print(f"  ✓ {elapsed:.1f} s", flush=True)


def client(base: str, user: str) -> httpx.Client:
    token = issue_token(settings.banksync_jwt_secret.get_secret_value(), user)
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def link_bank(user: str, bank_index: int) -> dict[str, Any]:
    with client(CONNECTOR, user) as api:
        activation = api.post(f"/v1/users/{user}/sync/activate")
        activation.raise_for_status()
    url = activation.json()["connect_url"]
    with httpx.Client(timeout=60) as browser:
        page = browser.get(url)
        form = WebviewForm()
        form.feed(page.text)
        fields = {**form.fields, "connector_id": form.banks[bank_index], "login": "demo", "password": "demo"}
        answer = browser.post(httpx.URL(url).join(form.action or url), data=fields, follow_redirects=True)
        answer.raise_for_status()
        linked: dict[str, Any] = answer.json()
        return linked


def wait(check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise TimeoutError("the stack did not reach the expected state in time")


def main() -> int:
    user = os.environ.get("DEMO_USER", f"demo-{uuid.uuid4().hex[:6]}")
    print(f"Budgetfacile banksync demo, user {user}")
    with step("A Standard user asks for automatic sync"), client(CONNECTOR, user) as api:
        refused = api.post(f"/v1/users/{user}/sync/activate")
        print(f"  {refused.status_code} {refused.json()['code']}: {refused.json()['detail']}")
        assert refused.status_code == 403
    with step("They subscribe to the Auto-Import option"), client(ENTITLEMENTS, user) as api:
        rights = api.post(f"/v1/users/{user}/options/auto_import").json()
        print(f"  auto_sync_allowed={rights['auto_sync_allowed']} ({rights['reason']})")
    connections = []
    with step("They link two demo banks through the aggregator's webview"):
        for index in (0, 1):
            connection = link_bank(user, index)
            connections.append(connection)
            print(f"  {connection['bank']['name']}: {len(connection['accounts'])} accounts")
    with step("They choose the accounts to sync (the first sync starts)"), client(CONNECTOR, user) as api:
        for connection in connections:
            ids = [a["aggregator_account_id"] for a in connection["accounts"]]
            api.put(
                f"/v1/users/{user}/connections/{connection['connection_id']}/accounts", json={"selected": ids}
            )
    with step("A year of history is fetched"), client(CONNECTOR, user) as api:

        def all_ok() -> list[dict[str, Any]] | None:
            status: list[dict[str, Any]] = api.get(f"/v1/users/{user}/sync/status").json()
            done = status and all(s["state"] == "ok" and s["last_run"] for s in status)
            return status if done else None

        status = wait(all_ok)
        total = sum(s["last_run"]["transactions"] for s in status)
        print(f"  {len(status)} accounts ok, {total} bank lines fetched")
    with step("They cancel the option: syncing pauses, nothing imported is lost"):
        with client(ENTITLEMENTS, user) as api:
            api.delete(f"/v1/users/{user}/options/auto_import").raise_for_status()
        with client(CONNECTOR, user) as api:
            paused = wait(
                lambda: all(s["state"] == "paused" for s in api.get(f"/v1/users/{user}/sync/status").json())
            )
            print(f"  paused={paused}")
    print("\nSummary")
    for title, seconds in timings:
        print(f"  {seconds:6.1f} s  {title}")
    print("\nThe stack keeps running (`make status`, `make down`).")
    print(f"Aggregator sandbox: {settings.aggregator_base_url}   Ops dashboard: http://localhost:8090")
    return 0


if __name__ == "__main__":
    sys.exit(main())
