"""What the ops command asks the services over HTTP, with an `ops`-scope token: the connector's view
of a user (connections, accounts, syncs) and the importer's replay of one account."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from ops.errors import BadArgument, OpsError
from ops.textfmt import table
from services.importer.replay import replay_account
from shared.auth import OPS_SCOPE, USER_ID_PATTERN, USER_ID_RULE, TokenPolicy
from shared.settings import ServiceSettings

OPS_SUBJECT = "banksync-ops"
FINISHED_STATES = frozenset({"done", "succeeded", "completed", "finished", "ok", "failed", "error"})
FAILED_STATES = frozenset({"failed", "error"})


def ops_token(tokens: TokenPolicy, ttl_s: int = 300) -> str:
    return tokens.issue(OPS_SUBJECT, scopes=OPS_SCOPE, ttl_s=ttl_s)


def check_id(what: str, value: str) -> str:
    # the ids the services accept: `{user_id}` paths are checked against the same pattern
    if not USER_ID_PATTERN.fullmatch(value):
        raise BadArgument(f"{what} {value!r} is not a valid id ({USER_ID_RULE})")
    return value


def parse_since(value: str | None, today: dt.date | None = None) -> dt.date | None:
    if value is None:
        return None
    try:
        since = dt.date.fromisoformat(value)
    except ValueError:
        raise BadArgument(f"--since {value!r} is not a date: use YYYY-MM-DD, e.g. 2025-01-31") from None
    if since > (today or dt.date.today()):
        raise BadArgument(f"--since {value} is in the future")
    return since


def problem_text(response: httpx.Response) -> str:
    """`403 forbidden: The ops scope is required.` from an RFC 9457 answer, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("detail" in body or "code" in body):
        code = body.get("code") or body.get("title") or ""
        return f"{response.status_code} {code}: {body.get('detail', '')}".strip()
    return f"{response.status_code}: {response.text[:300]}"


@dataclass
class ServiceClient:
    name: str
    base_url: str
    token: str
    timeout_s: float = 30.0
    transport: httpx.AsyncBaseTransport | None = None

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=self.timeout_s,
            transport=self.transport,
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            async with self.client() as http:
                return await http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OpsError(
                f"cannot reach the {self.name} at {self.base_url}: {exc or type(exc).__name__}"
            ) from exc

    async def get_json(self, path: str) -> Any:
        response = await self.request("GET", path)
        if response.status_code != 200:
            raise OpsError(f"the {self.name} answered GET {path} with {problem_text(response)}")
        return response.json()


# --- status --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserStatus:
    user_id: str
    connections: list[dict[str, Any]]
    accounts: list[dict[str, Any]]


async def fetch_status(connector: ServiceClient, user_id: str) -> UserStatus:
    check_id("user", user_id)
    connections, accounts = await asyncio.gather(
        connector.get_json(f"/v1/users/{user_id}/connections"),
        connector.get_json(f"/v1/users/{user_id}/sync/status"),
    )
    return UserStatus(user_id, list(connections), list(accounts))


def _when(value: Any) -> str | None:
    if not value:
        return None
    return str(value).replace("T", " ")[:19]


def format_status(status: UserStatus) -> str:
    if not status.connections and not status.accounts:
        return f"user {status.user_id}: no bank connection"
    syncs: dict[str, Mapping[str, Any]] = {s["aggregator_account_id"]: s for s in status.accounts}
    out = [f"user {status.user_id}"]
    seen: set[str] = set()
    for connection in status.connections:
        bank = connection.get("bank") or {}
        error = connection.get("error") or {}
        state = connection.get("state") or "ok"
        line = (
            f"connection {connection.get('connection_id')}  bank {bank.get('name')} ({bank.get('id')})"
            f"  state {state}"
        )
        if error:
            line += f"  error {error.get('code')}: {error.get('message')}"
        out += ["", line]
        rows = []
        for account in connection.get("accounts", []):
            account_id = str(account.get("aggregator_account_id"))
            seen.add(account_id)
            rows.append(_account_row(account, syncs.get(account_id)))
        out.append(_accounts_table(rows) if rows else "  (no accounts)")
    orphans = [s for s in status.accounts if s["aggregator_account_id"] not in seen]
    if orphans:
        out += ["", "synced accounts not in a current connection"]
        out.append(
            _accounts_table(
                [_account_row({"aggregator_account_id": s["aggregator_account_id"]}, s) for s in orphans]
            )
        )
    out += _gap_alarms(status.accounts)
    return "\n".join(out)


