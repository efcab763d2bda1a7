"""The live dashboard in headless Chromium, against real Kafka and the real connector and sandbox.

Chromium is driven over the DevTools protocol (a websocket; `websockets` comes with uvicorn): the page
keeps a server-sent-events stream open, which `--dump-dom`/`--screenshot` with a virtual-time budget
wait on forever, while DevTools lets the test watch the live DOM as the sync runs and take the
screenshot at the end. `BANKSYNC_UPDATE_SCREENSHOT=1` copies the screenshot to docs/dashboard.png.
The browser logs in as an operator would: the login page, an ops token pasted, the session cookie.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from websockets.asyncio.client import ClientConnection, connect

from harness.devstack import ROOT, ServiceProcess, Stack, connector_stack, free_port, new_user
from harness.waiting import wait_for, wait_for_async
from shared.auth import TokenPolicy
from shared.contract.envelope import CLOUDEVENTS_CONTENT_TYPE, CloudEvent
from shared.contract.payloads import Operation, OperationCategorized, OperationEvent
from shared.contract.topics import CATEGORIZATIONS, OPERATIONS
from tests.cli import run_banksync

pytestmark = pytest.mark.engines

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
WIDTH, HEIGHT = 1280, 900
UPDATE_SCREENSHOT = os.environ.get("BANKSYNC_UPDATE_SCREENSHOT") == "1"
# the dashboard's own secret: its tokens are the stack's, whatever the test process's environment says
DASHBOARD_SECRET = "dashboard-integration-secret-0123456789abcdef"
TOKENS = TokenPolicy(DASHBOARD_SECRET)
OPS_HEADERS = {"Authorization": f"Bearer {TOKENS.issue('operator', scopes='ops')}"}


# --- a small DevTools client ---------------------------------------------------------------------
class Page:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.last_id = 0
        self.lock = asyncio.Lock()  # one call at a time: the test and its DOM watcher share the page

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        async with self.lock:
            self.last_id += 1
            await self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
            while True:
                message = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
                if message.get("id") == self.last_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message["result"]
                    return result

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, within_s: float = 30) -> Any:
        """Until `expression` is truthy (an exception, e.g. while the page loads, counts as not yet)."""
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        try:
            return await wait_for_async(
                lambda: self.eval(guarded), within_s, f"the page: {expression!r}", 0.2
            )
        except TimeoutError as exc:
            body = await self.eval("document.body.innerText")
            raise TimeoutError(f"{exc}; it shows:\n{body[:3000]}") from None

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])


@contextlib.asynccontextmanager
async def chromium_page(url: str, profile: Path) -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    port = free_port()
    browser = await asyncio.create_subprocess_exec(
        *[
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={port}",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with httpx.AsyncClient(timeout=2) as http:

            async def page_target() -> dict[str, Any] | None:
                assert browser.returncode is None, "chromium exited at start"
                with contextlib.suppress(httpx.HTTPError):
                    pages = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
                    return next((p for p in pages if p["type"] == "page"), None)
                return None

            target = await wait_for_async(page_target, 30, "chromium's DevTools page", 0.1)
        async with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            page = Page(ws)
            await page.call(
                "Emulation.setDeviceMetricsOverride",
                width=WIDTH,
                height=HEIGHT,
                deviceScaleFactor=1,
                mobile=False,
            )
            await page.call("Page.navigate", url=url)
            yield page
    finally:
        # chromium and its helpers share the session started above: end that group, nothing else
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(browser.wait(), 10)
        except TimeoutError:
            os.killpg(browser.pid, signal.SIGKILL)
            await asyncio.wait_for(browser.wait(), 10)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- the stack -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(engines, log_dir) -> Iterator[Stack]:
    # a database of its own: aggregator ids restart with each sandbox, the connector's data must too
    with connector_stack(engines, log_dir, f"opsdash{uuid.uuid4().hex[:6]}") as running:
        yield running


@pytest.fixture(scope="module")
def dashboard(engines, log_dir) -> Iterator[ServiceProcess]:
    port = free_port()
    env = engines.service_env(BANKSYNC_JWT_SECRET=DASHBOARD_SECRET)
    process = ServiceProcess("ops.dashboard", port, env, log_dir / f"dashboard-{port}.log")
    process.start()  # ready once Kafka answered its first poll
    try:
        yield process
    finally:
        process.stop()


def rows_of(user: str) -> str:
    return (
        "JSON.stringify([...document.querySelectorAll('tr.sync')]"
        f".filter(r => r.dataset.key.startsWith({json.dumps(user + ':')}))"
        ".map(r => ({key: r.dataset.key, state: r.dataset.state, run: r.dataset.run,"
        " lines: r.dataset.lines === undefined ? null : Number(r.dataset.lines),"
        " code: r.querySelector('td.code').textContent})))"
    )


async def page_rows(page: Page, user: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(await page.eval(rows_of(user)))
    return rows


def link_savings(stack: Stack, user: str, bank_state: str | None = None) -> list[str]:
    """Entitle, link a demo bank and select its savings accounts (short histories), which starts their
    first sync; with `bank_state`, the bank is put in that error state first, so that sync fails."""
    stack.entitle(user)
    connection = stack.link_bank(user)
    if bank_state is not None:
        with stack.sandbox() as sandbox:
            sandbox.post(
                f"/sandbox/connections/{connection['connection_id']}/state", json={"state": bank_state}
            ).raise_for_status()
    chosen = [a["aggregator_account_id"] for a in connection["accounts"] if a["type"] == "savings"]
    chosen = chosen or [connection["accounts"][0]["aggregator_account_id"]]
    with stack.client("connector", user) as api:
        api.put(
            f"/v1/users/{user}/connections/{connection['connection_id']}/accounts", json={"selected": chosen}
        ).raise_for_status()
    return chosen


def wait_synced(stack: Stack, user: str, accounts: list[str], within_s: float = 90) -> list[dict[str, Any]]:
    status: list[dict[str, Any]] = wait_for(
        lambda: [s for s in stack.status(user) if s["aggregator_account_id"] in accounts],
        within_s,
        f"the first sync of {user} finished",
        0.3,
        until=lambda status: (
            len(status) == len(accounts) and all(s["last_run"] and s["state"] != "syncing" for s in status)
        ),
    )
    return status


async def publish_operations(bootstrap: str, user: str, imported: int, categories: list[str | None]) -> None:
    """operation.imported and operation.categorized as the importer and categorizer publish them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        headers = [("content-type", CLOUDEVENTS_CONTENT_TYPE.encode())]
        for i in range(imported):
            operation = Operation(
                id=f"op-{i}",
                account_id="acc",
                date=dt.date(2026, 1, 1 + i % 28),
                amount="-12.50",
                currency="EUR",
                memo=f"CB BOULANGERIE {i}",
                label="Boulangerie",
                status="booked",
                source="bank",
            )
            event = CloudEvent.new(
                service="importer",
                name="operation.imported",
                data=OperationEvent(user_id=user, operation=operation).model_dump(mode="json"),
                user_id=user,
                correlation_id="dash-test",
            )
            await producer.send(
                OPERATIONS, event.to_json_bytes(), key=f"{user}:acc".encode(), headers=headers
            )
        for i, category in enumerate(categories):
            categorized = OperationCategorized(
                user_id=user,
                account_id="acc",
                operation_id=f"op-{i}",
                payee=None,
                category=category,
                source="global" if category else None,
                keyword=None,
            )
            event = CloudEvent.new(
                service="categorizer",
                name="operation.categorized",
                data=categorized.model_dump(mode="json"),
                user_id=user,
                correlation_id="dash-test",
            )
            await producer.send(
                CATEGORIZATIONS, event.to_json_bytes(), key=f"{user}:acc".encode(), headers=headers
            )
        await producer.flush()
    finally:
        await producer.stop()


