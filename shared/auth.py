"""JWT bearer auth as the contract says: HS256, `exp` required, `sub` is the user, scope `ops` for ops.

Routes declare what they need with the dependencies `user_principal` (path has `{user_id}`),
`ops_principal` (`/v1/ops/...`) and `billing_principal` (a user's plan and options: Budgetfacile's
billing backend changes them after payment, never the user; scope `billing` or `ops`, any user).
No token, a bad signature or an expired one: 401. Wrong user or missing scope: 403.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.logging import bind_context
from shared.problems import Problem, problem_response

ALGORITHM = "HS256"
OPS_SCOPE = "ops"
BILLING_SCOPE = "billing"

_bearer = HTTPBearer(auto_error=False, description="JWT (HS256) with `sub` = user id, `scope` may hold `ops`")


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]

    @property
    def is_ops(self) -> bool:
        return OPS_SCOPE in self.scopes

    @property
    def may_bill(self) -> bool:
        return BILLING_SCOPE in self.scopes or self.is_ops

    def actor(self) -> dict[str, str]:
        """Who acted, as the audit trail records it: the token's subject and its scope."""
        return {"sub": self.subject, "scope": " ".join(sorted(self.scopes))}


def issue_token(secret: str, subject: str, *, scopes: str = "", ttl_s: int = 3600) -> str:
    """Mint a token (tests, demo, the ops command); production tokens come from the app's identity service."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "iat": now, "exp": now + ttl_s}
    if scopes:
        claims["scope"] = scopes
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_token(secret: str, token: str) -> Principal:
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise _unauthorized("The token has expired.") from exc
    except jwt.InvalidTokenError as exc:
        raise _unauthorized("The token is invalid.") from exc
    scope = claims.get("scope", "")
    if not isinstance(scope, str) or not isinstance(claims["sub"], str):
        raise _unauthorized("The token's claims are malformed.")
    return Principal(subject=claims["sub"], scopes=frozenset(scope.split()))


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="banksync"'})


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("A bearer token is required.")
    secret: str = request.app.state.jwt_secret
    found = decode_token(secret, credentials.credentials)
    bind_context(principal=found.subject)
    return found


async def user_principal(user_id: str, found: Annotated[Principal, Depends(principal)]) -> Principal:
    """For `/v1/users/{user_id}/...`: the token's subject, or an ops token."""
    if found.subject != user_id and not found.is_ops:
        raise Problem(403, "forbidden", "This token may not act on another user's data.")
    bind_context(user_id=user_id)
    return found


async def ops_principal(found: Annotated[Principal, Depends(principal)]) -> Principal:
    if not found.is_ops:
        raise Problem(403, "forbidden", "The `ops` scope is required.")
    return found


async def billing_principal(user_id: str, found: Annotated[Principal, Depends(principal)]) -> Principal:
    """For a user's plan and options: the billing backend (scope `billing`) or ops, never the user."""
    if not found.may_bill:
        raise Problem(
            403,
            "forbidden",
            "Plans and options are changed by Budgetfacile's billing after payment: "
            "the `billing` scope is required.",
        )
    bind_context(user_id=user_id)
    return found


UserPrincipal = Annotated[Principal, Depends(user_principal)]
OpsPrincipal = Annotated[Principal, Depends(ops_principal)]
BillingPrincipal = Annotated[Principal, Depends(billing_principal)]


# ---- refusal before validation -------------------------------------------------------------------------
# FastAPI reads and parses a JSON body before it resolves a route's dependencies, so a malformed body used
# to earn a caller without a token (or with another user's) a 422 or a 400 describing the body instead of
# the 401/403 that the contract promises. An error answered before the dependencies ran, on a route that
# has these dependencies, therefore first answers what they would have answered.

_AUTH_DEPENDENCIES: frozenset[Callable[..., Any]] = frozenset(
    {principal, user_principal, ops_principal, billing_principal}
)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


async def refusal(request: Request) -> Problem | None:
    """The 401/403 the matched route's auth dependencies answer this request, or None when they let it by."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if not isinstance(dependant, Dependant):
        return None
    calls = set(_calls(dependant))
    if not calls & _AUTH_DEPENDENCIES:
        return None
    try:
        found = await principal(request, await _bearer(request))
        if user_principal in calls:
            await user_principal(str(request.path_params.get("user_id", "")), found)
        if ops_principal in calls:
            await ops_principal(found)
        if billing_principal in calls:
            await billing_principal(str(request.path_params.get("user_id", "")), found)
    except Problem as problem:
        return problem
    return None


def _all_dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _all_dependants(sub)


async def only_known_query_parameters(request: Request) -> None:
    """A query parameter the route does not take is a 422 `unknown_parameter` (after the auth refusal,
    as every invalid request): a misspelt filter (`?catgory=`) would otherwise be ignored in silence,
    and the answer would look like a filtered one."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if not isinstance(dependant, Dependant):
        return
    known = {param.alias for each in _all_dependants(dependant) for param in each.query_params}
    unknown = sorted(set(request.query_params) - known)
    if not unknown:
        return
    refused = await refusal(request)
    if refused is not None:
        raise refused
    takes = ", ".join(sorted(known)) or "none"
    raise Problem(
        422,
        "unknown_parameter",
        f"Unknown query parameter(s) {', '.join(repr(name) for name in unknown)}; this route takes: {takes}.",
    )


def install_auth_before_validation(app: FastAPI) -> None:
    """Call after `install_problem_handlers`: wraps its handlers of invalid requests."""
    for error in (RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(error, _refusing_first(app.exception_handlers[error]))


def _refusing_first(handler: Callable[[Request, Any], Any]) -> Callable[[Request, Exception], Any]:
    async def on_error(request: Request, exc: Exception) -> Response:
        refused = await refusal(request)
        if refused is not None:
            return problem_response(refused)
        answer = handler(request, exc)
        result: Response = await answer if inspect.isawaitable(answer) else answer
        return result

    return on_error