def _gap_alarms(accounts: Sequence[Mapping[str, Any]]) -> list[str]:
    """After a complete sync the bank's balance must equal the app's: a gap means operations are
    missing or doubled (a data-correctness alarm, see README "Balance check")."""
    alarms = []
    for sync in accounts:
        gap = sync.get("balance_gap")
        if gap is not None and Decimal(str(gap)) != 0:
            alarms.append(
                f"BALANCE GAP on account {sync['aggregator_account_id']}"
                f" (app account {sync.get('account_id')}):"
                f" bank {sync.get('bank_balance')}, operations {sync.get('computed_balance')}, gap {gap}"
                " -- operations are missing or doubled; replay the account after checking the bank's lines"
            )
    return ["", *alarms] if alarms else []


def _account_row(account: Mapping[str, Any], sync: Mapping[str, Any] | None) -> tuple[object, ...]:
    sync = sync or {}
    run = sync.get("last_run") or {}
    error = sync.get("error") or {}
    balance = account.get("balance")
    return (
        account.get("aggregator_account_id"),
        account.get("name"),
        f"{balance} {account.get('currency') or ''}".strip() if balance is not None else None,
        _yes_no(account.get("selected")),
        sync.get("account_id"),
        sync.get("state"),
        _when(sync.get("last_success_at")),
        run.get("sync_run_id"),
        _when(run.get("finished_at")),
        run.get("transactions"),
        sync.get("balance_gap"),
        f"{error.get('code')}: {error.get('message')}" if error else None,
    )


def _yes_no(value: Any) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _accounts_table(rows: Sequence[Sequence[object]]) -> str:
    headers = (
        "ACCOUNT",
        "NAME",
        "BALANCE",
        "SELECTED",
        "APP-ACCOUNT",
        "SYNC",
        "LAST-SUCCESS",
        "LAST-RUN",
        "FINISHED",
        "LINES",
        "GAP",
        "ERROR",
    )
    return "\n".join("  " + line for line in table(headers, rows).splitlines())


# --- replay --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayProgress:
    state: str
    processed: int | None
    total: int | None
    body: Mapping[str, Any]

    @property
    def finished(self) -> bool:
        return self.state.lower() in FINISHED_STATES

    @property
    def failed(self) -> bool:
        return self.state.lower() in FAILED_STATES


def progress_of(body: Mapping[str, Any]) -> ReplayProgress:
    """Reads what an importer's replay status says, tolerant of field names (state|status, processed|done)."""
    state = str(body.get("state") or body.get("status") or "unknown")
    processed = body.get("processed", body.get("done", body.get("records")))
    total = body.get("total", body.get("expected"))
    return ReplayProgress(
        state,
        processed if isinstance(processed, int) else None,
        total if isinstance(total, int) else None,
        body,
    )


def replay_body(user_id: str, account_id: str, since: dt.date | None) -> dict[str, Any]:
    return {
        "user_id": check_id("user", user_id),
        "aggregator_account_id": check_id("account", account_id),
        "since": since.isoformat() if since else None,
    }


@dataclass(frozen=True)
class ReplayStarted:
    answer: dict[str, Any]
    # where to follow it: the 202's `Location`, else a `status_url` in the body
    status_path: str | None


async def start_replay(importer: ServiceClient, body: Mapping[str, Any]) -> ReplayStarted:
    response = await importer.request("POST", "/v1/ops/replay", json=dict(body))
    if response.status_code not in (200, 201, 202):
        raise OpsError(f"the importer refused the replay: {problem_text(response)}")
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    answer = answer if isinstance(answer, dict) else {"answer": answer}
    return ReplayStarted(answer, status_path(answer, response.headers.get("location")))


def status_path(answer: Mapping[str, Any], location: str | None = None) -> str | None:
    """Where to follow the replay: the `Location` of the 202 (HTTP's way), or what the body says
    (`status_url`, `links.status`)."""
    url = location or answer.get("status_url") or (answer.get("links") or {}).get("status")
    return str(url) if url else None


async def replay_direct(
    settings: ServiceSettings, user_id: str, account_id: str, since: dt.date | None
) -> dict[str, Any]:
    """The importer's own replay function, run here (it opens its own Kafka and MongoDB clients)."""
    try:
        result = await replay_account(settings, user_id, account_id, since)
    except Exception as exc:
        raise OpsError(f"the importer's replay failed: {type(exc).__name__}: {exc}") from exc
    return result.as_dict()


async def follow_replay(
    importer: ServiceClient,
    path: str,
    on_progress: Callable[[ReplayProgress], None],
    *,
    timeout_s: float = 600.0,
    interval_s: float = 0.5,
) -> ReplayProgress:
    deadline = time.monotonic() + timeout_s
    while True:
        progress = progress_of(await importer.get_json(path))
        on_progress(progress)
        if progress.finished:
            return progress
        if time.monotonic() > deadline:
            raise OpsError(f"the replay did not finish in {timeout_s:.0f} s (last state: {progress.state})")
        await asyncio.sleep(interval_s)
