"""Local engines and service processes for tests and benchmarks (never used by the services themselves).

`Engines.start()` runs the project's own deploy/local scripts with free ports and a private data folder,
so a stack left running by `make up` is never touched. When KAFKA_BOOTSTRAP_SERVERS and MONGODB_URL
are both set, those engines are used instead and nothing is started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pymongo

from harness.waiting import wait_for
from shared.auth import issue_token
from shared.contract.topics import CATEGORIZATIONS, CONNECTIONS, ENTITLEMENTS, OPERATIONS, TRANSACTIONS_RAW
from shared.kafka import start_group_at_end
from shared.settings import DEV_JWT_SECRET

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Engines:
    kafka_bootstrap: str
    mongodb_url: str
    run_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, partitions: int = 6) -> Engines:
        external_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        external_mongo = os.environ.get("MONGODB_URL")
        if external_kafka and external_mongo:
            engines = cls(external_kafka, external_mongo)
            engines.create_topics(partitions)
            return engines
        run_dir = Path(tempfile.mkdtemp(prefix="engines-", dir=ensure_dir(ROOT / ".run")))
        ports = {
            "KAFKA_PORT": free_port(),
            "KAFKA_CONTROLLER_PORT": free_port(),
            "FERRETDB_PORT": free_port(),
            # empty: ferretdb.sh picks a private loopback port for this instance's debug server
            "FERRETDB_DEBUG_PORT": "",
            "FERRETDB_PG_PORT": free_port(),
        }
        env = {
            **os.environ,
            "BANKSYNC_RUN_DIR": str(run_dir),
            "KAFKA_TOPIC_PARTITIONS": str(partitions),
            **{k: str(v) for k, v in ports.items()},
        }
        engines = cls(
            kafka_bootstrap=f"127.0.0.1:{ports['KAFKA_PORT']}",
            mongodb_url=f"mongodb://127.0.0.1:{ports['FERRETDB_PORT']}",
            run_dir=run_dir,
            env=env,
        )
        try:
            engines.start_kafka()
            engines.start_ferretdb()
            engines.create_topics(partitions)
        except BaseException:
            engines.stop()
            raise
        return engines

    @property
    def owned(self) -> bool:
        return self.run_dir is not None

    def _script(self, script: str, action: str) -> None:
        subprocess.run([str(DEPLOY / script), action], env=self.env, check=True, timeout=180)

    def start_kafka(self) -> None:
        self._script("kafka.sh", "start")

    def stop_kafka(self) -> None:
        self._script("kafka.sh", "stop")

    def start_ferretdb(self) -> None:
        self._script("ferretdb.sh", "start")

    def stop_ferretdb(self) -> None:
        self._script("ferretdb.sh", "stop")

    def create_topics(self, partitions: int) -> None:
        subprocess.run(
            [
                sys.executable,
                str(DEPLOY / "probe.py"),
                "topics",
                self.kafka_bootstrap,
                "--partitions",
                str(partitions),
            ],
            check=True,
            timeout=60,
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if not self.owned:
            return
        for stop in (self.stop_ferretdb, self.stop_kafka):
            with contextlib.suppress(Exception):
                stop()
        assert self.run_dir is not None
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def service_env(self, **overrides: str) -> dict[str, str]:
        """Environment for a service process talking to these engines."""
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "MONGODB_URL": self.mongodb_url,
            **overrides,
        }


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ServiceProcess:
    """One service run as its own process, as `make up` runs it (`python -m services.<name>`).

    Fault tests can pause it (SIGSTOP: it keeps its sockets but answers nothing and sends no heartbeat, so
    Kafka's session timeout runs), resume it (SIGCONT), and kill it (`stop(kill=True)`: SIGKILL, nothing
    committed, no goodbye); `start()` again runs a new process on the same port with the same environment.
    """

    module: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Started and not exited (a paused process is running)."""
        return self.process is not None and self.process.poll() is None

    def start(self, wait_ready: bool = True, timeout: float = 60) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.paused = False
        log.close()
        if wait_ready:
            self.wait_until("/readyz", 200, timeout)
        return self

    def wait_until(self, path: str, status: int, timeout: float = 60) -> None:
        def answered() -> int | httpx.HTTPError:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(self.url + path, timeout=5).status_code
            except httpx.HTTPError as exc:
                return exc

        try:
            wait_for(
                answered,
                timeout,
                f"{self.module} {path} answering {status}",
                0.3,
                until=lambda got: got == status,
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pause(self) -> None:
        """SIGSTOP: frozen where it stands, until `resume`."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: it goes on from where it was frozen (its group may have moved its partitions since)."""
        self._signal(signal.SIGCONT)
        self.paused = False

    def _signal(self, signum: signal.Signals) -> None:
        if not self.running:
            raise RuntimeError(f"{self.module} on port {self.port} is not running")
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, kill: bool = False) -> None:
        self.request_stop(kill)
        self.wait_stopped()

    def request_stop(self, kill: bool = False) -> None:
        """SIGTERM (SIGKILL with `kill`) without waiting for the process to end."""
        if not self.running:
            return
        assert self.process is not None
        if kill:
            self.process.kill()
            return
        if self.paused:
            self.resume()  # a stopped process keeps a SIGTERM pending until it is continued
        self.process.terminate()

    def wait_stopped(self) -> None:
        """Until the process has ended: 20 s after a SIGTERM, then SIGKILL."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.paused = False


@contextlib.contextmanager
def running_service(module: str, engines: Engines, log_dir: Path, **env: str) -> Iterator[ServiceProcess]:
    port = free_port()
    proc = ServiceProcess(module, port, engines.service_env(**env), log_dir / f"{module}-{port}.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# --- a running slice of the platform, driven as a user would (tests, benchmarks) --------------------
# the stack's secrets between the connector and the sandbox: the webhooks' HMAC key, and the connector's
# client application at the sandbox (its redirect URI is the stack's connector's callback)
WEBHOOK_SECRET = "test-webhook-secret"
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-client-secret-0123456789abcdef"


class WebviewForm(HTMLParser):
    """The aggregator webview's login form: its action, hidden fields and the bank choices."""

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


