"""HTTP API of the contract: banks, accounts, links, operations (cursor paging, search filters, CSV export,
edits of manual ones, undoing a reconciliation), replay."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from services.importer import export
from services.importer.components import ImporterComponents
from services.importer.domain.accounts import Link
from services.importer.domain.lines import ImportMode
from services.importer.domain.operations import OperationPage, OperationQuery
from services.importer.handlers.accounts import (
    AccountService,
    CurrencyMismatch,
    UnknownAccount,
    UnknownOperation,
)
from services.importer.handlers.intake import OperationRefused
from services.importer.ports import ReplayState, ReplayStatus
from services.importer.replay import ReplayNotRequested, Replays
from shared.auth import OpsPrincipal, UserPrincipal
from shared.contract.payloads import AppAccount, Operation
from shared.logging import get_logger
from shared.money import AMOUNT_PATTERN, MAX_AMOUNT_CHARS, InvalidAmount, parse_amount
from shared.problems import Problem, problem_responses
from shared.service import components, correlation_id_of
from shared.text import words_of

log = get_logger(__name__)
CURRENCY_PATTERN = r"^[A-Z]{3}$"
# client amounts: documented here (pattern, length), checked by shared.money.parse_amount, which answers
# what is not one with a 422 `invalid_amount` (a schema check would answer `validation_error`)
AMOUNT_SCHEMA: dict[str, Any] = {"pattern": AMOUNT_PATTERN, "maxLength": MAX_AMOUNT_CHARS}
AMOUNT_DESCRIPTION = (
    'A decimal string, e.g. "-42.50" (never a float): ASCII digits, an optional leading "-", at most as '
    "many decimals as the currency has (EUR 2, JPY 0), never rounded; otherwise 422 `invalid_amount`"
)
# free text and ids a client sends (bank memos and labels are under 256 characters)
LABEL_MAX_CHARS = 500
ID_MAX_CHARS = 200
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date_only(value: object) -> object:
    """Dates are ISO 8601 (contract): pydantic alone would also take `0` or `"1700000000"` as Unix times."""
    if isinstance(value, dt.date) or (isinstance(value, str) and ISO_DATE.fullmatch(value)):
        return value
    raise ValueError("expected an ISO 8601 date (YYYY-MM-DD)")


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date_only)]

users = APIRouter(prefix="/v1/users/{user_id}", tags=["importer"], responses=problem_responses(401, 403, 422))
ops = APIRouter(prefix="/v1/ops", tags=["ops"], responses=problem_responses(401, 403, 422))


# ---- bodies and views ----------------------------------------------------------------------------------


class BankView(BaseModel):
    id: str
    name: str


class AccountView(BaseModel):
    account_id: str
    bank_id: str | None
    name: str
    iban: str | None
    balance: str
    currency: str
    aggregator_account_id: str | None
    bank_balance: str | None = Field(
        default=None,
        description="The bank's balance at the latest sync (booked lines only); null before the first one "
        "and for an account no bank feeds",
    )
    computed_balance: str | None = Field(
        default=None,
        description="The opening balance fixed at the first sync plus the booked operations the bank backs",
    )
    balance_gap: str | None = Field(
        default=None, description="bank_balance - computed_balance: not zero after a sync is an alarm"
    )


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    currency: str = Field(default="EUR", pattern=CURRENCY_PATTERN)


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_account_id: str | None = Field(default=None, max_length=ID_MAX_CHARS)
    import_mode: ImportMode = ImportMode.CREATE


class LinkView(BaseModel):
    aggregator_account_id: str
    target_account_id: str | None
    import_mode: ImportMode
    updated_at: dt.datetime | None = None


def client_amount(name: str, value: str, currency: str | None) -> Decimal:
    """An amount a client sent (body or query) in `currency` (None: the default, two places): exact, never
    rounded; anything else is a 422 `invalid_amount` (shared.money.parse_amount says why)."""
    try:
        return parse_amount(value, currency)
    except InvalidAmount as exc:
        raise invalid_amount(name, exc) from None


def invalid_amount(name: str, exc: InvalidAmount) -> Problem:
    return Problem(422, "invalid_amount", f"{name}: {exc}")


def _plausible_date(value: dt.date) -> dt.date:
    if not dt.date(1990, 1, 1) <= value <= dt.date(2100, 1, 1):
        raise ValueError(f"implausible date {value.isoformat()}")
    return value


class ManualOperationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    date: IsoDate
    amount: str = Field(description=AMOUNT_DESCRIPTION, json_schema_extra=AMOUNT_SCHEMA)
    currency: str = Field(default="EUR", pattern=CURRENCY_PATTERN)
    label: str = Field(min_length=1, max_length=LABEL_MAX_CHARS)

    @field_validator("date")
    @classmethod
    def plausible_date(cls, value: dt.date) -> dt.date:
        return _plausible_date(value)


class ManualOperationPatch(BaseModel):
    """What changes of a manual operation: a field left out (or null) stays as it is."""

    model_config = ConfigDict(extra="forbid")
    date: IsoDate | None = None
    amount: str | None = Field(default=None, description=AMOUNT_DESCRIPTION, json_schema_extra=AMOUNT_SCHEMA)
    currency: str | None = Field(default=None, pattern=CURRENCY_PATTERN)
    label: str | None = Field(default=None, min_length=1, max_length=LABEL_MAX_CHARS)

    @field_validator("date")
    @classmethod
    def plausible_date(cls, value: dt.date | None) -> dt.date | None:
        return None if value is None else _plausible_date(value)


class ReconciliationUndone(BaseModel):
    operation: Operation = Field(description="The manual operation, unreconciled")
    bank_operation: Operation | None = Field(
        description="The bank line's own operation (null when the line is no longer known)"
    )


class OperationsPage(BaseModel):
    items: list[Operation]
    next_cursor: str | None


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=ID_MAX_CHARS)
    aggregator_account_id: str = Field(min_length=1, max_length=ID_MAX_CHARS)
    since: IsoDate | None = None


class ReplayView(BaseModel):
    replay_id: str
    status: Literal["running", "succeeded", "failed"] = Field(
        description="`running` until it ends (`state` says whether it has started)"
    )
    user_id: str
    aggregator_account_id: str
    since: dt.date | None
    processed: int = Field(default=0, description="Records of the partition read so far")
    total: int | None = Field(default=None, description="Records of the partition to read")
    result: dict[str, Any] | None = None
    error: str | None = None
    state: ReplayState = Field(
        default="requested",
        description="`requested`: published on the account's partition, which its importer has not "
        "reached yet; then `running`, `succeeded` or `failed`",
    )
    requested_at: dt.datetime | None = None
    started_at: dt.datetime | None = Field(default=None, description="When its latest run started")
    finished_at: dt.datetime | None = None
    runner: str | None = Field(default=None, description="The importer process that runs or ran it")
    attempts: int = Field(default=0, description="Runs started (a request read again runs again)")


def account_out(view: AppAccount) -> AccountView:
    return AccountView.model_validate(view.model_dump())


def link_out(link: Link) -> LinkView:
    return LinkView(
        aggregator_account_id=link.aggregator_account_id,
        target_account_id=link.target_account_id,
        import_mode=link.import_mode,
        updated_at=link.updated_at,
    )


def replay_out(status: ReplayStatus) -> ReplayView:
    return ReplayView(
        replay_id=status.replay_id,
        status="running" if status.state == "requested" else status.state,
        user_id=status.user_id,
        aggregator_account_id=status.aggregator_account_id,
        since=status.since,
        processed=status.processed,
        total=status.total,
        result=dict(status.result) if status.result is not None else None,
        error=status.error,
        state=status.state,
        requested_at=status.requested_at,
        started_at=status.started_at,
        finished_at=status.finished_at,
        runner=status.runner,
        attempts=status.attempts,
    )


# ---- dependencies --------------------------------------------------------------------------------------


def service_of(request: Request) -> AccountService:
    return components(request, ImporterComponents).accounts


Service = Annotated[AccountService, Depends(service_of)]


def unknown_account(account_id: str) -> Problem:
    return Problem(404, "unknown_account", f"No account {account_id!r} for this user.")


def encode_cursor(after: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(after)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        date, op_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        dt.date.fromisoformat(date)
        if not isinstance(op_id, str):
            raise TypeError
    except (ValueError, TypeError, binascii.Error):
        raise Problem(400, "invalid_cursor", "The cursor is not one this API gave.") from None
    return date, op_id


CATEGORY_PATTERN = r"^[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_-]*)?$"
EXPORT_PAGE = 500


def amount_bound(name: str, value: str | None) -> int | None:
    """A bound of the amount filter, in cents; a bad one is a 422 `invalid_amount`."""
    return None if value is None else int(client_amount(name, value, None) * 100)


def operation_query(
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Words of the memo or the label, case and accents ignored: each must begin a word "
            "(`elec` and `ÉLECTRICITÉ` both find `Électricité`)",
        ),
    ] = None,
    category: Annotated[
        str | None,
        Query(
            pattern=CATEGORY_PATTERN,
            max_length=81,
            description="That category and its children (`energie` takes `energie/electricite`)",
        ),
    ] = None,
    payee_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    min_amount: Annotated[
        str | None,
        Query(
            description='Lowest amount, a decimal string ("-100.00"), included (else 422 `invalid_amount`)',
            json_schema_extra=AMOUNT_SCHEMA,
        ),
    ] = None,
    max_amount: Annotated[
        str | None,
        Query(
            description='Highest amount, a decimal string ("-10.00"), included (else 422 `invalid_amount`)',
            json_schema_extra=AMOUNT_SCHEMA,
        ),
    ] = None,
    status: Annotated[Literal["pending", "booked"] | None, Query()] = None,
    source: Annotated[Literal["bank", "manual"] | None, Query()] = None,
    reconciled: Annotated[bool | None, Query()] = None,
) -> OperationQuery:
    low, high = amount_bound("min_amount", min_amount), amount_bound("max_amount", max_amount)
    if low is not None and high is not None and low > high:
        raise Problem(422, "invalid_amount", "min_amount is above max_amount")
    return OperationQuery(
        words=tuple(words_of(q or "")),
        category=category,
        payee_id=payee_id,
        min_cents=low,
        max_cents=high,
        status=status,
        source=source,
        reconciled=reconciled,
    )


Filters = Annotated[OperationQuery, Depends(operation_query)]
DateFrom = Annotated[IsoDate | None, Query(alias="from")]
DateTo = Annotated[IsoDate | None, Query(alias="to")]
Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=500)]


def unknown_operation(op_id: str) -> Problem:
    return Problem(404, "unknown_operation", f"No operation {op_id!r} in this account of this user.")


def page_view(page: OperationPage) -> OperationsPage:
    return OperationsPage(
        items=page.items, next_cursor=encode_cursor(page.next_after) if page.next_after else None
    )


# ---- user routes ---------------------------------------------------------------------------------------


@users.get("/banks", response_model=list[BankView])
async def list_banks(user_id: str, _: UserPrincipal, service: Service) -> list[BankView]:
    return [BankView(id=bank.id, name=bank.name) for bank in await service.list_banks(user_id)]


@users.get("/accounts", response_model=list[AccountView])
async def list_accounts(user_id: str, _: UserPrincipal, service: Service) -> list[AccountView]:
    return [account_out(view) for view in await service.list_accounts(user_id)]


@users.post("/accounts", response_model=AccountView, status_code=201)
async def create_account(
    user_id: str, body: AccountIn, request: Request, _: UserPrincipal, service: Service
) -> AccountView:
    return account_out(
        await service.create_account(user_id, body.name, body.currency, correlation_id_of(request))
    )


@users.delete("/accounts/{account_id}", status_code=204, responses=problem_responses(404))
async def delete_account(
    user_id: str, account_id: str, request: Request, _: UserPrincipal, service: Service
) -> Response:
    try:
        await service.delete_account(user_id, account_id, correlation_id_of(request))
    except UnknownAccount:
        raise unknown_account(account_id) from None
    return Response(status_code=204)


@users.put("/links/{aggregator_account_id}", response_model=LinkView, responses=problem_responses(404))
async def put_link(
    user_id: str, aggregator_account_id: str, body: LinkIn, _: UserPrincipal, service: Service
) -> LinkView:
    if body.import_mode is ImportMode.RECONCILE and body.target_account_id is None:
        raise Problem(
            422, "validation_error", "target_account_id: the reconcile mode needs a reconciliation account"
        )
    try:
        link = await service.put_link(
            user_id, aggregator_account_id, body.target_account_id, body.import_mode
        )
    except UnknownAccount:
        raise unknown_account(str(body.target_account_id)) from None
    return link_out(link)


@users.get("/links", response_model=list[LinkView])
async def list_links(user_id: str, _: UserPrincipal, service: Service) -> list[LinkView]:
    return [link_out(link) for link in await service.list_links(user_id)]


@users.post(
    "/accounts/{account_id}/operations",
    response_model=Operation,
    status_code=201,
    responses={**problem_responses(404), 200: {"description": "Already created with this Idempotency-Key"}},
)
async def add_manual_operation(
    user_id: str,
    account_id: str,
    body: ManualOperationIn,
    request: Request,
    response: Response,
    _: UserPrincipal,
    service: Service,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Operation:
    try:
        operation, created = await service.add_manual_operation(
            user_id,
            account_id,
            date=body.date,
            amount=client_amount("amount", body.amount, body.currency),
            currency=body.currency,
            label=body.label,
            correlation_id=correlation_id_of(request),
            idempotency_key=idempotency_key,
        )
    except UnknownAccount:
        raise unknown_account(account_id) from None
    except CurrencyMismatch as exc:
        raise Problem(422, "currency_mismatch", str(exc)) from None
    if not created:
        response.status_code = 200
    return operation


@users.get(
    "/accounts/{account_id}/operations", response_model=OperationsPage, responses=problem_responses(400, 404)
)
async def list_operations(
    user_id: str,
    account_id: str,
    _: UserPrincipal,
    service: Service,
    query: Filters,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> OperationsPage:
    after = decode_cursor(cursor) if cursor else None
    try:
        page = await service.search_operations(
            user_id, account_id, query, date_from=date_from, date_to=date_to, after=after, limit=limit
        )
    except UnknownAccount:
        raise unknown_account(account_id) from None
    return page_view(page)


@users.get("/operations", response_model=OperationsPage, responses=problem_responses(400))
async def list_all_operations(
    user_id: str,
    _: UserPrincipal,
    service: Service,
    query: Filters,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> OperationsPage:
    """The operations of every account of the user, newest first (date, then id), with the same filters
    and cursors as one account's."""
    after = decode_cursor(cursor) if cursor else None
    page = await service.search_operations(
        user_id, None, query, date_from=date_from, date_to=date_to, after=after, limit=limit
    )
    return page_view(page)


