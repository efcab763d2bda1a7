"""HTTP routes: the Powens-compatible `/2.0` API, the connect webview, and the `/sandbox` control API.

Thin: parse, call the store, serialise. Powens habits kept: list answers are wrapped
(`{"connections": [...]}`), boolean flags count when present (`?all`, `?all=1`, `?all=true`),
errors are `{"code", "description", "message"?}`.
"""

from __future__ import annotations

import datetime as dt
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, BackgroundTasks, Body, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from sandbox.banks import BANKS, bank_by_id
from sandbox.clients import Clients
from sandbox.clock import format_ts, parse_ts
from sandbox.faults import FaultConfig, Faults
from sandbox.generator import AccountKind
from sandbox.listing import TransactionQuery, clamp_limit
from sandbox.models import User
from sandbox.store import TEMPORARY_TOKEN_TTL, NewLine, SandboxError, Store
from sandbox.views import transaction_json, user_json
from sandbox.webhooks import WebhookSender
from sandbox.webview import HIDDEN_FIELDS, render_connect, render_message

CODE_EXPIRES_IN = 1800


# --- query helpers ---------------------------------------------------------------------------------
def flag(request: Request, name: str) -> bool | None:
    """Powens-style boolean query flag: absent -> None; present without value, 1, true, yes -> True."""
    if name not in request.query_params:
        return None
    return request.query_params[name].strip().lower() not in ("0", "false", "no", "off")


def expand_of(request: Request) -> set[str]:
    values = request.query_params.getlist("expand")
    return {part.strip() for value in values for part in value.split(",") if part.strip()}


def int_param(request: Request, name: str, minimum: int = 0) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SandboxError(400, "invalidValue", f"{name} must be an integer") from None
    if value < minimum:
        raise SandboxError(400, "invalidValue", f"{name} must be at least {minimum}")
    return value


def date_param(request: Request, name: str) -> date | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw.strip()[:10])
    except ValueError:
        raise SandboxError(400, "invalidValue", f"{name} must be a date (YYYY-MM-DD)") from None


def transaction_query(request: Request) -> TransactionQuery:
    raw_last_update = request.query_params.get("last_update")
    last_update = None
    if raw_last_update:
        try:
            last_update = parse_ts(raw_last_update)
        except ValueError:
            raise SandboxError(400, "invalidValue", "last_update must be an ISO 8601 date-time") from None
    return TransactionQuery(
        min_date=date_param(request, "min_date"),
        max_date=date_param(request, "max_date"),
        last_update=last_update,
        deleted=flag(request, "deleted"),
        all=bool(flag(request, "all")),
        income=flag(request, "income"),
    )


