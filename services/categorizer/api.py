"""HTTP API of the contract: categories, payees with keywords, corrections, and a pure preview."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.categorizer.components import CategorizerComponents
from services.categorizer.domain.categories import default_tree
from services.categorizer.domain.rules import (
    MAX_KEYWORDS,
    Payee,
    PayeeDraft,
    RuleError,
    RuleSet,
    add_category,
    add_payee,
    remove_payee,
    update_payee,
)
from services.categorizer.handlers import CategorizerHandlers
from services.categorizer.handlers.corrections import OperationNotFound
from services.categorizer.ports import ConcurrentUpdate
from shared.auth import Principal, UserPrincipal, principal
from shared.problems import Problem, problem_responses
from shared.service import components, correlation_id_of

MAX_PREVIEW = 1000
# free text a client sends: French bank memos are under 256 characters; a keyword is a word or a few (the
# rules keep at most domain.MAX_KEYWORD characters once its spaces are squeezed, and MAX_KEYWORDS of them)
MEMO_MAX_CHARS = 500
KEYWORD_MAX_CHARS = 200
Memo = Annotated[str, Field(max_length=MEMO_MAX_CHARS)]
Keyword = Annotated[str, Field(max_length=KEYWORD_MAX_CHARS)]

router = APIRouter(tags=["categorizer"], responses=problem_responses(401, 403, 422))


class PayeeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=200)
    category: str = Field(max_length=100)
    keywords: list[Keyword] = Field(default_factory=list, max_length=MAX_KEYWORDS)


class PayeeOut(BaseModel):
    id: str
    name: str
    category: str
    keywords: list[str]


class NewPayeeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=200)
    category: str = Field(max_length=100)
    # omitted: the keywords suggested from the operation's memo
    keywords: list[Keyword] | None = Field(default=None, max_length=MAX_KEYWORDS)


class CorrectionIn(BaseModel):
    """One of: `payee_id`, `new_payee`, `category` (a category without a payee), `clear: true` (forget
    the user's choice: the rules apply again)."""

    model_config = ConfigDict(extra="forbid")
    payee_id: str | None = Field(default=None, max_length=100)
    new_payee: NewPayeeIn | None = None
    category: str | None = Field(default=None, max_length=100)
    clear: bool | None = None

    @model_validator(mode="after")
    def exactly_one(self) -> CorrectionIn:
        given = [
            self.payee_id is not None,
            self.new_payee is not None,
            self.category is not None,
            bool(self.clear),
        ]
        if sum(given) != 1:
            raise ValueError("give exactly one of `payee_id`, `new_payee`, `category` or `clear: true`")
        return self


class TransferOut(BaseModel):
    operation_id: str
    account_id: str


class CorrectionOut(BaseModel):
    operation_id: str
    payee: PayeeOut | None = Field(
        description="null for a category alone, or when no user payee recognises it"
    )
    category: str | None
    source: str | None = Field(
        description="`manual`; after `clear`, what the rules say (`user`, `global`, null)"
    )
    rules_version: int
    suggested_keywords: list[str]
    matching_operations: int = Field(
        description="other operations of the user (not manual ones) that the suggested keywords recognise"
    )
    transfer: TransferOut | None = Field(
        default=None,
        description="the other leg, when the operation is one leg of a transfer between accounts",
    )


class CategoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=100, description="`parent/child`, parent one of the default categories")
    label: str = Field(max_length=200)


class CategoryOut(BaseModel):
    id: str
    label: str
    parent: str | None


class DefaultCategory(CategoryOut):
    children: list[CategoryOut]


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memos: list[Memo] = Field(max_length=MAX_PREVIEW)


class PayeeRefOut(BaseModel):
    id: str
    name: str | None


class PreviewOut(BaseModel):
    memo: str
    payee: PayeeRefOut | None
    category: str | None
    source: str | None
    keyword: str | None


