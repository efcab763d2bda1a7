"""A running slice of the platform for real-stack tests: the sandbox, services as processes, and
small helpers that act as a user would (the webview form, the APIs) and wait for outcomes."""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx

from shared.auth import issue_token
from shared.devstack import Engines, ServiceProcess, free_port
from shared.settings import DEV_JWT_SECRET

WEBHOOK_SECRET = "test-webhook-secret"


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}
        self.banks: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = values.get("action", "")
        if tag == "input" and values.get("type") == "hidden":
            self.fields[values["name"]] = values.get("value", "")
        if tag == "input" and values.get("name") == "connector_id" and values.get("type") == "radio":
            self.banks.append(values["value"])


@dataclass
class Stack:
    engines: Engines
    log_dir: Path
    database: str
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return self.processes[name].url

    def start(self, name: str, module: str, port: int | None = None, **env: str) -> ServiceProcess:
        port = port or free_port()
        proc = ServiceProcess(
            module, port, self.engines.service_env(**env), self.log_dir / f"{name}-{port}.log"
        )
        self.processes[name] = proc
        proc.start(wait_ready=module != "sandbox")
        if module == "sandbox":
            proc.wait_until("/2.0/connectors", 200)
        return proc

    def stop(self, name: str, kill: bool = False) -> None:
        self.processes[name].stop(kill=kill)

    def stop_all(self) -> None:
        for proc in self.processes.values():
            with contextlib.suppress(Exception):
                proc.stop()

    def client(self, name: str, user: str, scopes: str = "") -> httpx.Client:
        token = issue_token(DEV_JWT_SECRET, user, scopes=scopes)
        return httpx.Client(base_url=self.url(name), headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def sandbox(self) -> httpx.Client:
        return httpx.Client(base_url=self.url("sandbox"), timeout=30)

    def entitle(self, user: str, plan: str = "standard", auto_import: bool = True) -> None:
        with self.client("entitlements", user) as api:
            if plan != "standard":
                api.put(f"/v1/users/{user}/plan", json={"plan": plan}).raise_for_status()
            if auto_import:
                api.post(f"/v1/users/{user}/options/auto_import").raise_for_status()

    def link_bank(self, user: str, login: str = "demo", bank_index: int = 0) -> dict[str, Any]:
        """Activation, then the webview as a browser would fill it, then the callback."""
        with self.client("connector", user) as api:
            activation = api.post(f"/v1/users/{user}/sync/activate")
            activation.raise_for_status()
        connect_url = activation.json()["connect_url"]
        with httpx.Client(timeout=30, follow_redirects=False) as browser:
            page = browser.get(connect_url)
            page.raise_for_status()
            form = _FormParser()
            form.feed(page.text)
            action = httpx.URL(connect_url).join(form.action or connect_url)
            posted = browser.post(
                action,
                data={
                    **form.fields,
                    "connector_id": form.banks[bank_index],
                    "login": login,
                    "password": "secret-pw",
                },
            )
            assert posted.status_code == 303, posted.text
            back = posted.headers["location"]
            assert re.search(r"[?&]connection_id=", back)
            linked = browser.get(back)
            linked.raise_for_status()
            result: dict[str, Any] = linked.json()
            return result

    def select_all(self, user: str, connection: dict[str, Any]) -> list[str]:
        ids = [a["aggregator_account_id"] for a in connection["accounts"]]
        with self.client("connector", user) as api:
            api.put(
                f"/v1/users/{user}/connections/{connection['connection_id']}/accounts", json={"selected": ids}
            ).raise_for_status()
        return ids

    def sync(self, user: str) -> str:
        with self.client("connector", user) as api:
            answer = api.post(f"/v1/users/{user}/sync")
            assert answer.status_code == 202, answer.text
            run_id: str = answer.json()["sync_run_id"]
            return run_id

    def status(self, user: str) -> list[dict[str, Any]]:
        with self.client("connector", user) as api:
            answer = api.get(f"/v1/users/{user}/sync/status")
            answer.raise_for_status()
            result: list[dict[str, Any]] = answer.json()
            return result

    def wait_run(self, user: str, run_id: str, timeout: float = 90) -> list[dict[str, Any]]:
        """Until every selected account's last run is `run_id` and finished."""
        deadline = time.monotonic() + timeout
        status: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            status = self.status(user)
            if status and all(
                s["last_run"] and s["last_run"]["sync_run_id"] == run_id and s["state"] != "syncing"
                for s in status
            ):
                return status
            time.sleep(0.3)
        raise TimeoutError(f"run {run_id} did not finish: {status}")


def new_user(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def connector_stack(engines: Engines, log_dir: Path, database: str, **connector_env: str) -> Iterator[Stack]:
    stack = Stack(engines, log_dir, database)
    try:
        connector_port = free_port()
        sandbox = stack.start(
            "sandbox",
            "sandbox",
            SANDBOX_WEBHOOK_URL=f"http://127.0.0.1:{connector_port}/v1/webhooks/aggregator",
            SANDBOX_WEBHOOK_SECRET=WEBHOOK_SECRET,
        )
        stack.start("entitlements", "services.entitlements", MONGODB_DATABASE=f"{database}_ent")
        stack.start(
            "connector",
            "services.connector",
            port=connector_port,
            MONGODB_DATABASE=f"{database}_conn",
            AGGREGATOR_BASE_URL=sandbox.url,
            ENTITLEMENTS_URL=stack.url("entitlements"),
            CONNECTOR_URL=f"http://127.0.0.1:{connector_port}",
            AGGREGATOR_WEBHOOK_SECRET=WEBHOOK_SECRET,
            AGGREGATOR_RETRY_BUDGET_S="6",
            AGGREGATOR_RETRY_BASE_S="0.05",
            SYNC_WORKERS_GROUP=f"connector-sync-{database}",
            ENTITLEMENTS_GROUP=f"connector-entitlements-{database}",
            NIGHTLY_ENABLED="false",
            **connector_env,
        )
        yield stack
    finally:
        stack.stop_all()
