"""HTTP API of the contract: read the rights, change the plan, subscribe to and cancel options."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict

from services.entitlements.components import EntitlementsComponents
from services.entitlements.domain.commands import OptionIncludedInPlan, cancel, change_plan, subscribe
from services.entitlements.domain.erasure import Erasure
from services.entitlements.domain.history import Actor, ChangeRecord
from services.entitlements.domain.rights import Entitlements, Option, Plan, decide
from services.entitlements.handlers import EntitlementsHandlers, ErasureHandlers
from shared.auth import BillingPrincipal, OpsPrincipal, Principal, UserPrincipal, check_user_id
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

    @classmethod
    def of(cls, entitlements: Entitlements) -> EntitlementsView:
        decision = decide(entitlements)
        return cls(
            user_id=entitlements.user_id,
            plan=entitlements.plan,
            options=sorted(entitlements.options),
            auto_sync_allowed=decision.allowed,
            reason=decision.reason,
            code=decision.code,
            version=entitlements.version,
        )


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

    @classmethod
    def of(cls, record: ChangeRecord) -> HistoryEntry:
        return cls(
            version=record.version,
            action=record.action.value,
            plan=record.after.plan,
            options=sorted(record.after.options),
            detail=record.detail,
            at=record.at,
            request_id=record.request_id,
            actor=record.actor.as_dict() if record.actor else None,
        )


def handlers_of(request: Request) -> EntitlementsHandlers:
    return components(request, EntitlementsComponents).handlers


Handlers = Annotated[EntitlementsHandlers, Depends(handlers_of)]


def erasures_of(request: Request) -> ErasureHandlers:
    return components(request, EntitlementsComponents).erasures


Erasures = Annotated[ErasureHandlers, Depends(erasures_of)]
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

    @classmethod
    def of(cls, erasure: Erasure) -> ErasureView:
        return cls(
            erase_id=erasure.erase_id,
            user_id=erasure.user_id,
            requested_at=erasure.requested_at,
            state=erasure.state,
            services={
                name: None
                if answer is None
                else ServiceErased(erased_at=answer.erased_at, documents_deleted=answer.documents_deleted)
                for name, answer in erasure.services.items()
            },
        )


def actor_of(principal: Principal) -> Actor:
    return Actor.of(principal.actor())


@ops_router.post("/users/{user_id}/erase", status_code=202, response_model=EraseAccepted)
async def erase_user(user_id: str, request: Request, _: OpsPrincipal, erasures: Erasures) -> EraseAccepted:
    """Erases the user from every service (RGPD art. 17): their data key is destroyed at once (their
    records in the event log no longer open), then each service removes its documents. Idempotent."""
    check_user_id(user_id)
    erasure = await erasures.request(user_id, correlation_id_of(request))
    return EraseAccepted(erase_id=erasure.erase_id)


@ops_router.get("/erasures/{erase_id}", response_model=ErasureView, responses=problem_responses(404))
async def get_erasure(erase_id: str, _: OpsPrincipal, erasures: Erasures) -> ErasureView:
    erasure = await erasures.get(erase_id)
    if erasure is None:
        raise Problem(404, "unknown_erasure", f"No erasure {erase_id!r}.")
    return ErasureView.of(erasure)


def known_option(option: str) -> Option:
    try:
        return Option(option)
    except ValueError:
        known = ", ".join(o.value for o in Option)
        raise Problem(404, "unknown_option", f"No option named {option!r}; known options: {known}.") from None


@router.get("/entitlements", response_model=EntitlementsView)
async def get_entitlements(user_id: str, _: UserPrincipal, handlers: Handlers) -> EntitlementsView:
    return EntitlementsView.of(await handlers.get(user_id))


@router.put("/plan", response_model=EntitlementsView)
async def put_plan(
    user_id: str, body: PlanChange, request: Request, billing: BillingPrincipal, handlers: Handlers
) -> EntitlementsView:
    state, _changed = await handlers.apply(
        user_id,
        lambda current: change_plan(current, body.plan),
        correlation_id_of(request),
        actor_of(billing),
    )
    return EntitlementsView.of(state)


@router.post("/options/{option}", response_model=EntitlementsView, responses=problem_responses(404, 409))
async def subscribe_option(
    user_id: str, option: str, request: Request, billing: BillingPrincipal, handlers: Handlers
) -> EntitlementsView:
    wanted = known_option(option)
    try:
        state, _changed = await handlers.apply(
            user_id, lambda current: subscribe(current, wanted), correlation_id_of(request), actor_of(billing)
        )
    except OptionIncludedInPlan:
        raise Problem(
            409,
            "option_included_in_plan",
            "L'abonnement Premium inclut déjà l'option Auto-Import : rien à souscrire.",
        ) from None
    return EntitlementsView.of(state)


@router.delete("/options/{option}", response_model=EntitlementsView, responses=problem_responses(404))
async def cancel_option(
    user_id: str, option: str, request: Request, billing: BillingPrincipal, handlers: Handlers
) -> EntitlementsView:
    wanted = known_option(option)
    state, _changed = await handlers.apply(
        user_id, lambda current: cancel(current, wanted), correlation_id_of(request), actor_of(billing)
    )
    return EntitlementsView.of(state)


@router.get("/entitlements/history", response_model=list[HistoryEntry])
async def get_history(
    user_id: str, _: UserPrincipal, handlers: Handlers, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[HistoryEntry]:
    return [HistoryEntry.of(record) for record in await handlers.history(user_id, limit)]
