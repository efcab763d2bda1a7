"""HTTP API of the contract for the connector."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.connector.components import ConnectorComponents
from services.connector.domain.connections import Connection, WebviewLink
from services.connector.domain.secrets import SIGNATURE_DATE_HEADER, SIGNATURE_HEADER
from services.connector.domain.states import AccountStatus
from services.connector.domain.webhooks import ConnectionSynced, WebhookAnswer
from services.connector.handlers import ConnectorHandlers
from shared.auth import OpsPrincipal, UserPrincipal
from shared.problems import Problem, problem_responses
from shared.service import components, correlation_id_of

users = APIRouter(
    prefix="/v1/users/{user_id}", tags=["connector"], responses=problem_responses(401, 403, 422)
)
public = APIRouter(prefix="/v1", tags=["aggregator"])
ops = APIRouter(prefix="/v1/ops", tags=["ops"], responses=problem_responses(401, 403))


def handlers_of(request: Request) -> ConnectorHandlers:
    return components(request, ConnectorComponents).handlers


Handlers = Annotated[ConnectorHandlers, Depends(handlers_of)]
# a CONNECTION_SYNCED body nests about six levels; far deeper is an attack, not a webhook
MAX_WEBHOOK_DEPTH = 32


class Activation(BaseModel):
    connect_url: str
    state: str


class SyncAccepted(BaseModel):
    sync_run_id: str


class AccountSelection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    selected: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(max_length=200)


SHOWN_ACCOUNT_FIELDS = ("aggregator_account_id", "name", "iban", "type", "balance", "currency", "selected")


def activation_view(link: WebviewLink) -> dict[str, str]:
    return {"connect_url": link.connect_url, "state": link.state}


def connection_view(conn: Connection) -> dict[str, Any]:
    return {
        "connection_id": conn.connection_id,
        "bank": {"id": conn.bank.id, "name": conn.bank.name},
        "state": conn.shown_state,
        "error": None
        if conn.error is None
        else {"code": conn.error.code, "message": conn.error.message, "action": conn.error.action},
        "accounts": [
            {
                **{k: getattr(a, k) for k in SHOWN_ACCOUNT_FIELDS},
                "coming": a.coming,
                "closed": a.closed,
            }
            for a in conn.accounts
        ],
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def status_view(status: AccountStatus) -> dict[str, Any]:
    last_run, error, balance = status.last_run, status.error, status.balance
    return {
        "aggregator_account_id": status.aggregator_account_id,
        "account_id": status.account_id,
        "connection_id": status.connection_id,
        "state": status.state.value,
        "action": status.action,
        "message": status.message,
        "last_success_at": _iso(status.last_success_at),
        "last_run": {
            "sync_run_id": last_run.sync_run_id,
            "started_at": _iso(last_run.started_at),
            "finished_at": _iso(last_run.finished_at),
            "transactions": last_run.transactions,
        }
        if last_run
        else None,
        "error": {"code": error.code, "message": error.message} if error else None,
        "reimport_pending": status.reimport_pending,
        "bank_balance": balance.bank_balance if balance else None,
        "computed_balance": balance.computed_balance if balance else None,
        "balance_gap": balance.balance_gap if balance else None,
    }


def webhook_view(answer: WebhookAnswer) -> dict[str, str]:
    if answer.sync_run_id is None:
        return {"status": answer.status}
    return {"status": answer.status, "sync_run_id": answer.sync_run_id}


@users.post("/sync/activate", response_model=Activation, responses=problem_responses(502, 503))
async def activate(user_id: str, request: Request, _: UserPrincipal, handlers: Handlers) -> dict[str, str]:
    return activation_view(await handlers.linking.activate(user_id, correlation_id_of(request)))


@public.get("/callback", responses=problem_responses(400, 404, 409, 422, 502))
async def callback(
    request: Request,
    handlers: Handlers,
    connection_id: Annotated[str, Query(min_length=1, max_length=64)],
    state: Annotated[str, Query(min_length=1, max_length=2000)],
    code: Annotated[str, Query(min_length=1, max_length=2000)],
) -> dict[str, Any]:
    """Where the aggregator's webview sends the browser back (no JWT). The signed, single-use `state` names
    the user; the `code` is exchanged at the aggregator with our client's credentials and must be that
    user's. A used state answers 409 `activation_used`; a failed attempt does not use the state up."""
    conn = await handlers.linking.callback(connection_id, state, code, correlation_id_of(request))
    return connection_view(conn)


@users.get("/connections")
async def list_connections(user_id: str, _: UserPrincipal, handlers: Handlers) -> list[dict[str, Any]]:
    return [connection_view(conn) for conn in await handlers.connections.list_connections(user_id)]


