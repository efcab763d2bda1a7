"""HTTP API of the contract: read the rights, change the plan, subscribe to and cancel options."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict

from services.entitlements.components import EntitlementsComponents
from services.entitlements.domain import Option, OptionIncludedInPlan, Plan, cancel, change_plan, subscribe
from services.entitlements.erasure import Erasures, erasure_view
from services.entitlements.handlers import EntitlementsHandlers, view
from shared.auth import BillingPrincipal, OpsPrincipal, UserPrincipal, check_user_id
from shared.problems import Problem, problem_responses
from shared.service import components, correlation_id_of

router = APIRouter(
    prefix="/v1/users/{user_id}", tags=["entitlements"], responses=problem_responses(401, 403, 422)
)


class EntitlementsView(BaseModel):
    user_id: str
    plan: Plan
    options: list[Option]
    auto_sync_allowed: bool
    reason: str | None
    code: str
    version: int


class PlanChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan: Plan


class HistoryEntry(BaseModel):
    version: int
    action: str
    plan: Plan
    options: list[Option]
    detail: dict[str, str]
    at: Any
    request_id: str
    # who made the change: the token's `sub` and scope (absent on entries older than the billing scope)
    actor: dict[str, str] | None = None


def handlers_of(request: Request) -> EntitlementsHandlers:
    return components(request, EntitlementsComponents).handlers


Handlers = Annotated[EntitlementsHandlers, Depends(handlers_of)]


def erasures_of(request: Request) -> Erasures:
    return components(request, EntitlementsComponents).erasures


ErasuresDep = Annotated[Erasures, Depends(erasures_of)]
ops_router = APIRouter(prefix="/v1/ops", tags=["erasure"], responses=problem_responses(401, 403, 422))


class EraseAccepted(BaseModel):
    erase_id: str


class ServiceErased(BaseModel):
    erased_at: datetime
    documents_deleted: int


class ErasureView(BaseModel):
    erase_id: str
    user_id: str
    requested_at: datetime
    state: Literal["in_progress", "done"]
    # each service's answer; null until it has removed its documents of the user
    services: dict[str, ServiceErased | None]


@ops_router.post("/users/{user_id}/erase", status_code=202, response_model=EraseAccepted)
async def erase_user(
    user_id: str, request: Request, _: OpsPrincipal, erasures: ErasuresDep
) -> dict[str, str]:
    """Erases the user from every service (RGPD art. 17): their data key is destroyed at once (their
    records in the event log no longer open), then each service removes its documents. Idempotent."""
    check_user_id(user_id)
    doc = await erasures.request(user_id, correlation_id_of(request))
    return {"erase_id": doc["_id"]}


@ops_router.get("/erasures/{erase_id}", response_model=ErasureView, responses=problem_responses(404))
async def get_erasure(erase_id: str, _: OpsPrincipal, erasures: ErasuresDep) -> dict[str, Any]:
    doc = await erasures.registry.get(erase_id)
    if doc is None:
        raise Problem(404, "unknown_erasure", f"No erasure {erase_id!r}.")
    return erasure_view(doc)


def known_option(option: str) -> Option:
    try:
        return Option(option)
    except ValueError:
        known = ", ".join(o.value for o in Option)
        raise Problem(404, "unknown_option", f"No option named {option!r}; known options: {known}.") from None


@router.get("/entitlements", response_model=EntitlementsView)
async def get_entitlements(user_id: str, _: UserPrincipal, handlers: Handlers) -> dict[str, Any]:
    return view(await handlers.get(user_id))


@router.put("/plan", response_model=EntitlementsView)
async def put_plan(
    user_id: str, body: PlanChange, request: Request, billing: BillingPrincipal, handlers: Handlers
) -> dict[str, Any]:
    state, _changed = await handlers.apply(
        user_id, lambda current: change_plan(current, body.plan), correlation_id_of(request), billing.actor()
    )
    return view(state)


@router.post("/options/{option}", response_model=EntitlementsView, responses=problem_responses(404, 409))
async def subscribe_option(
    user_id: str, option: str, request: Request, billing: BillingPrincipal, handlers: Handlers
) -> dict[str, Any]:
    wanted = known_option(option)
    try:
        state, _changed = await handlers.apply(
            user_id, lambda current: subscribe(current, wanted), correlation_id_of(request), billing.actor()
        )
    except OptionIncludedInPlan:
        raise Problem(
            409,
            "option_included_in_plan",
            "L'abonnement Premium inclut déjà l'option Auto-Import : rien à souscrire.",
        ) from None
    return view(state)


@router.delete("/options/{option}", response_model=EntitlementsView, responses=problem_responses(404))
async def cancel_option(
    user_id: str, option: str, request: Request, billing: BillingPrincipal, handlers: Handlers
) -> dict[str, Any]:
    wanted = known_option(option)
    state, _changed = await handlers.apply(
        user_id, lambda current: cancel(current, wanted), correlation_id_of(request), billing.actor()
    )
    return view(state)


@router.get("/entitlements/history", response_model=list[HistoryEntry])
async def get_history(
    user_id: str, _: UserPrincipal, handlers: Handlers, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[dict[str, Any]]:
    return await handlers.repository.list_history(user_id, limit)