# --- tests ---------------------------------------------------------------------------------------
async def test_the_dashboard_refuses_whoever_is_not_ops(dashboard):
    user = {"Authorization": f"Bearer {TOKENS.issue('u1')}"}
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=10) as http:
        for path in ("/", "/api/snapshot", "/events"):
            assert (await http.get(path)).status_code == 401, path
            assert (await http.get(path, headers=user)).status_code == 403, path
        stream = await http.get("/events", headers={"Accept": "text/event-stream"})
        assert (stream.status_code, stream.json()["code"]) == (401, "unauthorized")
        page = await http.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 401
        assert 'action="/login"' in page.text
        # a token signed with the services' development secret is not this dashboard's
        elsewhere = TokenPolicy("another-secret-0123456789abcdef0123456789").issue("x", scopes="ops")
        assert (
            await http.get("/api/snapshot", headers={"Authorization": f"Bearer {elsewhere}"})
        ).status_code == 401


async def test_the_dashboard_streams_snapshots_and_serves_its_documents(dashboard):
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=10) as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        assert (await http.get("/readyz")).status_code == 200
        spec = (await http.get("/asyncapi.json")).json()
        assert spec["asyncapi"].startswith("3.")
        async with http.stream("GET", "/events", headers=OPS_HEADERS) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            seen = ""
            async for chunk in stream.aiter_text():
                seen += chunk
                if "\n\n" in seen and "data:" in seen:
                    break
        assert "event: snapshot" in seen
        data = json.loads(next(line[5:] for line in seen.splitlines() if line.startswith("data:")))
        assert data["kafka"]["state"] == "connected"
        assert {"syncs", "accounts", "per_minute", "categorization", "dlq", "lag"} <= set(data)


async def test_the_page_shows_syncs_appear_succeed_and_fail_across_a_connector_restart(
    stack, dashboard, engines, tmp_path
):
    if CHROMIUM is None:
        pytest.skip(
            "chromium is not installed (Debian: apt-get install -y chromium): the browser test needs it"
        )
    user, failing = new_user("dash"), new_user("dashfail")
    async with chromium_page(dashboard.url + "/", tmp_path / "profile") as page:
        # not logged in: the login page; an ops token pasted into it opens the session
        await page.wait_for("!!document.querySelector('form#login textarea[name=token]')")
        assert await page.eval("!!document.getElementById('syncs')") is False
        token = TOKENS.issue("operator", scopes="ops", ttl_s=3600)
        await page.eval(
            f"document.querySelector('#token').value = {json.dumps(token)};"
            " document.querySelector('form#login').requestSubmit(); true"
        )
        await page.wait_for("!!document.getElementById('syncs')")
        assert await page.eval("document.cookie") == ""  # HttpOnly: no script reads the session
        assert "operator" in await page.eval("document.getElementById('operator').textContent")
        await page.wait_for(
            "document.body.dataset.rendered === 'true'"
            " && document.getElementById('stream').textContent === 'live'"
        )
        assert await page.eval("document.getElementById('kafka').textContent") == "connected"
        assert await page_rows(page, user) == []
        succeeded_before = int(await page.eval("document.getElementById('succeeded').textContent"))

        # watch the live DOM while the first sync runs
        seen_states: set[str] = set()

        async def watch() -> None:
            while True:
                seen_states.update(row["state"] for row in await page_rows(page, user))
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        try:
            chosen = await asyncio.to_thread(link_savings, stack, user)
            status = await asyncio.to_thread(wait_synced, stack, user, chosen)
            accounts = {s["aggregator_account_id"]: s for s in status}
            keys = json.dumps(sorted(f"{user}:{a}" for a in accounts))
            await page.wait_for(
                f'{keys}.every(k => document.querySelector(`tr.sync[data-key="${{k}}"][data-state="ok"]`))'
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        rows = {row["key"]: row for row in await page_rows(page, user)}
        assert set(rows) == {f"{user}:{a}" for a in accounts}
        for account, state in accounts.items():
            row = rows[f"{user}:{account}"]
            assert row["state"] == "ok"
            assert row["lines"] == state["last_run"]["transactions"]
            assert row["run"] == state["last_run"]["sync_run_id"]
        assert sum(row["lines"] for row in rows.values()) > 0
        # what the page went through: possibly `syncing` (if the watcher caught it), then `ok`
        seen_states |= {row["state"] for row in rows.values()}
        assert seen_states <= {"syncing", "ok"}
        succeeded_after = int(await page.eval("document.getElementById('succeeded').textContent"))
        assert succeeded_after >= succeeded_before + len(accounts)

        # the bank refuses the password on the next sync: the rows turn to errors, counted by code
        failing_accounts = await asyncio.to_thread(link_savings, stack, failing, "wrongpass")
        failed = await asyncio.to_thread(wait_synced, stack, failing, failing_accounts)
        assert {s["state"] for s in failed} == {"action_needed"}
        await page.wait_for(
            f"JSON.parse({rows_of(failing)}).length > 0 && JSON.parse({rows_of(failing)})"
            ".every(r => r.state === 'error' && r.code === 'wrongpass')"
        )
        assert await page.wait_for("!!document.querySelector('#failures tr[data-code=\"wrongpass\"]')")

        # the connector restarts; the dashboard (Kafka only) goes on, and the next sync shows up
        await asyncio.to_thread(stack.stop, "connector")
        await asyncio.to_thread(stack.processes["connector"].start)
        again = await asyncio.to_thread(stack.sync, user)
        await asyncio.to_thread(stack.wait_run, user, again, 60)
        await page.wait_for(
            f"JSON.parse({rows_of(user)}).every(r => r.run === {json.dumps(again)} && r.state === 'ok')"
        )
        assert await page.eval("document.getElementById('stream').textContent") == "live"

        # lines imported and the categorisation rate (importer and categorizer events on their topics)
        await publish_operations(
            engines.kafka_bootstrap, new_user("dashops"), 12, ["alimentation", None, "transport"]
        )
        await page.wait_for("Number(document.getElementById('imported-min').textContent) >= 12")
        # events keep flowing: compare the page with a snapshot until both have caught up with each other
        async with httpx.AsyncClient(base_url=dashboard.url, headers=OPS_HEADERS) as http:

            async def rates() -> tuple[dict[str, Any], str, str]:
                categorization = (await http.get("/api/snapshot")).json()["categorization"]
                shown_rate = await page.wait_for(
                    "document.getElementById('cat-rate').textContent.includes('%') && "
                    "document.getElementById('cat-rate').textContent"
                )
                return categorization, shown_rate, f"{round(categorization['rate'] * 1000) / 10:g} %"

            categorization, shown_rate, expected = await wait_for_async(
                rates, 20, "the page's rate, the snapshot's", 0.5, until=lambda r: r[1] == r[2]
            )
        assert categorization["total"] >= 3
        assert shown_rate == expected
        assert await page.wait_for("Number(document.getElementById('dlq-waiting').textContent) >= 0")
        assert await page.wait_for("document.querySelectorAll('#lag tr[data-group]').length > 0")

        if UPDATE_SCREENSHOT:
            await busier_page_for_the_docs(stack, engines, page)
        shot = await page.screenshot()
    assert png_size(shot) == (WIDTH, HEIGHT)
    assert len(shot) > 30_000, "a blank page compresses to a few KiB"
    (tmp_path / "dashboard.png").write_bytes(shot)
    if UPDATE_SCREENSHOT:
        (ROOT / "docs" / "dashboard.png").write_bytes(shot)


async def busier_page_for_the_docs(stack: Stack, engines, page: Page) -> None:
    """Only with BANKSYNC_UPDATE_SCREENSHOT=1: a few more users, every account, so the picture shows a
    realistic mix (first syncs of a year of history, a failure, imports and categorisations)."""
    users = [new_user("demo") for _ in range(3)]
    for index, user in enumerate(users):
        await asyncio.to_thread(stack.entitle, user)
        connection = await asyncio.to_thread(stack.link_bank, user, "demo", index + 1)
        await asyncio.to_thread(stack.select_all, user, connection)
    await publish_operations(
        engines.kafka_bootstrap, new_user("demo"), 40, ["alimentation"] * 30 + [None] * 9
    )
    await page.wait_for("Number(document.getElementById('in-progress').textContent) > 0", within_s=20)
    await asyncio.sleep(1.5)


async def test_status_shows_a_users_connections_accounts_and_last_syncs(stack, engines):
    user = new_user("status")
    chosen = await asyncio.to_thread(link_savings, stack, user)
    synced = await asyncio.to_thread(wait_synced, stack, user, chosen)
    env = engines.service_env(CONNECTOR_URL=stack.url("connector"))

    async def banksync(*args: str) -> tuple[int, str, str]:
        return await run_banksync(*args, env=env)

    code, out, err = await banksync("status", "--user", user)
    assert code == 0, err
    assert out.startswith(f"user {user}\n")
    assert "state ok" in out
    for state in synced:
        row = next(
            line for line in out.splitlines() if line.strip().startswith(state["aggregator_account_id"])
        )
        assert " ok " in row
        assert state["last_run"]["sync_run_id"] in row
        assert f" {state['last_run']['transactions']} " in row

    code, out, _ = await banksync("status", "--user", user, "--json")
    assert code == 0
    answer = json.loads(out)
    assert [s["aggregator_account_id"] for s in answer["sync_status"]] == [
        s["aggregator_account_id"] for s in synced
    ]

    # a token signed with another secret is refused by the connector: exit 1, with the problem's words
    env = {**env, "BANKSYNC_JWT_SECRET": "not-the-secret-of-this-stack-0123456789"}
    code, _, err = await banksync("status", "--user", user)
    assert code == 1
    assert "401" in err