class RulesStatus(BaseModel):
    rules_version: int
    reexamination_pending: bool


def handlers_of(request: Request) -> CategorizerHandlers:
    return components(request, CategorizerComponents).handlers


Handlers = Annotated[CategorizerHandlers, Depends(handlers_of)]
AnyUser = Annotated[Principal, Depends(principal)]


def payee_view(payee: Payee) -> dict[str, Any]:
    return {"id": payee.id, "name": payee.name, "category": payee.category, "keywords": list(payee.keywords)}


def problem_of(error: RuleError) -> Problem:
    return Problem(error.status, error.code, str(error))


def busy() -> Problem:
    """Another replica kept the user's rules (or the operation's choice) for longer than a change waits."""
    return Problem(
        409,
        "concurrent_update",
        "Another change of these rules is being saved: try again.",
        headers={"Retry-After": "1"},
    )


async def _change(handlers: CategorizerHandlers, user_id: str, request: Request, command: Any) -> Any:
    try:
        _, answer = await handlers.rules.change(user_id, command, correlation_id_of(request))
    except RuleError as error:
        raise problem_of(error) from None
    except ConcurrentUpdate:
        raise busy() from None
    return answer


@router.get("/v1/categories", response_model=list[DefaultCategory])
async def get_default_categories(_: AnyUser) -> list[dict[str, object]]:
    """The contract's default tree: its 20 categories in order, each with its default sub-categories."""
    return default_tree()


@router.get("/v1/users/{user_id}/categories", response_model=list[CategoryOut])
async def get_user_categories(user_id: str, _: UserPrincipal, handlers: Handlers) -> list[dict[str, Any]]:
    ruleset = await handlers.rules.ruleset(user_id)
    return [{"id": c.id, "label": c.label, "parent": c.parent} for c in ruleset.categories]


@router.post(
    "/v1/users/{user_id}/categories",
    response_model=CategoryOut,
    status_code=201,
    responses=problem_responses(409),
)
async def post_user_category(
    user_id: str, body: CategoryIn, request: Request, _: UserPrincipal, handlers: Handlers
) -> dict[str, Any]:
    try:
        _ruleset, category = await handlers.rules.change(
            user_id,
            lambda current: add_category(current, body.id, body.label),
            correlation_id_of(request),
            reexamine=False,
        )
    except RuleError as error:
        raise problem_of(error) from None
    except ConcurrentUpdate:
        raise busy() from None
    return {"id": category.id, "label": category.label, "parent": category.parent}


@router.get("/v1/users/{user_id}/payees", response_model=list[PayeeOut])
async def list_payees(user_id: str, _: UserPrincipal, handlers: Handlers) -> list[dict[str, Any]]:
    ruleset = await handlers.rules.ruleset(user_id)
    return [payee_view(p) for p in sorted(ruleset.payees, key=lambda p: (p.name.casefold(), p.id))]


@router.post(
    "/v1/users/{user_id}/payees", response_model=PayeeOut, status_code=201, responses=problem_responses(409)
)
async def create_payee(
    user_id: str, body: PayeeIn, request: Request, response: Response, _: UserPrincipal, handlers: Handlers
) -> dict[str, Any]:
    payee_id = str(uuid.uuid4())
    draft = PayeeDraft(body.name, body.category, tuple(body.keywords))
    payee: Payee = await _change(
        handlers, user_id, request, lambda current: add_payee(current, draft, payee_id)
    )
    response.headers["Location"] = f"/v1/users/{quote(user_id, safe='')}/payees/{quote(payee.id, safe='')}"
    return payee_view(payee)


@router.get(
    "/v1/users/{user_id}/payees/{payee_id}", response_model=PayeeOut, responses=problem_responses(404)
)
async def get_payee(user_id: str, payee_id: str, _: UserPrincipal, handlers: Handlers) -> dict[str, Any]:
    ruleset = await handlers.rules.ruleset(user_id)
    try:
        return payee_view(ruleset.payee(payee_id))
    except RuleError as error:
        raise problem_of(error) from None
    except ConcurrentUpdate:
        raise busy() from None


