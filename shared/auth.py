"""JWT bearer auth as the contract says: HS256, `exp` required, `sub` is the user, scope `ops` for ops.

Routes declare what they need with the dependencies `user_principal` (path has `{user_id}`) and
`ops_principal` (`/v1/ops/...`). No token, a bad signature or an expired one: 401. Wrong user or
missing scope: 403.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.logging import bind_context
from shared.problems import Problem

ALGORITHM = "HS256"
OPS_SCOPE = "ops"

_bearer = HTTPBearer(auto_error=False, description="JWT (HS256) with `sub` = user id, `scope` may hold `ops`")


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]

    @property
    def is_ops(self) -> bool:
        return OPS_SCOPE in self.scopes


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


UserPrincipal = Annotated[Principal, Depends(user_principal)]
OpsPrincipal = Annotated[Principal, Depends(ops_principal)]