def bearer(user: str, scopes: str = "") -> dict[str, str]:
    """The Authorization header of a development token for `user` (with `scopes`)."""
    return {"Authorization": f"Bearer {issue_token(DEV_JWT_SECRET, user, scopes=scopes)}"}


def user_client(base_url: str, user: str, scopes: str = "", timeout: float = 30) -> httpx.Client:
    """A client of one service calling as `user` (with `scopes`)."""
    return httpx.Client(base_url=base_url, headers=bearer(user, scopes), timeout=timeout)


@dataclass
class Stack:
    engines: Engines
    log_dir: Path
    database: str
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    # environment every process of the stack gets (a process's own settings win)
    env: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return self.processes[name].url

    def start(self, name: str, module: str, port: int | None = None, **env: str) -> ServiceProcess:
        """The first process of a service (more of it: `add_replica`)."""
        port = port or free_port()
        if module.startswith("services.") and "ERASURES_GROUP_ID" not in env:
            # erasure requests of this stack only, from now on (the topic holds every earlier run's); one
            # group per service, as in production (`<service>-erasures`): its replicas share it
            env["ERASURES_GROUP_ID"] = f"{name}-erasures-{self.database}"
            start_groups_at_end(self.engines, {env["ERASURES_GROUP_ID"]: ENTITLEMENTS})
        proc = ServiceProcess(
            module, port, self.engines.service_env(**{**self.env, **env}), self.log_dir / f"{name}-{port}.log"
        )
        self.processes[name] = proc
        proc.start(wait_ready=module != "sandbox")
        if module == "sandbox":
            proc.wait_until("/2.0/connectors", 200)
        return proc

    def add_replica(self, name: str, *, wait_ready: bool = True) -> ServiceProcess:
        """One more process of the service started as `name`, registered as `f"{name}-{k}"` (k = 2, 3...)
        on a port of its own, with the first one's environment: the same databases and consumer groups
        (erasures included), so the replicas split the partitions. `SERVICE_REPLICA` is k."""
        first = self.processes[name]
        if not first.module.startswith("services."):
            raise ValueError(f"{name} runs {first.module}: only services run as replicas")
        k = max((replica_number(name, key) or 1 for key in self.processes), default=1) + 1
        port = free_port()
        replica = f"{name}-{k}"
        proc = ServiceProcess(
            first.module,
            port,
            {**first.env, "SERVICE_REPLICA": str(k)},
            self.log_dir / f"{replica}-{port}.log",
        )
        self.processes[replica] = proc
        proc.start(wait_ready=wait_ready)
        return proc

    def replica_names(self, name: str) -> list[str]:
        """`name` and its replicas' names, in the order they were added (stopped ones included)."""
        numbered = sorted((k, key) for key in self.processes if (k := replica_number(name, key)) is not None)
        return [name, *(key for _, key in numbered)]

    def replicas(self, name: str) -> list[ServiceProcess]:
        """Every process of the service started as `name`, the first one first (stopped ones included)."""
        return [self.processes[key] for key in self.replica_names(name)]

    def scale(self, names: Iterable[str], replicas: int, timeout: float = 120) -> list[ServiceProcess]:
        """Each service of `names` brought to `replicas` processes (stopped ones count): the new ones
        started at once, then waited for until ready. Returns the new processes."""
        added = [
            self.add_replica(name, wait_ready=False)
            for name in names
            for _ in range(replicas - len(self.replica_names(name)))
        ]
        for proc in added:
            proc.wait_until("/readyz", 200, timeout)
        return added

    def stop(self, name: str, kill: bool = False) -> None:
        self.processes[name].stop(kill=kill)

    def stop_all(self) -> None:
        """Every process asked to stop at once, then each waited for."""
        for proc in self.processes.values():
            with contextlib.suppress(Exception):
                proc.request_stop()
        for proc in self.processes.values():
            with contextlib.suppress(Exception):
                proc.wait_stopped()

    def client(self, name: str, user: str, scopes: str = "") -> httpx.Client:
        return user_client(self.url(name), user, scopes)

    def sandbox(self) -> httpx.Client:
        return httpx.Client(base_url=self.url("sandbox"), timeout=30)

    def billing(self, entitlements: str = "entitlements") -> httpx.Client:
        """Entitlements as Budgetfacile's billing backend calls it (the only caller that changes plans)."""
        return self.client(entitlements, "billing-backend", scopes="billing")

    def entitle(
        self,
        user: str,
        plan: str = "standard",
        auto_import: bool = True,
        *,
        entitlements: str = "entitlements",
    ) -> None:
        with self.billing(entitlements) as api:
            if plan != "standard":
                api.put(f"/v1/users/{user}/plan", json={"plan": plan}).raise_for_status()
            if auto_import:
                api.post(f"/v1/users/{user}/options/auto_import").raise_for_status()

    def link_bank(
        self,
        user: str,
        login: str = "demo",
        bank_index: int = 0,
        password: str = "secret-pw",
        *,
        connector: str = "connector",
    ) -> dict[str, Any]:
        """Activation (at the `connector` replica), then the webview as a browser would fill it, then the
        callback (the sandbox's redirect URI: the first connector's)."""
        with self.client(connector, user) as api:
            activation = api.post(f"/v1/users/{user}/sync/activate")
            activation.raise_for_status()
        linked = browse_webview(activation.json()["connect_url"], login, password, bank_index)
        linked.raise_for_status()
        result: dict[str, Any] = linked.json()
        return result

    def reconnect_bank(self, user: str, connection_id: str, login: str = "demo") -> httpx.Response:
        """The reconnect webview of one connection, as a browser fills it; the callback's answer."""
        with self.client("connector", user) as api:
            offered = api.post(f"/v1/users/{user}/connections/{connection_id}/reconnect")
            offered.raise_for_status()
        return browse_webview(offered.json()["connect_url"], login, "new-secret-pw", None)

    def select_all(self, user: str, connection: dict[str, Any], *, connector: str = "connector") -> list[str]:
        ids = [a["aggregator_account_id"] for a in connection["accounts"]]
        with self.client(connector, user) as api:
            api.put(
                f"/v1/users/{user}/connections/{connection['connection_id']}/accounts", json={"selected": ids}
            ).raise_for_status()
        return ids

    def sync(self, user: str, *, connector: str = "connector") -> str:
        with self.client(connector, user) as api:
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

        def finished(status: list[dict[str, Any]]) -> bool:
            return bool(status) and all(
                s["last_run"] and s["last_run"]["sync_run_id"] == run_id and s["state"] != "syncing"
                for s in status
            )

        return wait_for(lambda: self.status(user), timeout, f"run {run_id} finished", 0.3, until=finished)