@router.put(
    "/v1/users/{user_id}/payees/{payee_id}", response_model=PayeeOut, responses=problem_responses(404, 409)
)
async def put_payee(
    user_id: str, payee_id: str, body: PayeeIn, request: Request, _: UserPrincipal, handlers: Handlers
) -> dict[str, Any]:
    draft = PayeeDraft(body.name, body.category, tuple(body.keywords))
    payee: Payee = await _change(
        handlers, user_id, request, lambda current: update_payee(current, payee_id, draft)
    )
    return payee_view(payee)


@router.delete("/v1/users/{user_id}/payees/{payee_id}", status_code=204, responses=problem_responses(404))
async def delete_payee(
    user_id: str, payee_id: str, request: Request, _: UserPrincipal, handlers: Handlers
) -> Response:
    def command(current: RuleSet) -> tuple[RuleSet, None]:
        return remove_payee(current, payee_id), None

    await _change(handlers, user_id, request, command)
    return Response(status_code=204)


@router.post(
    "/v1/users/{user_id}/operations/{operation_id}/payee",
    response_model=CorrectionOut,
    responses=problem_responses(404, 409),
)
async def correct_operation(
    user_id: str,
    operation_id: str,
    body: CorrectionIn,
    request: Request,
    _: UserPrincipal,
    handlers: Handlers,
) -> dict[str, Any]:
    """The user's choice for one operation (it counts as manual: later rules never overwrite it): a payee,
    a new payee, or a category alone; `{"clear": true}` forgets it and the rules apply again."""
    new_payee = None
    if body.new_payee is not None:
        new_payee = PayeeDraft(
            body.new_payee.name, body.new_payee.category, tuple(body.new_payee.keywords or ())
        )
    try:
        answer = await handlers.corrections.correct(
            user_id,
            operation_id,
            correlation_id_of(request),
            payee_id=body.payee_id,
            new_payee=new_payee,
            keywords_given=body.new_payee is None or body.new_payee.keywords is not None,
            category=body.category,
            clear=bool(body.clear),
        )
    except RuleError as error:
        raise problem_of(error) from None
    except ConcurrentUpdate:
        raise busy() from None
    except OperationNotFound:
        raise Problem(
            404, "unknown_operation", f"No operation {operation_id!r} is known for this user."
        ) from None
    return {
        "operation_id": answer.operation_id,
        "payee": None if answer.payee is None else payee_view(answer.payee),
        "category": answer.category,
        "source": answer.source,
        "rules_version": answer.rules_version,
        "suggested_keywords": list(answer.suggested_keywords),
        "matching_operations": answer.matching_operations,
        "transfer": None if answer.transfer is None else answer.transfer.model_dump(),
    }


@router.post("/v1/users/{user_id}/categorize/preview", response_model=list[PreviewOut])
async def preview(
    user_id: str, body: PreviewIn, _: UserPrincipal, handlers: Handlers
) -> list[dict[str, Any]]:
    """How these memos would be recognised now; stores nothing."""
    return [
        {
            "memo": found.memo,
            "payee": None
            if found.result.payee_id is None
            else {"id": found.result.payee_id, "name": found.result.payee_name},
            "category": found.result.category,
            "source": found.result.source,
            "keyword": found.result.keyword,
        }
        for found in await handlers.rules.preview(user_id, body.memos)
    ]


@router.get("/v1/users/{user_id}/rules/status", response_model=RulesStatus)
async def rules_status(user_id: str, _: UserPrincipal, handlers: Handlers) -> dict[str, Any]:
    """The version of the user's rules, and whether past operations are still being re-examined."""
    status = await handlers.rules.status(user_id)
    return {"rules_version": status.rules_version, "reexamination_pending": status.reexamination_pending}
