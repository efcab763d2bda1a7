"""Every route of every service refuses whoever may not use it, with a problem document.

The table is every (service, method, path) of the services' OpenAPI documents, crossed with the cases
that apply to the route:

- `/v1/users/{user_id}/...`: no token, a token signed with another secret, an expired token, a token
  whose `exp` is a string or centuries ahead, whose scope is tab-separated or whose `sub` is not a user id
  (CR/LF, an emoji) -> 401; an ops token naming a user id that is not one -> 422 `invalid_user_id`;
  a valid token of ANOTHER user -> 403 (with the owner's real resource ids in the path and a valid body,
  so that only the authorisation can stop the request);
- `/v1/ops/...`: the same 401 cases; a user token without the `ops` scope -> 403;
- a `billing` token (Budgetfacile's billing backend) on any user route but the billing ones, and on
  `/v1/ops/...` -> 403: it changes plans and options, nothing else;
- the billing routes (`BILLING`: a user's plan and options): the 401 cases, another user's token and the
  user's OWN token -> 403 (only the billing backend's `billing` scope, or ops, changes them);
- routes any signed-in user may read (`ANY_USER`): the 401 cases;
- routes public by design (`PUBLIC`, each with its reason): their own protection instead (the webhook's
  shared secret, the callback's signed state), or nothing for the probes.

A route that is in none of these (a new one, say) becomes an `unclassified` case, which fails: it must be
protected by the path conventions above or listed here with its reason. The routes are read at collection
time from the OpenAPI each service's app builds (tests/openapi_documents.py), plus the routes the app
serves outside it (FastAPI's documentation pages, or a route hidden with `include_in_schema=False`); the
running services must serve exactly the same documents
(`test_running_services_serve_the_collected_documents`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from harness.devstack import WEBHOOK_SECRET, Stack, new_user
from shared.auth import issue_token
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.settings import DEV_JWT_SECRET
from tests.openapi_documents import SERVICES, built_documents, built_routes, one_of_everything, routes_of

pytestmark = pytest.mark.engines

USER_PREFIX = "/v1/users/{user_id}/"
OPS_PREFIX = "/v1/ops/"

# Routes that need no JWT, and why. "*" is every service.
PUBLIC: dict[tuple[str, str, str], str] = {
    ("*", "GET", "/healthz"): "liveness probe for the orchestrator (contract: no JWT)",
    ("*", "GET", "/readyz"): "readiness probe for the orchestrator (contract: no JWT)",
    ("*", "GET", "/metrics"): "Prometheus scrape (contract: no JWT)",
    ("connector", "GET", "/v1/callback"): (
        "the aggregator's webview sends the user's browser back here: the HMAC-signed, single-use "
        "`state` the connector issued at activation is the proof, not a JWT"
    ),
    ("connector", "POST", "/v1/webhooks/aggregator"): (
        "the aggregator's CONNECTION_SYNCED webhook: authenticated by its HMAC signature with the shared "
        "webhook secret (BI-Signature, BI-Signature-Date, as Powens signs), fresh and never seen, not a JWT"
    ),
}
# Routes FastAPI itself serves outside the OpenAPI document, and why they are public.
FRAMEWORK_PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): "the OpenAPI document (contract: no JWT): says what the API is, holds no data",
    ("GET", "/docs"): "the OpenAPI UI page (its assets served locally, shared/docs.py): holds no data",
}
# Routes any valid token may use, and why (no user in the path, no ops power).
ANY_USER: dict[tuple[str, str, str], str] = {
    ("categorizer", "GET", "/v1/categories"): "the default category tree, the same for every user",
}

# Routes under /v1/users/{user_id}/ that not even the user may call: Budgetfacile's billing backend does.
BILLING: dict[tuple[str, str, str], str] = {
    ("entitlements", "PUT", "/v1/users/{user_id}/plan"): "the plan changes after payment, by billing",
    ("entitlements", "POST", "/v1/users/{user_id}/options/{option}"): "an option is bought, through billing",
    ("entitlements", "DELETE", "/v1/users/{user_id}/options/{option}"): "a cancellation goes through billing",
}

UNAUTHENTICATED_CASES = (
    "no_token",
    "bad_signature",
    "expired",
    "garbage_token",
    "exp_as_string",
    "eternal",
    "tabbed_scope",
    "hostile_subject",
)
# a user id that is not one, in the path (percent-encoded): an emoji, then a CR/LF
HOSTILE_USER_IDS = {
    "ops_naming_emoji_user": "ali%F0%9F%98%80ce",
    "ops_naming_crlf_user": "alice%0D%0AX-Evil:%201",
}
# What a public route is checked with instead of a JWT: (service, method, path) -> cases
PUBLIC_CASES: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("connector", "GET", "/v1/callback"): ("forged_state", "state_signed_elsewhere", "tampered_state"),
    ("connector", "POST", "/v1/webhooks/aggregator"): (
        "no_webhook_signature",
        "old_secret_header",
        "wrong_webhook_signature",
    ),
}

DOCUMENTS = built_documents()


def public_reason(service: str, method: str, path: str) -> str | None:
    return (
        PUBLIC.get((service, method, path))
        or PUBLIC.get(("*", method, path))
        or FRAMEWORK_PUBLIC.get((method, path))
    )


def kind_of(service: str, method: str, path: str) -> str:
    if (service, method, path) in BILLING:
        return "billing"
    if path.startswith(USER_PREFIX):
        return "user"
    if path.startswith(OPS_PREFIX):
        return "ops"
    if (service, method, path) in ANY_USER:
        return "any_user"
    if public_reason(service, method, path):
        return "public"
    return "unclassified"


def cases_of(service: str, method: str, path: str) -> tuple[str, ...]:
    kind = kind_of(service, method, path)
    if kind == "user":
        # billing changes plans and options, nothing else of a user's
        return (
            *UNAUTHENTICATED_CASES,
            "other_user",
            "billing",
            *HOSTILE_USER_IDS,
            *hostile_bodies(service, method, path, "other_user"),
        )
    if kind == "billing":
        who = "own_user"
        return (
            *UNAUTHENTICATED_CASES,
            "other_user",
            who,
            *HOSTILE_USER_IDS,
            *hostile_bodies(service, method, path, who),
        )
    if kind == "ops":
        who = "user_without_ops"
        return (*UNAUTHENTICATED_CASES, who, "billing", *hostile_bodies(service, method, path, who))
    if kind == "any_user":
        return UNAUTHENTICATED_CASES
    if kind == "public":
        return PUBLIC_CASES.get((service, method, path), ("public_without_token",))
    return ("unclassified",)


# where the route reads a body, the refusal comes before the body is even parsed
HOSTILE_BODIES = {"malformed_body": b'{"name": "x",', "binary_body": b'{"name": "\xff\xfe'}


def hostile_bodies(service: str, method: str, path: str, forbidden: str) -> tuple[str, ...]:
    operation = DOCUMENTS[service]["paths"].get(path, {}).get(method.lower(), {})
    if "requestBody" not in operation:
        return ()
    return tuple(f"{who}+{body}" for body in HOSTILE_BODIES for who in ("no_token", forbidden))


# every route of the OpenAPI documents, and every route the apps serve outside them (which had better be
# FastAPI's own documentation pages: anything else there is unclassified, hence a failure)
ROUTES = {
    service: sorted(set(routes_of(DOCUMENTS[service])) | set(built_routes()[service])) for service in SERVICES
}
TABLE = [
    (service, method, path, case)
    for service in SERVICES
    for method, path in ROUTES[service]
    for case in cases_of(service, method, path)
]


# ---- the running stack, and a victim with real resources -----------------------------------------------


@pytest.fixture(scope="module")
def world(stack: Stack) -> dict[str, str]:
    """A victim user who owns one of everything a path can name: the values put in the paths."""
    victim = new_user("victim")
    return {
        "user_id": victim,
        **one_of_everything(stack, victim),
        "option": "auto_import",
        "replay_id": str(uuid.uuid4()),
        "erase_id": str(uuid.uuid4()),
    }


def fill(path: str, world: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in world, f"no plausible value for the path parameter {{{name}}}: add one to `world`"
        return world[name]

    return re.sub(r"\{([^}]+)\}", value, path)


def body_for(method: str, path: str, world: dict[str, str]) -> Any:
    """A valid body where the route takes one, so that only the authorisation can stop the request."""
    bodies: dict[tuple[str, str], Any] = {
        ("PUT", "/v1/users/{user_id}/plan"): {"plan": "premium"},
        ("PUT", "/v1/users/{user_id}/connections/{connection_id}/accounts"): {"selected": []},
        ("POST", "/v1/users/{user_id}/accounts"): {"name": "Intrus", "currency": "EUR"},
        ("PUT", "/v1/users/{user_id}/links/{aggregator_account_id}"): {
            "target_account_id": world["account_id"],
            "import_mode": "reconcile",
        },
        ("POST", "/v1/users/{user_id}/accounts/{account_id}/operations"): {
            "date": "2025-03-02",
            "amount": "-1.00",
            "currency": "EUR",
            "label": "intrus",
        },
        ("PATCH", "/v1/users/{user_id}/accounts/{account_id}/operations/{operation_id}"): {"label": "intrus"},
        ("POST", "/v1/ops/replay"): {
            "user_id": world["user_id"],
            "aggregator_account_id": world["aggregator_account_id"],
        },
        ("POST", "/v1/users/{user_id}/categories"): {"id": "loisirs/intrus", "label": "Intrus"},
        ("POST", "/v1/users/{user_id}/payees"): {"name": "Intrus", "category": "divers", "keywords": []},
        ("PUT", "/v1/users/{user_id}/payees/{payee_id}"): {
            "name": "Intrus",
            "category": "divers",
            "keywords": [],
        },
        ("POST", "/v1/users/{user_id}/operations/{operation_id}/payee"): {"payee_id": world["payee_id"]},
        ("POST", "/v1/users/{user_id}/categorize/preview"): {"memos": ["CB PAUL 01/03"]},
    }
    return bodies.get((method, path))


def token_for(case: str, victim: str) -> str | None:
    now = int(time.time())
    if case == "no_token":
        return None
    if case == "bad_signature":
        return issue_token("another-secret-entirely-0123456789abcdef", victim, scopes="ops")
    if case == "expired":
        claims = {"sub": victim, "scope": "ops", "iat": now - 7200, "exp": now - 3600}
        return jwt.encode(claims, DEV_JWT_SECRET, algorithm="HS256")
    if case == "garbage_token":
        return "not-a-jwt"
    if case == "exp_as_string":
        return jwt.encode(
            {"sub": victim, "scope": "ops", "exp": str(now + 600)}, DEV_JWT_SECRET, algorithm="HS256"
        )
    if case == "eternal":
        return jwt.encode({"sub": victim, "scope": "ops", "exp": 2**63}, DEV_JWT_SECRET, algorithm="HS256")
    if case == "tabbed_scope":
        claims = {"sub": victim, "scope": "read\tops\tbilling", "exp": now + 600}
        return jwt.encode(claims, DEV_JWT_SECRET, algorithm="HS256")
    if case == "hostile_subject":
        return jwt.encode({"sub": f"{victim}\r\n😀", "exp": now + 600}, DEV_JWT_SECRET, algorithm="HS256")
    if case in HOSTILE_USER_IDS:
        return issue_token(DEV_JWT_SECRET, new_user("ops"), scopes="ops")
    if case == "other_user":
        return issue_token(DEV_JWT_SECRET, new_user("intruder"))
    if case in ("user_without_ops", "own_user"):
        return issue_token(DEV_JWT_SECRET, victim)
    if case == "billing":
        return issue_token(DEV_JWT_SECRET, new_user("billing"), scopes="billing")
    raise AssertionError(case)


def assert_problem(answer: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> None:
    statuses = (status,) if isinstance(status, int) else status
    where = f"{answer.request.method} {answer.request.url.path}"
    assert answer.status_code in statuses, f"{where}: {answer.status_code} {answer.text[:300]}"
    assert answer.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE), (
        f"{where}: content-type {answer.headers['content-type']}"
    )
    body = answer.json()
    assert isinstance(body.get("code"), str), f"{where}: {body}"
    assert body["code"], where
    assert body.get("status") == answer.status_code, f"{where}: {body}"
    for member in ("type", "title", "detail"):
        assert isinstance(body.get(member), str), f"{where}: no {member} in {body}"
    if code is not None:
        assert body["code"] == code, f"{where}: {body}"


# ---- the table -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("service", "method", "path", "case"), TABLE, ids=lambda v: str(v))
def test_route_refuses_who_may_not_use_it(stack, world, service, method, path, case):
    if case == "unclassified":
        pytest.fail(
            f"{service} {method} {path} is neither under {USER_PREFIX} nor {OPS_PREFIX}, nor listed in "
            "ANY_USER or PUBLIC with its reason: protect it or list it"
        )
    url = stack.url(service) + fill(path, {**world, "user_id": HOSTILE_USER_IDS.get(case, world["user_id"])})
    if kind_of(service, method, path) == "public":
        check_public(stack, world, service, method, path, url, case)
        return
    who, _, hostile = case.partition("+")
    token = token_for(who, world["user_id"])
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if hostile:
        headers["Content-Type"] = "application/json"
        answer = httpx.request(method, url, headers=headers, content=HOSTILE_BODIES[hostile], timeout=30)
    else:
        answer = httpx.request(method, url, headers=headers, json=body_for(method, path, world), timeout=30)
    if who in UNAUTHENTICATED_CASES:
        assert_problem(answer, 401, "unauthorized")
        assert answer.headers.get("www-authenticate", "").lower().startswith("bearer"), answer.headers
    elif who in HOSTILE_USER_IDS:
        assert_problem(answer, 422, "invalid_user_id")
    else:
        assert_problem(answer, 403, "forbidden")


def check_public(
    stack: Stack, world: dict[str, str], service: str, method: str, path: str, url: str, case: str
) -> None:
    if case == "public_without_token":
        answer = httpx.request(method, url, timeout=30)
        assert answer.status_code == 200, f"{service} {method} {path}: {answer.status_code} {answer.text}"
        return
    if path == "/v1/callback":
        real_state = activation_state(stack, new_user("cb"))
        payload, _, signature = real_state.partition(".")
        forged = {
            # a state with our shape, for the victim, signed by someone who does not hold our secret
            "forged_state": f"{payload}.{'A' * len(signature)}",
            "state_signed_elsewhere": state_signed_with("not-our-secret", world["user_id"]),
            # someone else's genuine signature on a payload changed to name the victim
            "tampered_state": f"{state_payload(world['user_id'])}.{signature}",
        }[case]
        answer = httpx.get(
            url, params={"connection_id": world["connection_id"], "code": "x", "state": forged}, timeout=30
        )
        assert_problem(answer, 400, "invalid_state")
        return
    if path == "/v1/webhooks/aggregator":
        from sandbox.webhooks import signed_headers

        body = json.dumps({"connection": {"id": world["connection_id"]}, "user": {"id": "1"}}).encode()
        headers = {
            "no_webhook_signature": {},
            "old_secret_header": {"X-Webhook-Secret": WEBHOOK_SECRET},
            "wrong_webhook_signature": signed_headers(WEBHOOK_SECRET + "-wrong", url, body),
        }[case]
        answer = httpx.post(
            url, headers={**headers, "Content-Type": "application/json"}, content=body, timeout=30
        )
        assert_problem(answer, 401, "invalid_webhook_signature")
        return
    raise AssertionError(f"no check for the public route {service} {method} {path} case {case}")


def activation_state(stack: Stack, user: str) -> str:
    stack.entitle(user)
    with stack.client("connector", user) as api:
        activation = api.post(f"/v1/users/{user}/sync/activate")
    assert activation.status_code == 200, activation.text
    state: str = activation.json()["state"]
    return state


def state_payload(user: str) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps([user, "bm9uY2U", int(time.time()) + 600]).encode()).decode()


def state_signed_with(secret: str, user: str) -> str:
    from services.connector.domain.secrets import StateSigner

    state, _ = StateSigner(secret).issue(user)
    return state


# ---- the table is the running services' routes ---------------------------------------------------------


def test_running_services_serve_the_collected_documents(stack):
    """A route the running services serve and the table lacks would escape every check above."""
    for service in SERVICES:
        served = httpx.get(stack.url(service) + "/openapi.json", timeout=30).json()
        assert routes_of(served) == routes_of(DOCUMENTS[service]), service
        assert served == DOCUMENTS[service], service


def test_listed_public_routes_exist():
    """A stale listing would hide nothing today, but says a route is public that is gone."""
    every = {(s, m, p) for s in SERVICES for m, p in routes_of(DOCUMENTS[s])}
    for service, method, path in [*PUBLIC, *ANY_USER, *BILLING]:
        owners = SERVICES if service == "*" else (service,)
        assert any((s, method, path) in every for s in owners), (service, method, path)


def test_a_new_route_outside_the_conventions_fails_the_table():
    assert cases_of("connector", "POST", "/v1/something-new") == ("unclassified",)
    assert cases_of("importer", "GET", "/internal/debug") == ("unclassified",)
    assert "other_user" in cases_of("importer", "GET", "/v1/users/{user_id}/something-new")
    assert "user_without_ops" in cases_of("importer", "GET", "/v1/ops/something-new")
    assert "own_user" in cases_of("entitlements", "PUT", "/v1/users/{user_id}/plan")
    assert "billing" in cases_of("importer", "GET", "/v1/users/{user_id}/operations")
    assert "billing" in cases_of("entitlements", "POST", "/v1/ops/users/{user_id}/erase")
    assert "ops_naming_crlf_user" in cases_of("importer", "GET", "/v1/users/{user_id}/something-new")
    assert "hostile_subject" in cases_of("importer", "GET", "/v1/ops/something-new")