def replica_number(name: str, key: str) -> int | None:
    """k when `key` names replica k of `name` (`f"{name}-{k}"`, k ≥ 2); None otherwise."""
    match = re.fullmatch(rf"{re.escape(name)}-([2-9]|[1-9][0-9]+)", key)
    return int(match.group(1)) if match else None


def browse_webview(connect_url: str, login: str, password: str, bank_index: int | None) -> httpx.Response:
    """The aggregator's webview as a browser fills it (the bank at `bank_index`, none on a reconnect
    page, which names its bank), then back to the connector's callback: its answer."""
    back = fill_webview(connect_url, login, password, bank_index)
    with httpx.Client(timeout=30, follow_redirects=False) as browser:
        return browser.get(back)


def fill_webview(connect_url: str, login: str, password: str, bank_index: int | None) -> str:
    """The aggregator's webview as a browser fills it, up to its redirect: where it sends the browser
    back (the connector's callback with `connection_id`, `code` and `state`), not followed."""
    with httpx.Client(timeout=30, follow_redirects=False) as browser:
        page = browser.get(connect_url)
        page.raise_for_status()
        form = WebviewForm()
        form.feed(page.text)
        action = httpx.URL(connect_url).join(form.action or connect_url)
        chosen = {"connector_id": form.banks[bank_index]} if bank_index is not None else {}
        posted = browser.post(action, data={**form.fields, **chosen, "login": login, "password": password})
        assert posted.status_code == 303, posted.text
        back: str = posted.headers["location"]
        assert re.search(r"[?&]connection_id=", back)
        return back