def current_user(store: Store, request: Request, user_ref: str) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    user = store.user_by_token(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if user is None:
        raise SandboxError(401, "invalidToken", "missing or invalid bearer token")
    if user_ref != "me" and user_ref != str(user.id):
        raise SandboxError(403, "forbidden", "this token may only act on its own user")
    return user


# --- bodies ----------------------------------------------------------------------------------------
class AccountUpdate(BaseModel):
    disabled: bool | None = None
    name: str | None = None
    usage: str | None = None
    display: bool | None = None
    bookmarked: bool | None = None


class CodeExchange(BaseModel):
    """`POST /auth/token/access` (Powens' ExchangeAccessTokenRequest): `code`, `client_id` and
    `client_secret` required; `grant_type` only `authorization_code`; `redirect_uri` the exact one the
    code was issued for. All optional here, checked by hand: a validation error would echo the body,
    the secret with it."""

    code: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    grant_type: str | None = None
    redirect_uri: str | None = None


class InitRequest(BaseModel):
    """`POST /auth/init` (Powens' AccessTokenRequest): with the client's credentials the new user's
    token is permanent; without them it expires after 30 minutes."""

    client_id: str | None = None
    client_secret: str | None = None


class AppendLine(BaseModel):
    date: dt.date
    value: Decimal
    original_wording: str = Field(min_length=1)
    coming: bool = False
    rdate: dt.date | None = None
    type: str | None = None


class BookRequest(BaseModel):
    new_id: bool = False
    wording: str | None = None
    date: dt.date | None = None


class OpenAccountRequest(BaseModel):
    type: Literal["checking", "savings", "card"] = "checking"


class LinkUsersRequest(BaseModel):
    connector_ids: list[int] = Field(min_length=1, max_length=1000)
    enable: list[Literal["checking", "savings", "card"]] = Field(default_factory=list)


class ClockRequest(BaseModel):
    advance_days: int = Field(ge=0, le=3650)


class StateRequest(BaseModel):
    state: str | None = None


class FaultRequest(BaseModel):
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(default=0, ge=0, le=60_000)
    rate_limit: bool = False
    retry_after_s: int = Field(default=1, ge=0, le=3600)
    fail_next: int = Field(default=0, ge=0)
    rate_limit_next: int = Field(default=0, ge=0)


class WebhookRequest(BaseModel):
    url: str | None = None
    secret: str | None = None


def to_cents(value: Decimal) -> int:
    try:
        cents = value * 100
        if cents != cents.to_integral_value():
            raise SandboxError(422, "invalidValue", f"value {value} has more than two decimals")
        return int(cents)
    except InvalidOperation:
        raise SandboxError(422, "invalidValue", f"value {value} is not a number") from None


# --- the Powens-compatible API ---------------------------------------------------------------------
def powens_router(store: Store, webhooks: WebhookSender, clients: Clients) -> APIRouter:
    router = APIRouter(prefix="/2.0")

    @router.post("/auth/init")
    async def auth_init(body: Annotated[InitRequest | None, Body()] = None) -> dict[str, Any]:
        given = body or InitRequest()
        if given.client_id is None and given.client_secret is None:
            user = store.create_user(expires_in=TEMPORARY_TOKEN_TTL)
            return {
                "auth_token": user.token,
                "type": "temporary",
                "id_user": user.id,
                "expires_in": int(TEMPORARY_TOKEN_TTL.total_seconds()),
            }
        if clients.authenticate(given.client_id, given.client_secret) is None:
            raise SandboxError(400, "invalidClient", "unknown client_id or wrong client_secret")
        user = store.create_user()
        return {"auth_token": user.token, "type": "permanent", "id_user": user.id}

    @router.get("/auth/token/code")
    async def auth_code(request: Request) -> dict[str, Any]:
        user = current_user(store, request, "me")
        return {
            "code": store.issue_code(user.id),
            "type": "temporary",
            "access": "single",
            "expires_in": CODE_EXPIRES_IN,
        }

    @router.post("/auth/token/access")
    async def auth_exchange(body: CodeExchange) -> dict[str, Any]:
        """A webview redirect's code for the user's permanent token: once, by the client whose webview
        issued it (with its secret), for the redirect URI it was issued for."""
        if body.grant_type not in (None, "authorization_code"):
            raise SandboxError(400, "invalidValue", "grant_type must be authorization_code")
        client = clients.authenticate(body.client_id, body.client_secret)
        if client is None:
            raise SandboxError(400, "invalidClient", "unknown client_id or wrong client_secret")
        if not body.code:
            raise SandboxError(400, "invalidValue", "code is required")
        grant = store.redeem_authorization_code(body.code)
        if grant is None or grant.client_id != client.client_id:
            raise SandboxError(400, "invalidCode", "unknown, expired or already used code")
        if body.redirect_uri != grant.redirect_uri:
            raise SandboxError(
                400, "invalidRedirectUri", "redirect_uri is not the one the code was issued for"
            )
        user = store.users[grant.user_id]
        return {"access_token": user.token, "token_type": "Bearer", "id_user": user.id}

    @router.get("/connectors")
    async def connectors() -> dict[str, Any]:
        return {"connectors": [bank.to_powens() for bank in BANKS], "total": len(BANKS)}

    @router.get("/connectors/{connector_id}")
    async def connector(connector_id: int) -> dict[str, Any]:
        bank = bank_by_id(connector_id)
        if bank is None:
            raise SandboxError(404, "connectorNotFound", f"no connector {connector_id}")
        return bank.to_powens()

    @router.get("/users/{user_ref}")
    async def me(user_ref: str, request: Request) -> dict[str, Any]:
        return user_json(current_user(store, request, user_ref))

    @router.delete("/users/{user_ref}", status_code=204)
    async def delete_user(user_ref: str, request: Request) -> Response:
        """Deletes the user and everything of theirs (Powens: a user's right to erasure)."""
        user = current_user(store, request, user_ref)
        store.delete_user(user.id)
        return Response(status_code=204)

    @router.get("/users/{user_ref}/connections")
    async def list_connections(user_ref: str, request: Request) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        expand = expand_of(request)
        with store.lock:
            items = [store.connection_view(c, expand) for c in store.user_connections(user.id)]
        return {"connections": items, "total": len(items)}

    @router.get("/users/{user_ref}/connections/{connection_id}")
    async def get_connection(user_ref: str, connection_id: int, request: Request) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        with store.lock:
            return store.connection_view(store.connection(user.id, connection_id), expand_of(request))

    @router.post("/users/{user_ref}/connections/{connection_id}")
    async def sync_connection(
        user_ref: str, connection_id: int, request: Request, background_tasks: BackgroundTasks
    ) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        expand = expand_of(request)
        try:
            connection = store.sync(user.id, connection_id)
        except SandboxError as error:
            if flag(request, "background") and error.status != 404:
                # asynchronous sync: Powens answers at once; the client polls the connection's state
                with store.lock:
                    return store.connection_view(store.connection(user.id, connection_id), expand)
            raise
        background_tasks.add_task(webhooks.connection_synced, connection.id)
        with store.lock:
            return store.connection_view(connection, expand)

    @router.delete("/users/{user_ref}/connections/{connection_id}", status_code=204)
    async def delete_connection(user_ref: str, connection_id: int, request: Request) -> Response:
        user = current_user(store, request, user_ref)
        store.delete_connection(user.id, connection_id)
        return Response(status_code=204)

    @router.get("/users/{user_ref}/connections/{connection_id}/accounts")
    async def connection_accounts(user_ref: str, connection_id: int, request: Request) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        with store.lock:
            store.connection(user.id, connection_id)
            accounts = store.connection_accounts(connection_id, include_disabled=bool(flag(request, "all")))
            items = [store.account_view(a) for a in accounts]
        return {"accounts": items, "total": len(items)}

    @router.get("/users/{user_ref}/accounts")
    async def list_accounts(user_ref: str, request: Request) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        # Powens: enabled, not deleted accounts by default; `all` adds the disabled and deleted ones
        include_disabled = bool(flag(request, "all"))
        with store.lock:
            items = [
                store.account_view(a) for a in store.user_accounts(user.id, include_disabled=include_disabled)
            ]
        return {"accounts": items, "total": len(items)}

    @router.get("/users/{user_ref}/accounts/{account_id}")
    async def get_account(user_ref: str, account_id: int, request: Request) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        with store.lock:
            return store.account_view(store.account(user.id, account_id))

    @router.put("/users/{user_ref}/accounts/{account_id}", operation_id="updateUserAccountPut")
    @router.post("/users/{user_ref}/accounts/{account_id}", operation_id="updateUserAccount")
    async def update_account(
        user_ref: str, account_id: int, request: Request, body: Annotated[AccountUpdate, Body()]
    ) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        fields = body.model_fields_set
        disabled: bool | None = None
        if "disabled" in fields:
            disabled = bool(body.disabled)  # {"disabled": false} or null activates
        with store.lock:
            account = store.update_account(
                user.id,
                account_id,
                disabled=disabled,
                name=body.name,
                usage=body.usage,
                display=body.display,
                bookmarked=body.bookmarked,
            )
            return store.account_view(account)

    def transactions_answer(request: Request, user: User, account_id: int | None) -> dict[str, Any]:
        query = transaction_query(request)
        offset = int_param(request, "offset") or 0
        limit = clamp_limit(int_param(request, "limit", minimum=1))
        page, items = store.list_transactions(user.id, account_id, query, offset, limit)
        following = page.next_offset
        next_link = None
        if following is not None:
            next_link = {"href": str(request.url.include_query_params(offset=following, limit=limit))}
        return {
            "transactions": items,
            "total": page.total,
            "first_date": page.first_date.isoformat() if page.first_date else None,
            "last_date": page.last_date.isoformat() if page.last_date else None,
            "result_min_date": page.result_min_date.isoformat() if page.result_min_date else None,
            "result_max_date": page.result_max_date.isoformat() if page.result_max_date else None,
            "_links": {"next": next_link},
        }

    @router.get("/users/{user_ref}/accounts/{account_id}/transactions")
    async def account_transactions(user_ref: str, account_id: int, request: Request) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        return transactions_answer(request, user, account_id)

    @router.get("/users/{user_ref}/transactions")
    async def user_transactions(user_ref: str, request: Request) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        return transactions_answer(request, user, None)

    @router.get("/users/{user_ref}/transactions/{transaction_id}")
    async def get_transaction(user_ref: str, transaction_id: int, request: Request) -> dict[str, Any]:
        user = current_user(store, request, user_ref)
        with store.lock:
            return transaction_json(store.user_transaction(user.id, transaction_id))

    return router


# --- the connect webview ---------------------------------------------------------------------------
def webview_router(store: Store, webhooks: WebhookSender, clients: Clients) -> APIRouter:
    router = APIRouter(prefix="/2.0/auth/webview")

    def check_client(values: dict[str, str]) -> HTMLResponse | None:
        """The error page when the link does not name a registered client and one of its registered
        redirect URIs (exact match); such a link never redirects anywhere."""
        if clients.get(values.get("client_id")) is None:
            return HTMLResponse(
                render_message("Lien invalide", "Application cliente inconnue (client_id)."), 400
            )
        if not clients.allows(values.get("client_id"), values.get("redirect_uri")):
            message = "Adresse de retour (redirect_uri) non enregistrée pour cette application."
            return HTMLResponse(render_message("Lien invalide", message), 400)
        return None

    def resolve_user(values: dict[str, str]) -> User | None:
        """The sandbox user who links: `code` (temporary, from GET /2.0/auth/token/code, as Powens) or
        `token` (the permanent token); with neither, a new user is created (as Powens' webview does)."""
        if values.get("code"):
            return store.user_by_code(values["code"])
        if values.get("token"):
            return store.user_by_token(values["token"])
        return store.create_user()

    def page(values: dict[str, str], *, status: int, error: str | None = None) -> HTMLResponse:
        selected = values.get("connector_id", "") or values.get("connector_ids", "").split(",")[0]
        reconnect_bank = None
        if values.get("connection_id", "").isdigit():
            connection = store.connections.get(int(values["connection_id"]))
            reconnect_bank = bank_by_id(connection.id_connector) if connection else None
        return HTMLResponse(
            render_connect(
                BANKS,
                {name: values.get(name, "") for name in HIDDEN_FIELDS},
                action="/2.0/auth/webview/connect",
                selected=int(selected) if selected.isdigit() else None,
                login=values.get("login", ""),
                error=error,
                reconnect_bank=reconnect_bank,
            ),
            status_code=status,
        )

    @router.get("/connect", response_class=HTMLResponse)
    @router.get("/reconnect", response_class=HTMLResponse)
    async def show(request: Request) -> HTMLResponse:
        values = dict(request.query_params)
        refused = check_client(values)
        if refused is not None:
            return refused
        if (values.get("code") or values.get("token")) and resolve_user(values) is None:
            return HTMLResponse(render_message("Lien expiré", "Code ou jeton inconnu ou expiré."), 401)
        return page(values, status=200)

    @router.post("/connect")
    @router.post("/reconnect")
    async def submit(request: Request, background_tasks: BackgroundTasks) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return HTMLResponse(render_message("Formulaire invalide", "Encodage non pris en charge."), 415)
        raw = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        values = {key: items[-1] for key, items in raw.items()}
        password = values.pop("password", "")
        refused = check_client(values)
        if refused is not None:
            return refused
        redirect_uri, client_id = values["redirect_uri"], values["client_id"]
        login = values.get("login", "").strip()
        connector = values.get("connector_id", "")
        if not login or not password:
            return page(values, status=400, error="Saisissez votre identifiant et votre mot de passe.")
        if not connector.isdigit() or bank_by_id(int(connector)) is None:
            return page(values, status=400, error="Choisissez votre banque.")
        user = resolve_user(values)
        if user is None:
            return HTMLResponse(render_message("Lien expiré", "Code ou jeton inconnu ou expiré."), 401)
        try:
            if values.get("connection_id", "").isdigit():
                connection = store.relogin(user.id, int(values["connection_id"]), login)
            else:
                connection = store.create_connection(user.id, int(connector), login)
        except SandboxError as error:
            return page(values, status=error.status, error=error.description)
        if connection.state is None:
            background_tasks.add_task(webhooks.connection_synced, connection.id)
        code = store.issue_authorization_code(user.id, client_id, redirect_uri)
        params = {"connection_id": str(connection.id), "code": code}
        if "state" in values:
            params["state"] = values["state"]
        separator = "&" if urlsplit(redirect_uri).query else "?"
        return RedirectResponse(f"{redirect_uri}{separator}{urlencode(params)}", status_code=303)

    return router


# --- the control API -------------------------------------------------------------------------------
def control_router(store: Store, faults: Faults, webhooks: WebhookSender) -> APIRouter:
    router = APIRouter(prefix="/sandbox")

    @router.post("/accounts/{account_id}/transactions", status_code=201)
    async def append(account_id: int, lines: list[AppendLine]) -> dict[str, Any]:
        items = [
            NewLine(
                date=line.date,
                value_cents=to_cents(line.value),
                original_wording=line.original_wording,
                coming=line.coming,
                rdate=line.rdate,
                type=line.type,
            )
            for line in lines
        ]
        with store.lock:
            created = store.append(account_id, items)
            return {
                "ids": [tx.id for tx in created],
                "transactions": [transaction_json(tx) for tx in created],
            }

    @router.post("/users", status_code=201)
    async def link_users(body: LinkUsersRequest) -> dict[str, Any]:
        """Load tests: users already linked to a bank, made in one request instead of a webview each."""
        with store.lock:
            linked = store.link_users(body.connector_ids, set(body.enable))
            return {
                "users": [
                    {
                        "id_user": user.id,
                        "token": user.token,
                        "connection": store.connection_view(connection, {"all_accounts"}),
                    }
                    for user, connection in linked
                ]
            }

    @router.get("/accounts/{account_id}/transactions/all")
    async def all_lines(account_id: int) -> dict[str, Any]:
        with store.lock:
            lines = [transaction_json(tx) for tx in store.all_lines(account_id)]
        return {"transactions": lines, "total": len(lines)}

    @router.post("/connections/{connection_id}/accounts", status_code=201)
    async def open_account(connection_id: int, body: OpenAccountRequest) -> dict[str, Any]:
        with store.lock:
            return store.account_view(store.open_account(connection_id, AccountKind(body.type)))

    @router.post("/accounts/{account_id}/delete")
    async def close_account(account_id: int) -> dict[str, Any]:
        with store.lock:
            return store.account_view(store.close_account(account_id))

    @router.get("/accounts/{account_id}")
    async def account(account_id: int) -> dict[str, Any]:
        with store.lock:
            return store.account_view(store.control_account(account_id))

    @router.post("/transactions/{transaction_id}/book")
    async def book(transaction_id: int, body: BookRequest | None = None) -> dict[str, Any]:
        request = body or BookRequest()
        with store.lock:
            booked, deleted = store.book(
                transaction_id, new_id=request.new_id, wording=request.wording, day=request.date
            )
            return {
                "transaction": transaction_json(booked),
                "deleted": transaction_json(deleted) if deleted is not None else None,
            }

    @router.post("/transactions/{transaction_id}/delete")
    async def delete(transaction_id: int) -> dict[str, Any]:
        with store.lock:
            return transaction_json(store.delete_transaction(transaction_id))

    @router.post("/connections/{connection_id}/state")
    async def set_state(connection_id: int, body: StateRequest) -> dict[str, Any]:
        with store.lock:
            return store.connection_view(store.set_state(connection_id, body.state))

    @router.post("/connections/{connection_id}/sync")
    async def bank_side_sync(connection_id: int, background_tasks: BackgroundTasks) -> dict[str, Any]:
        """What the aggregator's own schedule does: sync, then the CONNECTION_SYNCED webhook."""
        connection = store.control_connection(connection_id)
        synced = store.sync(connection.id_user, connection_id)
        background_tasks.add_task(webhooks.connection_synced, synced.id)
        with store.lock:
            return store.connection_view(synced, {"accounts"})

    @router.get("/clock")
    async def get_clock() -> dict[str, Any]:
        return {"now": format_ts(store.now()), "offset_days": store.clock_offset.days}

    @router.post("/clock")
    async def advance_clock(body: ClockRequest) -> dict[str, Any]:
        """Moves the sandbox's time forward: consents given more than 180 days before lapse."""
        now = store.advance_clock(dt.timedelta(days=body.advance_days))
        return {"now": format_ts(now), "offset_days": store.clock_offset.days}

    @router.get("/faults")
    async def get_faults() -> dict[str, Any]:
        return {**faults.config.to_json(), "injected": dict(faults.injected)}

    @router.post("/faults")
    async def set_faults(body: FaultRequest) -> dict[str, Any]:
        config = faults.configure(FaultConfig(**body.model_dump()))
        return {**config.to_json(), "injected": dict(faults.injected)}

    @router.get("/webhooks")
    async def get_webhooks() -> dict[str, Any]:
        return webhooks.describe()

    @router.post("/webhooks")
    async def set_webhooks(body: WebhookRequest) -> dict[str, Any]:
        webhooks.configure(body.url, body.secret)
        return webhooks.describe()

    @router.post("/reset")
    async def reset() -> dict[str, Any]:
        store.reset()
        faults.reset()
        webhooks.deliveries.clear()
        return {"reset": True}

    return router


def error_response(error: SandboxError) -> JSONResponse:
    body: dict[str, Any] = {"code": error.code, "description": error.description}
    if error.message is not None:
        body["message"] = error.message
    return JSONResponse(body, status_code=error.status)
