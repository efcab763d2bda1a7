"""Who may see the dashboard: an operator with an `ops` token, as for the services' `/v1/ops/...` routes.

Scripts send `Authorization: Bearer <JWT>` (the stack's token rules: `BANKSYNC_JWT_SECRET`, and the
issuer, audience and lifetime the deployment sets). A browser cannot put a header on an EventSource, so
the page has a login form: the operator pastes an ops token once (`POST /login`), and the dashboard
answers with a session cookie (HttpOnly, SameSite=Strict, Path=/) that the page, its snapshot fetch and
its event stream then carry. The token itself is not kept. The cookie is a JWT of its own, signed with a
key derived from `BANKSYNC_JWT_SECRET` (so the services refuse it as a bearer token), audience
`banksync-dashboard`, expiring with the token it came from and at most `SESSION_MAX_S` after the login;
an open event stream ends when its session does.

No credentials, or bad or expired ones: 401, the login page for a browser (`Accept: text/html`), a problem
document otherwise. A valid token without the `ops` scope: 403.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import jwt
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from shared.auth import ALGORITHM, OPS_SCOPE, TokenPolicy
from shared.http_problems import problem_response
from shared.logging import get_logger
from shared.problems import Problem

SESSION_COOKIE = "banksync_dashboard_session"
SESSION_AUDIENCE = "banksync-dashboard"
SESSION_MAX_S = 8 * 3600
MAX_LOGIN_BODY = 16 * 1024
LOGIN_PAGE = Path(__file__).resolve().parent / "login.html"
NO_CREDENTIALS = "An ops token is required: log in at /login, or send Authorization: Bearer."
# every HTML answer: not cached, not framed, no referrer to other sites
HTML_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    # not `no-referrer`: under it a browser sends `Origin: null` with the page's own login form
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
log = get_logger(__name__)


@dataclass(frozen=True)
class Operator:
    subject: str
    expires_at: float  # seconds since the epoch: the token's or the session's end
    via: str  # "bearer" or "session"


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="banksync-dashboard"'}
    )


def _forbidden() -> Problem:
    return Problem(403, "forbidden", "The `ops` scope is required.")


class DashboardAuth:
    """The FastAPI dependency of every route that shows data; it also opens and reads sessions."""

    def __init__(self, tokens: TokenPolicy, *, session_max_s: int = SESSION_MAX_S) -> None:
        self.tokens = tokens
        self.session_max_s = session_max_s
        # not the JWT secret itself: a session cookie is no bearer token for the services
        self._key = hmac.digest(tokens.secret.encode(), b"banksync dashboard session v1", hashlib.sha256)

    def check_token(self, token: str) -> Operator:
        principal = self.tokens.decode(token)  # 401 when bad, expired or malformed
        if not principal.is_ops:
            raise _forbidden()
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]  # checked by decode
        return Operator(principal.subject, float(expires), "bearer")

    def open_session(self, operator: Operator) -> tuple[str, int]:
        """The cookie's value and its max-age: it ends no later than the token."""
        now = time.time()
        expires = int(min(operator.expires_at, now + self.session_max_s))
        claims = {
            "sub": operator.subject,
            "scope": OPS_SCOPE,
            "aud": SESSION_AUDIENCE,
            "iat": int(now),
            "exp": expires,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), max(0, int(expires - now))

    def check_session(self, value: str) -> Operator:
        try:
            claims = jwt.decode(
                value,
                self._key,
                algorithms=[ALGORITHM],
                audience=SESSION_AUDIENCE,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("The session has expired: log in again.") from exc
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("The session is invalid: log in again.") from exc
        if OPS_SCOPE not in str(claims.get("scope", "")).split(" "):
            raise _forbidden()
        return Operator(str(claims["sub"]), float(claims["exp"]), "session")

    async def __call__(self, request: Request) -> Operator:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("A bearer token is required.")
            return self.check_token(token.strip())
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            return self.check_session(session)
        raise _unauthorized(NO_CREDENTIALS)


def html_page(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=HTML_HEADERS)


def login_page(status: int = 200, message: str = "") -> HTMLResponse:
    text = LOGIN_PAGE.read_text(encoding="utf-8")
    if message:
        text = text.replace("<!--MESSAGE-->", f'<p class="message" role="alert">{html.escape(message)}</p>')
    return html_page(text, status)


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def refusal(request: Request, problem: Problem) -> Response:
    """A browser asking for a page gets the login page (with the status); anything else the problem."""
    if problem.status in (401, 403) and wants_html(request):
        # not logged in yet is no error: the form alone
        response: Response = login_page(
            problem.status, "" if problem.detail == NO_CREDENTIALS else problem.detail
        )
    else:
        response = problem_response(problem)
    if problem.status == 401 and SESSION_COOKIE in request.cookies:
        clear_session(response, request)
    return response


def same_origin(request: Request) -> bool:
    """A form posted from another site (login CSRF) is refused. Browsers say where a request comes from
    (`Sec-Fetch-Site`, which no page can forge, or else `Origin` on every POST); a script that sends
    neither is no cross-site form."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


async def read_form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            raise Problem(413, "payload_too_large", f"The login form is at most {MAX_LOGIN_BODY} bytes.")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items() if values}


def set_session(response: Response, request: Request, value: str, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=max_age,
        expires=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


async def login(request: Request, auth: DashboardAuth) -> Response:
    """`POST /login` with the form field `token`: a session cookie and a redirect to the page."""
    if not same_origin(request):
        return refusal(request, Problem(403, "cross_origin", "The login form must be sent from this page."))
    token = (await read_form(request)).get("token", "").strip()
    if not token:
        return refusal(request, _unauthorized("Paste an ops token."))
    try:
        operator = auth.check_token(token)
    except Problem as problem:
        log.info("dashboard_login_refused", status=problem.status, reason=problem.detail)
        return refusal(request, problem)
    value, max_age = auth.open_session(operator)
    response = RedirectResponse("/", status_code=303, headers={"Cache-Control": "no-store"})
    set_session(response, request, value, max_age)
    log.info("dashboard_login", principal=operator.subject, session_s=max_age)
    return response


async def logout(request: Request) -> Response:
    if not same_origin(request):
        return refusal(request, Problem(403, "cross_origin", "Log out from this page."))
    response = RedirectResponse("/login", status_code=303, headers={"Cache-Control": "no-store"})
    clear_session(response, request)
    return response
