"""Schemathesis against each running service's OpenAPI: hostile and valid input, bounded.

For every operation of every service (one pytest item per operation, named after it), Schemathesis
sends the schema's examples, its coverage cases (boundaries, missing and wrong-typed values, methods the
path does not take) and a bounded number of generated ones, valid and invalid. The caller is a user who
exists (entitled, a bank linked, an account, an operation and a payee of their own, whose real ids are
put in the paths of all but DELETE requests); `/v1/ops/...` is called with an ops token (erasing someone else
than the owner), plans and options with a billing token. The schemas are
the documents the services' apps build (tests/openapi_documents.py), checked equal to what the running
services serve. Every answer must:

- never be a 5xx;
- when it is a 4xx, be a problem document (`application/problem+json` with `code` and `status`);
- conform to the schema: its status is one the operation declares, its content type and body match;
- reject what the schema says is invalid (a 4xx, never a 2xx).

Bounds: `MAX_EXAMPLES` generated cases per operation (plus the coverage cases), no shrinking, a fixed seed
(the same cases on every run; change `SEED` to explore others), a request timeout, and a pytest timeout.

Schemathesis draws strings from the schema, which says what an id looks like only loosely; a second set of
items (`test_hostile_ids_and_headers_*`) draws from a strategy of hostile strings (CR/LF, NUL, emoji,
right-to-left marks, MongoDB operators, path tricks, 6,000 characters; `hostile_strings`) for every path id
of every operation, with the owner's token, and for the `X-Correlation-ID` header; the same checks apply,
and the answer never carries the hostile value back in a header.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response

from harness.devstack import Stack, new_user, pipeline_stack
from shared.auth import issue_token
from shared.problems import PROBLEM_CONTENT_TYPE
from shared.settings import DEV_JWT_SECRET
from tests.openapi_documents import SERVICES, built_documents, one_of_everything, routes_of

pytestmark = pytest.mark.engines

MAX_EXAMPLES = 25
SEED = 20261126
# the caller: a user who exists (the `owner` fixture creates what they own); named now, because the
# schemas are built at collection time with this user in every path
OWNER = new_user("fuzz")
REAL_IDS = ("connection_id", "aggregator_account_id", "account_id", "operation_id", "payee_id")


def config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": 30,
            # the owner in every path: another user's id only earns a 403 (test_route_auth covers that)
            "parameters": {"path.user_id": OWNER},
            "generation": {"max-examples": MAX_EXAMPLES, "no-shrink": True, "database": "none"},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "operations": [
                # each replay reads a whole partition of the raw topic in the background: a few suffice
                {"include-path": "/v1/ops/replay", "generation": {"max-examples": 5}},
            ],
        }
    )


DOCUMENTS = built_documents()
# a user's plan and options: changed by Budgetfacile's billing backend (scope `billing`), never the user
BILLING_PATHS = frozenset({"/v1/users/{user_id}/plan", "/v1/users/{user_id}/options/{option}"})
SCHEMAS = {name: schemathesis.openapi.from_dict(DOCUMENTS[name], config=config()) for name in SERVICES}


@pytest.fixture(scope="module")
def stack(engines, log_dir) -> Iterator[Stack]:
    with pipeline_stack(engines, log_dir, "fuzz") as running:
        for name in SERVICES:  # what is fuzzed is what the running services serve
            assert httpx.get(f"{running.url(name)}/openapi.json", timeout=30).json() == DOCUMENTS[name]
        yield running


@pytest.fixture(scope="module")
def owner(stack: Stack) -> dict[str, str]:
    """The caller owns one of everything a path names: real ids, put in the paths of non-DELETE requests."""
    user = OWNER
    return {
        **one_of_everything(stack, user),
        "user_token": issue_token(DEV_JWT_SECRET, user),
        "ops_token": issue_token(DEV_JWT_SECRET, new_user("fuzz-ops"), scopes="ops"),
        "billing_token": issue_token(DEV_JWT_SECRET, "fuzz-billing", scopes="billing"),
    }


def problem_documents(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every error answer is an RFC 9457 problem document with a stable `code`."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith(PROBLEM_CONTENT_TYPE), (
        f"{response.status_code} answered as {content_type!r}, not {PROBLEM_CONTENT_TYPE}"
    )
    body = response.json()
    assert isinstance(body, dict), f"the problem document is not an object: {body!r}"
    assert isinstance(body.get("code"), str), f"no `code` in {body}"
    assert body["code"], f"an empty `code` in {body}"
    assert body.get("status") == response.status_code, f"`status` {body.get('status')} in {body}"
    return True


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
    problem_documents,
]


def exercise(stack: Stack, owner: dict[str, str], service: str, case: Case) -> None:
    if case.method != "DELETE":  # DELETE keeps generated ids: the owner's bank and account stay
        for name in REAL_IDS:
            if name in (case.path_parameters or {}):
                case.path_parameters[name] = owner[name]
    if case.path == "/v1/ops/users/{user_id}/erase":  # erasing the owner would end the run: someone else
        case.path_parameters = {**(case.path_parameters or {}), "user_id": new_user("fuzz-erased")}
    if case.path.startswith("/v1/ops/"):
        token = owner["ops_token"]
    elif case.path in BILLING_PATHS:  # plans and options: what billing may do, not only its refusal
        token = owner["billing_token"]
    else:
        token = owner["user_token"]
    headers = {"Authorization": f"Bearer {token}"}
    response = case.call(base_url=stack.url(service), headers=headers)
    case.validate_response(response, checks=CHECKS, headers=headers)


def item_name(service: str, method: str, path: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
    return f"test_{service}_{method.lower()}_{words}"


def operation_test(service: str, method: str, path: str) -> Any:
    """One pytest item per operation (Schemathesis names its items alike under pytest 9.2's node ids)."""

    def test(case: Case, stack: Stack, owner: dict[str, str]) -> None:
        exercise(stack, owner, service, case)

    test.__name__ = test.__qualname__ = item_name(service, method, path)
    # an exclude: `include` filters are OR-ed with the config's per-operation entries, which match all
    only = SCHEMAS[service].exclude(
        lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) != (method, path)
    )
    return pytest.mark.timeout(120)(only.parametrize()(test))