@users.get(
    "/accounts/{account_id}/operations.csv",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The operations the filters take, newest first: UTF-8 with a byte order mark, "
            "`;` between cells, decimal comma, dates DD/MM/YYYY, French column names",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **problem_responses(404),
    },
)
async def export_operations(
    user_id: str,
    account_id: str,
    _: UserPrincipal,
    service: Service,
    query: Filters,
    date_from: DateFrom = None,
    date_to: DateTo = None,
) -> StreamingResponse:
    """The account's operations as a CSV file, written a page at a time as it is sent."""
    try:
        account = await service.own_account(user_id, account_id)
    except UnknownAccount:
        raise unknown_account(account_id) from None

    async def chunks() -> AsyncIterator[bytes]:
        yield export.head()
        after: tuple[str, str] | None = None
        while True:
            page = await service.operations_of(
                account, query, date_from=date_from, date_to=date_to, after=after, limit=EXPORT_PAGE
            )
            yield export.body(page.items)
            if page.next_after is None:
                return
            after = page.next_after

    filename = export.filename_of(account.name, dt.datetime.now(dt.UTC).date())
    return StreamingResponse(
        chunks(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": export.content_disposition(filename)},
    )


@users.patch(
    "/accounts/{account_id}/operations/{operation_id}",
    response_model=Operation,
    responses=problem_responses(404, 409),
)
async def edit_operation(
    user_id: str,
    account_id: str,
    operation_id: str,
    body: ManualOperationPatch,
    request: Request,
    _: UserPrincipal,
    service: Service,
) -> Operation:
    """Changes a manual operation (the fields given). A bank operation: 409 `bank_operation`; the date
    or amount of one reconciled with a bank line: 409 `reconciled_operation` (undo the match first)."""
    try:
        operation = await service.edit_manual_operation(
            user_id,
            account_id,
            operation_id,
            date=body.date,
            amount_text=body.amount,
            currency=body.currency,
            label=body.label,
            correlation_id=correlation_id_of(request),
        )
    except UnknownAccount:
        raise unknown_account(account_id) from None
    except UnknownOperation:
        raise unknown_operation(operation_id) from None
    except InvalidAmount as exc:
        raise invalid_amount("amount", exc) from None
    except CurrencyMismatch as exc:
        raise Problem(422, "currency_mismatch", str(exc)) from None
    except OperationRefused as exc:
        raise Problem(409, exc.code, str(exc)) from None
    return operation


@users.delete(
    "/accounts/{account_id}/operations/{operation_id}",
    status_code=204,
    responses=problem_responses(404, 409),
)
async def delete_operation(
    user_id: str, account_id: str, operation_id: str, request: Request, _: UserPrincipal, service: Service
) -> Response:
    """Deletes a manual operation. A bank operation: 409 `bank_operation`; one reconciled with a bank
    line: 409 `reconciled_operation` (undo the match first)."""
    try:
        await service.delete_manual_operation(user_id, account_id, operation_id, correlation_id_of(request))
    except UnknownAccount:
        raise unknown_account(account_id) from None
    except UnknownOperation:
        raise unknown_operation(operation_id) from None
    except OperationRefused as exc:
        raise Problem(409, exc.code, str(exc)) from None
    return Response(status_code=204)


@users.delete(
    "/accounts/{account_id}/operations/{operation_id}/reconciliation",
    response_model=ReconciliationUndone,
    responses=problem_responses(404, 409),
)
async def undo_reconciliation(
    user_id: str, account_id: str, operation_id: str, request: Request, _: UserPrincipal, service: Service
) -> ReconciliationUndone:
    """Undoes the match of a manual operation with a bank line: the line becomes an operation of its own
    (categorised by the rules), the manual one is unreconciled, and reconcile mode never matches these
    two again. One not reconciled: 409 `not_reconciled`."""
    try:
        manual, bank = await service.undo_reconciliation(
            user_id, account_id, operation_id, correlation_id_of(request)
        )
    except UnknownAccount:
        raise unknown_account(account_id) from None
    except UnknownOperation:
        raise unknown_operation(operation_id) from None
    except OperationRefused as exc:
        raise Problem(409, exc.code, str(exc)) from None
    return ReconciliationUndone(operation=manual, bank_operation=bank)


# ---- ops routes ----------------------------------------------------------------------------------------


def replays_of(request: Request) -> Replays:
    return components(request, ImporterComponents).replays


@ops.post("/replay", response_model=ReplayView, status_code=202, responses=problem_responses(503))
async def start_replay(
    body: ReplayIn,
    request: Request,
    response: Response,
    _: OpsPrincipal,
    replays: Annotated[Replays, Depends(replays_of)],
) -> ReplayView:
    """Publishes the request on the account's partition of the raw topic; the importer that owns the
    partition runs it in order with the account's lines. Its status is the same on every replica."""
    try:
        status = await replays.request(
            body.user_id, body.aggregator_account_id, body.since, correlation_id_of(request)
        )
    except ReplayNotRequested as exc:
        raise Problem(503, "replay_not_requested", str(exc)) from None
    response.headers["Location"] = f"/v1/ops/replays/{quote(status.replay_id, safe='')}"
    return replay_out(status)


@ops.get("/replays/{replay_id}", response_model=ReplayView, responses=problem_responses(404))
async def get_replay(
    replay_id: str, _: OpsPrincipal, replays: Annotated[Replays, Depends(replays_of)]
) -> ReplayView:
    status = await replays.view(replay_id)
    if status is None:
        raise Problem(404, "unknown_replay", f"No replay {replay_id!r}.")
    return replay_out(status)