def new_user(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def connector_stack(
    engines: Engines,
    log_dir: Path,
    database: str,
    *,
    common_env: dict[str, str] | None = None,
    replicas: int = 1,
    **connector_env: str,
) -> Iterator[Stack]:
    """The sandbox, entitlements and the connector; `replicas` processes of each service."""
    stack = Stack(engines, log_dir, database, env=dict(common_env or {}))
    try:
        start_connector_side(stack, connector_env)
        stack.scale(["entitlements", "connector"], replicas)
        yield stack
    finally:
        stack.stop_all()


def start_connector_side(stack: Stack, connector_env: dict[str, str]) -> None:
    """The sandbox, entitlements and the connector of `connector_stack` (one process each)."""
    database = stack.database
    importer_events_group = f"connector-importer-events-{database}"
    start_groups_at_end(stack.engines, {importer_events_group: OPERATIONS})
    connector_port = free_port()
    sandbox = stack.start(
        "sandbox",
        "sandbox",
        SANDBOX_WEBHOOK_URL=f"http://127.0.0.1:{connector_port}/v1/webhooks/aggregator",
        SANDBOX_WEBHOOK_SECRET=WEBHOOK_SECRET,
        SANDBOX_CLIENT_ID=CLIENT_ID,
        SANDBOX_CLIENT_SECRET=CLIENT_SECRET,
        SANDBOX_REDIRECT_URIS=f"http://127.0.0.1:{connector_port}/v1/callback",
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
        AGGREGATOR_CLIENT_ID=CLIENT_ID,
        AGGREGATOR_CLIENT_SECRET=CLIENT_SECRET,
        AGGREGATOR_RETRY_BUDGET_S="6",
        AGGREGATOR_RETRY_BASE_S="0.05",
        SYNC_WORKERS_GROUP=f"connector-sync-{database}",
        ENTITLEMENTS_GROUP=f"connector-entitlements-{database}",
        IMPORTER_EVENTS_GROUP=importer_events_group,
        NIGHTLY_ENABLED="false",
        **connector_env,
    )


def private_consumer_groups(engines: Engines, prefix: str) -> dict[str, str]:
    """The importer's and the categorizer's consumer-group settings, private to `prefix`.

    Each group starts at its topic's current end, so records that earlier runs left on the same Kafka
    (poison records included) are not read again.
    """
    groups = private_consumer_groups_of(prefix)
    topics = {
        "IMPORTER_GROUP_ID": TRANSACTIONS_RAW,
        "IMPORTER_CATEGORIZATIONS_GROUP_ID": CATEGORIZATIONS,
        "IMPORTER_CONNECTIONS_GROUP_ID": CONNECTIONS,
        "CATEGORIZER_GROUP_ID": OPERATIONS,
    }
    start_groups_at_end(engines, {group: topics[name] for name, group in groups.items()})
    return groups


def start_groups_at_end(engines: Engines, groups: dict[str, str]) -> None:
    """Commits each consumer group (group → topic) at its topic's current end."""

    async def start_groups() -> None:
        for group, topic in groups.items():
            await start_group_at_end(engines.kafka_bootstrap, group, [topic])

    # from a thread: the caller may be inside an event loop (benchmarks and async tests are)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, start_groups()).result()


def private_consumer_groups_of(prefix: str) -> dict[str, str]:
    """The setting → consumer-group names that `private_consumer_groups` starts (nothing started)."""
    return {
        "IMPORTER_GROUP_ID": f"{prefix}-imp",
        "IMPORTER_CATEGORIZATIONS_GROUP_ID": f"{prefix}-imp-cat",
        "IMPORTER_CONNECTIONS_GROUP_ID": f"{prefix}-imp-conn",
        "CATEGORIZER_GROUP_ID": f"{prefix}-cat",
    }


@contextlib.contextmanager
def pipeline_stack(
    engines: Engines,
    log_dir: Path,
    database: str,
    *,
    common_env: dict[str, str] | None = None,
    replicas: int = 1,
    **connector_env: str,
) -> Iterator[Stack]:
    """The whole pipeline: sandbox, entitlements, connector, importer and categorizer, `replicas`
    processes of each service (`Stack.replicas`; the sandbox stays single).

    Databases and consumer groups are private to `database`; the importer's and the categorizer's
    groups start at the topics' current ends, so earlier runs on the same Kafka are not read again.
    """
    stack = Stack(engines, log_dir, database, env=dict(common_env or {}))
    try:
        start_connector_side(stack, connector_env)
        env = private_consumer_groups(engines, database)
        stack.start(
            "importer",
            "services.importer",
            MONGODB_DATABASE=f"{database}_imp",
            IMPORTER_GROUP_ID=env["IMPORTER_GROUP_ID"],
            IMPORTER_CATEGORIZATIONS_GROUP_ID=env["IMPORTER_CATEGORIZATIONS_GROUP_ID"],
            IMPORTER_CONNECTIONS_GROUP_ID=env["IMPORTER_CONNECTIONS_GROUP_ID"],
        )
        stack.start(
            "categorizer",
            "services.categorizer",
            MONGODB_DATABASE=f"{database}_cat",
            CATEGORIZER_GROUP_ID=env["CATEGORIZER_GROUP_ID"],
        )
        # the replicas of the four services at once: a process joining its groups waits for their members
        stack.scale(["entitlements", "connector", "importer", "categorizer"], replicas)
        yield stack
    finally:
        stack.stop_all()


@contextlib.contextmanager
def importer_alone(
    engines: Engines, log_dir: Any, database: str, groups_prefix: str
) -> Iterator[ServiceProcess]:
    """The importer as its own process on the real engines, with a fresh database and consumer groups of
    its own (the tests publish what the connector would, and read what the importer says)."""
    pymongo.MongoClient(engines.mongodb_url).drop_database(database)
    groups = private_consumer_groups(engines, f"{groups_prefix}-{uuid.uuid4().hex[:6]}")
    with running_service("services.importer", engines, log_dir, MONGODB_DATABASE=database, **groups) as proc:
        yield proc


@contextlib.contextmanager
def categorizer_alone(engines: Engines, log_dir: Any, prefix: str, **env: str) -> Iterator[ServiceProcess]:
    """The categorizer as its own process on the real engines, with a fresh database and consumer group
    (and the settings `env` gives)."""
    database = f"{prefix}_{uuid.uuid4().hex[:6]}"
    groups = private_consumer_groups(engines, database)
    with running_service(
        "services.categorizer",
        engines,
        log_dir,
        MONGODB_DATABASE=database,
        CATEGORIZER_GROUP_ID=groups["CATEGORIZER_GROUP_ID"],
        **env,
    ) as proc:
        yield proc