for _service in SERVICES:
    for _method, _path in routes_of(DOCUMENTS[_service]):
        globals()[item_name(_service, _method, _path)] = operation_test(_service, _method, _path)


# ---- hostile strings in path ids and headers -------------------------------------------------------------
HOSTILE_IDS = (
    "😀",
    "a\r\nX-Injected: 1",
    "a\x00b",
    "\u202egnp.exe",
    '{"$gt": ""}',
    "$where",
    "..",
    "%2e%2e%2f",
    "' OR '1'='1",
    "<script>alert(1)</script>",
    "١٢",
    "x" * 6000,
)
HOSTILE_HEADERS = ("x" * 6000, "abc\tdef", 'say "hi"', "<script>", "é", "a;b,c")


def hostile_strings() -> st.SearchStrategy[str]:
    """Ids as an attacker writes them: the known tricks, and any text at all."""
    return st.sampled_from(HOSTILE_IDS) | st.text(min_size=1, max_size=300)


def header_values() -> st.SearchStrategy[bytes]:
    """What a client can put in a header (no CR/LF/NUL: HTTP/1.1 itself refuses those)."""
    latin = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
    # (nor leading or trailing blanks: httpx refuses to send them, and a server would strip them)
    texts = st.text(latin, min_size=1, max_size=400).map(str.strip).filter(bool)
    return (st.sampled_from(HOSTILE_HEADERS) | texts).map(lambda text: text.encode("latin-1"))


def hostile_test(service: str, method: str, path: str) -> Any:
    names = re.findall(r"\{([^}]+)\}", path)

    @pytest.mark.timeout(120)
    @settings(
        max_examples=12,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(ids=st.fixed_dictionaries({name: hostile_strings() for name in names}), header=header_values())
    def test(stack: Stack, owner: dict[str, str], ids: dict[str, str], header: bytes) -> None:
        if path.startswith("/v1/ops/"):
            token = owner["ops_token"]
        elif path in BILLING_PATHS:
            token = owner["billing_token"]
        else:
            token = owner["user_token"]
        # the owner stays the user (a hostile user id with an ops token is test_route_auth's 422)
        values = {**ids, "user_id": OWNER} if "user_id" in ids and not path.startswith("/v1/ops/") else ids
        url = stack.url(service) + re.sub(
            r"\{([^}]+)\}", lambda match: quote(values[match.group(1)], safe=""), path
        )
        headers: dict[str, str | bytes] = {"Authorization": f"Bearer {token}", "X-Correlation-ID": header}
        answer = httpx.request(method, url, headers=headers, timeout=30)
        where = f"{method} {path} {values!r} correlation {header[:60]!r}"
        assert answer.status_code < 500, f"{where}: {answer.status_code} {answer.text[:300]}"
        if answer.status_code >= 400:
            content_type = answer.headers.get("content-type", "")
            assert content_type.startswith(PROBLEM_CONTENT_TYPE), f"{where}: {content_type}"
            assert isinstance(answer.json().get("code"), str), where
        answered = answer.headers.get("x-correlation-id", "")
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", answered), f"{where}: correlation {answered!r}"
        for value in (*values.values(), header.decode("latin-1")):
            if len(value) >= 4 and not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", value):
                assert all(value not in v for v in answer.headers.values()), f"{where}: echoed in a header"

    test.__name__ = test.__qualname__ = item_name(service, method, path).replace(
        "test_", "test_hostile_ids_and_headers_", 1
    )
    return test


for _service in SERVICES:
    for _method, _path in routes_of(DOCUMENTS[_service]):
        _hostile = hostile_test(_service, _method, _path)
        globals()[_hostile.__name__] = _hostile
