"""JWT bearer auth as the contract says: HS256, `exp` required, `sub` is the user, scope `ops` for ops.

A token is refused (401) unless `exp` is a number no further than `max_lifetime_s` ahead, `sub` is a
valid user id (`USER_ID_PATTERN`), `scope` is space-separated RFC 6749 scope tokens, and, when the
deployment configures them, `iss` and `aud` are the expected ones.

Routes declare what they need with the dependencies `user_principal` (path has `{user_id}`),
`ops_principal` (`/v1/ops/...`) and `billing_principal` (a user's plan and options: Budgetfacile's
billing backend changes them after payment, never the user; scope `billing` or `ops`, any user).
No token, a bad signature or an expired one: 401. Wrong user or missing scope: 403.
"""

from __future__ import annotations

import inspect
import json
import re
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

from shared.http_problems import problem_response
from shared.logging import bind_context
from shared.problems import Problem
from shared.text import CONTROL_CHARACTERS

ALGORITHM = "HS256"
OPS_SCOPE = "ops"
BILLING_SCOPE = "billing"
# a user id (a token's `sub`, a path's `{user_id}`): 1-128 ASCII letters, digits and . _ : @ -, starting
# with a letter or a digit; ids go into URLs, headers, logs and documents as they are
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
USER_ID_RULE = "1-128 letters, digits and . _ : @ -, starting with a letter or digit"
# RFC 6749 §3.3: scope = scope-token *( SP scope-token ), scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")
DEFAULT_MAX_TOKEN_LIFETIME_S = 24 * 3600

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


def is_user_id(value: str) -> bool:
    return USER_ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True)
class TokenPolicy:
    """How this deployment signs and checks tokens (`BANKSYNC_JWT_*` settings)."""

    secret: str
    max_lifetime_s: int = DEFAULT_MAX_TOKEN_LIFETIME_S
    issuer: str | None = None
    audience: str | None = None

    def issue(self, subject: str, *, scopes: str = "", ttl_s: int = 3600) -> str:
        """Mint a token (tests, demo, the ops command, service-to-service calls); production user tokens
        come from the app's identity service."""
        now = int(time.time())
        claims: dict[str, object] = {"sub": subject, "iat": now, "exp": now + ttl_s}
        if scopes:
            claims["scope"] = scopes
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def decode(self, token: str) -> Principal:
        required = ["exp", "sub", *(["iss"] if self.issuer else []), *(["aud"] if self.audience else [])]
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("The token has expired.") from exc
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("The token is invalid.") from exc
        expires = claims["exp"]
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise _unauthorized("The token's `exp` must be a number (seconds since the epoch).")
        if expires - time.time() > self.max_lifetime_s:
            raise _unauthorized(f"The token lives too long: at most {self.max_lifetime_s} s ahead.")
        subject, scope = claims["sub"], claims.get("scope", "")
        if not isinstance(subject, str) or not is_user_id(subject):
            raise _unauthorized(f"The token's `sub` is not a valid user id ({USER_ID_RULE}).")
        if not isinstance(scope, str):
            raise _unauthorized("The token's `scope` must be a string.")
        scopes = scope.split(" ") if scope else []
        if not all(_SCOPE_TOKEN.fullmatch(each) for each in scopes):
            raise _unauthorized("The token's `scope` must be scope words separated by single spaces.")
        return Principal(subject=subject, scopes=frozenset(scopes))


def issue_token(secret: str, subject: str, *, scopes: str = "", ttl_s: int = 3600) -> str:
    """A token of a deployment without issuer or audience (tests, the local stack)."""
    return TokenPolicy(secret).issue(subject, scopes=scopes, ttl_s=ttl_s)


def decode_token(secret: str, token: str) -> Principal:
    return TokenPolicy(secret).decode(token)


# where shared.ratelimit leaves the token it verified and its principal, so that it is verified once
VERIFIED_TOKEN_KEY = "banksync.verified_token"


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="banksync"'})


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("A bearer token is required.")
    policy: TokenPolicy = request.app.state.token_policy
    verified = request.scope.get(VERIFIED_TOKEN_KEY)
    if verified is not None and verified[0] == credentials.credentials:
        found: Principal = verified[1]
    else:
        found = policy.decode(credentials.credentials)
    bind_context(principal=found.subject)
    return found


async def user_principal(user_id: str, found: Annotated[Principal, Depends(principal)]) -> Principal:
    """For `/v1/users/{user_id}/...`: the token's subject, or an ops token."""
    if found.subject != user_id and not found.is_ops:
        raise Problem(403, "forbidden", "This token may not act on another user's data.")
    check_user_id(user_id)
    bind_context(user_id=user_id)
    return found


def check_user_id(user_id: str) -> None:
    """An ops or billing token may name any user: the id must still be one (never an emoji, a CR/LF or
    a 10 kB string that would go into a `Location` header, a log line or an aggregator call)."""
    if not is_user_id(user_id):
        raise Problem(422, "invalid_user_id", f"The user id in the path is not valid ({USER_ID_RULE}).")


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
    check_user_id(user_id)
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
    takes = ", ".join(sorted(known)) or "none"
    raise await refusal(request) or Problem(
        422,
        "unknown_parameter",
        f"Unknown query parameter(s) {', '.join(repr(name) for name in unknown)}; this route takes: {takes}.",
    )


# a path id (account, connection, operation, payee, replay, erasure...) longer than this names nothing
MAX_PATH_ID_CHARS = 200


def _strings_of(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_of(item)


async def plain_inputs(request: Request) -> None:
    """What a client sends is text a store can keep (after the auth refusal, as every invalid request):
    - a path id over `MAX_PATH_ID_CHARS` or with a control character (NUL, CR/LF, tab) is a 422
      `invalid_id`: it names nothing, and must not reach a query or a log line (`{user_id}` has its own,
      stricter rule);
    - a NUL character in a query parameter or anywhere in a JSON body is a 422 `invalid_text`: PostgreSQL,
      under FerretDB, refuses it in any stored or compared text (a 500 otherwise), and no memo, label or
      name has one."""
    bad_ids = sorted(
        name
        for name, value in request.path_params.items()
        if name != "user_id"
        and isinstance(value, str)
        and (len(value) > MAX_PATH_ID_CHARS or CONTROL_CHARACTERS.search(value))
    )
    has_nul = any("\x00" in value for value in request.query_params.values())
    if not bad_ids and not has_nul and "json" in request.headers.get("content-type", ""):
        body = await request.body()  # read once: FastAPI's own parsing gets the same bytes
        if b"\\u0000" in body:  # the only way JSON writes a NUL; parsed to be sure it is one
            try:
                has_nul = any("\x00" in text for text in _strings_of(json.loads(body)))
            except (ValueError, RecursionError):
                has_nul = False  # not JSON: the route's own validation answers that
    if bad_ids:
        raise await refusal(request) or Problem(
            422,
            "invalid_id",
            f"Path parameter(s) {', '.join(bad_ids)}: at most {MAX_PATH_ID_CHARS} characters, "
            "no control characters.",
        )
    if has_nul:
        raise await refusal(request) or Problem(
            422, "invalid_text", "Text may not contain the NUL character (U+0000)."
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