@users.post(
    "/connections/{connection_id}/reconnect",
    response_model=Activation,
    responses=problem_responses(403, 404, 409, 502, 503),
)
async def reconnect(
    user_id: str, connection_id: str, request: Request, _: UserPrincipal, handlers: Handlers
) -> dict[str, str]:
    """The aggregator's reconnect webview for a connection that needs the user (new password, strong
    authentication, PSD2 consent renewed every 180 days); it comes back through the callback."""
    return activation_view(
        await handlers.linking.reconnect(user_id, connection_id, correlation_id_of(request))
    )


@users.put("/connections/{connection_id}/accounts", responses=problem_responses(404, 502))
async def select_accounts(
    user_id: str,
    connection_id: str,
    body: AccountSelection,
    request: Request,
    _: UserPrincipal,
    handlers: Handlers,
) -> dict[str, Any]:
    conn = await handlers.connections.select_accounts(
        user_id, connection_id, body.selected, correlation_id_of(request)
    )
    return connection_view(conn)


@users.delete("/connections/{connection_id}", status_code=204, responses=problem_responses(404, 502))
async def delete_connection(
    user_id: str, connection_id: str, request: Request, _: UserPrincipal, handlers: Handlers
) -> None:
    await handlers.connections.delete_connection(user_id, connection_id, correlation_id_of(request))


@users.post("/sync", status_code=202, response_model=SyncAccepted, responses=problem_responses(503))
async def sync_all(user_id: str, request: Request, _: UserPrincipal, handlers: Handlers) -> dict[str, str]:
    run_id = await handlers.syncs.request_sync(user_id, "on_demand", correlation_id_of(request))
    return {"sync_run_id": run_id}


@users.post(
    "/accounts/{aggregator_account_id}/sync",
    status_code=202,
    response_model=SyncAccepted,
    responses=problem_responses(404, 503),
)
async def sync_account(
    user_id: str, aggregator_account_id: str, request: Request, _: UserPrincipal, handlers: Handlers
) -> dict[str, str]:
    connections = await handlers.connections.list_connections(user_id)
    if not any(c.account(aggregator_account_id) for c in connections):
        raise Problem(
            404, "unknown_account", f"No synced bank account {aggregator_account_id} for this user."
        )
    run_id = await handlers.syncs.request_sync(
        user_id, "on_demand", correlation_id_of(request), aggregator_account_ids=[aggregator_account_id]
    )
    return {"sync_run_id": run_id}


@users.get("/sync/status")
async def sync_status(user_id: str, _: UserPrincipal, handlers: Handlers) -> list[dict[str, Any]]:
    return [status_view(status) for status in await handlers.status.sync_status(user_id)]


@ops.post("/nightly-run", status_code=202)
async def nightly_run(request: Request, _: OpsPrincipal, handlers: Handlers) -> dict[str, int]:
    report = await handlers.nightly.nightly_run(correlation_id_of(request))
    return dataclasses.asdict(report)


@public.post("/webhooks/aggregator", responses=problem_responses(401, 422, 503))
async def aggregator_webhook(request: Request, handlers: Handlers) -> JSONResponse:
    """`CONNECTION_SYNCED` webhooks, signed as Powens signs them, not a JWT: `BI-Signature` is
    base64(HMAC-SHA256(webhook secret, "POST.<path>.<BI-Signature-Date>.<raw body>")). 401
    `invalid_webhook_signature` (missing or wrong), `stale_webhook_signature` (date more than the tolerance
    away, 5 min) or `webhook_replayed` (that signature was accepted before)."""
    raw = await request.body()
    await handlers.webhooks.check_webhook(
        request.method,
        request.url.path,
        request.headers.get(SIGNATURE_HEADER),
        request.headers.get(SIGNATURE_DATE_HEADER),
        raw,
    )
    notice = ConnectionSynced.parse(webhook_body(raw))
    if notice is None:
        raise Problem(422, "validation_error", "A CONNECTION_SYNCED webhook carries `connection.id`.")
    answer = await handlers.webhooks.on_webhook(notice, correlation_id_of(request))
    return JSONResponse(webhook_view(answer))


def webhook_body(raw: bytes) -> dict[str, Any]:
    """The webhook's JSON object, parsed defensively: not JSON, nested too deep (the parser's recursion
    included), or not an object: 422."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise Problem(
            422, "validation_error", "The webhook body is not JSON (or is nested too deep)."
        ) from None
    if not isinstance(body, dict):
        raise Problem(422, "validation_error", "The webhook body must be a JSON object.")
    if nesting_depth(body) > MAX_WEBHOOK_DEPTH:
        raise Problem(
            422, "validation_error", f"The webhook body nests deeper than {MAX_WEBHOOK_DEPTH} levels."
        )
    return body


def nesting_depth(value: Any) -> int:
    """How deep objects and arrays nest in a parsed JSON value (without recursion)."""
    if not isinstance(value, dict | list):
        return 0
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest
