"""Hostile input on the running services (issue #17, points 5 and 7): amounts that are not exact ASCII
decimals of their currency are 422 `invalid_amount` and store nothing; an aggregator line with more places
than its currency goes to the DLQ with the reason; bodies past the limit are 413 `payload_too_large`
before any route runs; free text past its field's limit is 422 `validation_error`. And too many requests
(issue #16): a token past its burst is 429 `rate_limited` with `Retry-After`, other callers still served.

The importer and the categorizer run as their own processes on the real engines (Kafka + FerretDB), with
databases and consumer groups of their own, as in test_operations_api and test_categorizer_service.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from harness.devstack import Engines, ServiceProcess, categorizer_alone, new_user
from harness.waiting import wait_for
from shared.contract.envelope import account_key
from shared.contract.topics import DLQ, TRANSACTIONS_RAW
from tests.importer_support import (
    RawProducer,
    Txn,
    account_for,
    api,
    raw_event,
    read_topic,
)
from tests.kafka_helpers import dlq_origin

pytestmark = pytest.mark.engines

DATABASE = "importer_it_input_limits"
MIB = 1024 * 1024
BAD_AMOUNTS = [
    "-1.005",  # was stored as "-1.00"
    "0.123456789012345678901234567890",  # 30 decimals, were rounded
    "١٢",  # Arabic-Indic digits, were 12.00
    "1_000.00",  # was 1000.00
    "+1.50",  # was 1.50
]


def assert_problem(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = answer.json()
    assert problem["code"] == code, problem
    assert problem["status"] == status
    return problem


def manual_account(client: httpx.Client, user: str, currency: str = "EUR") -> str:
    created = client.post(
        f"/v1/users/{user}/accounts", json={"name": f"Compte {currency}", "currency": currency}
    )
    assert created.status_code == 201, created.text
    account_id: str = created.json()["account_id"]
    return account_id


def operations(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    answer = client.get(path, params={"limit": 500})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def op_body(amount: str, currency: str = "EUR", label: str = "Boulangerie") -> dict[str, str]:
    return {"date": "2026-08-10", "amount": amount, "currency": currency, "label": label}


# ---- amounts ----------------------------------------------------------------------------------------------


def test_amounts_that_are_not_exact_ascii_decimals_are_refused_and_nothing_is_stored(importer):
    user = new_user("amounts")
    with api(importer.url, user) as client:
        path = f"/v1/users/{user}/accounts/{manual_account(client, user)}/operations"
        for bad in BAD_AMOUNTS:
            problem = assert_problem(client.post(path, json=op_body(bad)), 422, "invalid_amount")
            assert problem["detail"].startswith("amount: ")
        assert operations(client, path) == []
        twelve = client.post(path, json=op_body("12"))
        assert twelve.status_code == 201, twelve.text
        assert twelve.json()["amount"] == "12.00"
        debit = client.post(path, json=op_body("-42.50"))
        assert debit.status_code == 201, debit.text
        assert debit.json()["amount"] == "-42.50"
        # an edit is held to the same rule, and changes nothing when refused
        edit = f"{path}/{debit.json()['id']}"
        for bad in BAD_AMOUNTS:
            assert_problem(client.patch(edit, json={"amount": bad}), 422, "invalid_amount")
        assert sorted(o["amount"] for o in operations(client, path)) == ["-42.50", "12.00"]
        # the filters too: a bound is never rounded either
        for name in ("min_amount", "max_amount"):
            for bad in BAD_AMOUNTS:
                assert_problem(client.get(path, params={name: bad}), 422, "invalid_amount")
                assert_problem(
                    client.get(f"/v1/users/{user}/operations", params={name: bad}), 422, "invalid_amount"
                )
                assert_problem(client.get(f"{path}.csv", params={name: bad}), 422, "invalid_amount")
        both = client.get(path, params={"min_amount": "-42.50", "max_amount": "-42.5"})
        assert [o["amount"] for o in both.json()["items"]] == ["-42.50"]


def test_an_amount_has_no_more_places_than_its_currency(importer):
    user = new_user("yen")
    with api(importer.url, user) as client:
        path = f"/v1/users/{user}/accounts/{manual_account(client, user, 'JPY')}/operations"
        for bad in ("12.5", "12.0", "-1.005"):
            assert_problem(client.post(path, json=op_body(bad, "JPY")), 422, "invalid_amount")
        assert operations(client, path) == []
        created = client.post(path, json=op_body("1200", "JPY"))
        assert created.status_code == 201, created.text
        # an edit without a currency is held to the account's
        edit = f"{path}/{created.json()['id']}"
        assert_problem(client.patch(edit, json={"amount": "12.5"}), 422, "invalid_amount")
        assert client.patch(edit, json={"amount": "1300"}).status_code == 200


async def test_an_aggregator_line_with_more_places_goes_to_the_dlq_with_the_reason(importer, engines):
    user, acct = new_user("places"), "7301"
    day = dt.date(2026, 10, 5)
    bad = Txn(900, acct, day, Decimal("-1.005"), "CARTE X4974 05/10 BOULANGERIE", "BOULANGERIE")
    good = Txn(901, acct, day, Decimal("-12.50"), "CARTE X4974 05/10 DECATHLON", "DECATHLON")
    assert bad.powens()["value"] == -1.005  # the aggregator's JSON number
    async with RawProducer(engines.kafka_bootstrap) as producer:
        partition, offset = await producer.send_event(account_key(user, acct), raw_event(user, "bnp", bad))
        await producer.send(user, "bnp", [good], sync_run="run-places")

    def imported() -> list[dict[str, Any]] | None:
        with api(importer.url, user) as client:
            account = account_for(client, user, acct)
            if account is None:
                return None
            return operations(client, f"/v1/users/{user}/accounts/{account['account_id']}/operations") or None

    ops = wait_for(imported, 60, what="the good line")
    assert [(o["aggregator_transaction_id"], o["amount"]) for o in ops] == [("901", "-12.50")]

    wanted = (TRANSACTIONS_RAW, partition, offset)
    (dead,) = await read_topic(
        engines.kafka_bootstrap, DLQ, match=lambda r: dlq_origin(r) == wanted, expected=1, within_s=45
    )
    error = dict((k, v.decode()) for k, v in dead.headers)["dlq.error"]
    assert "at most 2 decimal places" in error
    assert "1.005" not in error  # the reason, never the user's amount


# ---- sizes ------------------------------------------------------------------------------------------------


def padded(body: dict[str, Any], size: int) -> bytes:
    """The JSON body followed by spaces up to `size` bytes: still valid JSON, the route would take it."""
    raw = json.dumps(body).encode()
    return raw + b" " * (size - len(raw))


def in_chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_a_body_past_the_limit_is_413_before_the_route(importer):
    user = new_user("sizes")
    headers = {"content-type": "application/json"}
    with api(importer.url, user) as client:
        path = f"/v1/users/{user}/accounts/{manual_account(client, user)}/operations"
        problem = assert_problem(
            client.post(path, content=padded(op_body("-1.00"), 2 * MIB), headers=headers),
            413,
            "payload_too_large",
        )
        assert problem["max_bytes"] == MIB
        # without a Content-Length (chunked): counted as it is read
        assert_problem(
            client.post(path, content=in_chunks(padded(op_body("-2.00"), 2 * MIB)), headers=headers),
            413,
            "payload_too_large",
        )
        assert operations(client, path) == []  # neither reached the route
        # the same body under the limit is an operation: the padding was not what refused it
        under = client.post(path, content=padded(op_body("-3.00"), MIB - 1024), headers=headers)
        assert under.status_code == 201, under.text
        assert [o["amount"] for o in operations(client, path)] == ["-3.00"]


def test_content_length_alone_is_enough_to_refuse(importer):
    """The 413 comes from the headers: the body is never waited for."""
    where = urlsplit(importer.url)
    user = new_user("declared")
    with socket.create_connection((where.hostname, where.port), timeout=10) as conn:
        conn.sendall(
            f"POST /v1/users/{user}/accounts/any/operations HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {30 * MIB}\r\n\r\n".encode()
        )
        answer = ""
        while "}" not in answer:  # the headers, then the problem document
            got = conn.recv(65536)
            if not got:
                break
            answer += got.decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "payload_too_large" in answer


def test_a_30_mb_memo_to_preview_is_413(categorizer):
    user = new_user("memo")
    with api(categorizer.url, user) as client:
        path = f"/v1/users/{user}/categorize/preview"
        assert_problem(
            client.post(path, json={"memos": ["X" * (30 * 1024 * 1024)]}), 413, "payload_too_large"
        )
        assert client.get("/healthz").status_code == 200


def test_free_text_past_its_limit_is_422(categorizer):
    user = new_user("text")
    with api(categorizer.url, user) as client:
        preview = f"/v1/users/{user}/categorize/preview"
        problem = assert_problem(
            client.post(preview, json={"memos": ["CB " + "A" * 4997]}), 422, "validation_error"
        )
        assert problem["errors"][0]["loc"] == ["body", "memos", "0"]
        real = "PRLV SEPA EDF CLIENTS PARTICULIERS ECH/050926 ID EMETTEUR/FR12ZZZ000000 MDT/00012345 REF/ABC"
        shown = client.post(preview, json={"memos": [real]})
        assert shown.status_code == 200, shown.text
        assert shown.json()[0]["memo"] == real
        assert_problem(client.post(preview, json={"memos": ["x"] * 1001}), 422, "validation_error")
        payees = f"/v1/users/{user}/payees"
        long_keyword = {"name": "EDF", "category": "energie", "keywords": ["E" * 5000]}
        assert_problem(client.post(payees, json=long_keyword), 422, "validation_error")
        many = {"name": "EDF", "category": "energie", "keywords": [f"EDF {i}" for i in range(51)]}
        assert_problem(client.post(payees, json=many), 422, "validation_error")
        assert client.get(payees).json() == []


def test_importer_text_fields_are_bounded(importer):
    user = new_user("labels")
    with api(importer.url, user) as client:
        path = f"/v1/users/{user}/accounts/{manual_account(client, user)}/operations"
        assert_problem(client.post(path, json=op_body("-1.00", label="L" * 5000)), 422, "validation_error")
        assert_problem(client.get(path, params={"q": "q" * 5000}), 422, "validation_error")
        link = client.put(f"/v1/users/{user}/links/1", json={"target_account_id": "a" * 5000})
        assert_problem(link, 422, "validation_error")
        assert operations(client, path) == []


# ---- rates ------------------------------------------------------------------------------------------------
RATE_PER_S = 0.25  # one request back every 4 s: no refill between the steps of the test
RATE_BURST = 5


@pytest.fixture(scope="module")
def limited_categorizer(engines: Engines, log_dir: Any) -> Iterator[ServiceProcess]:
    """A categorizer whose rate limit is low enough to reach in a few requests."""
    with categorizer_alone(
        engines, log_dir, "limited", RATE_LIMIT_PER_S=str(RATE_PER_S), RATE_LIMIT_BURST=str(RATE_BURST)
    ) as proc:
        yield proc


def rate_limited_count(client: httpx.Client) -> float:
    metrics = client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("banksync_errors_total{") and 'code="rate_limited"' in line
    )


def test_a_token_past_its_burst_is_429_with_retry_after_and_others_are_served(limited_categorizer):
    alice, bob = new_user("alice"), new_user("bob")
    url = limited_categorizer.url
    with api(url, alice) as client, api(url, alice) as alice_again, api(url, bob) as other:
        before = rate_limited_count(client)
        payees = f"/v1/users/{alice}/payees"
        assert [client.get(payees).status_code for _ in range(RATE_BURST)] == [200] * RATE_BURST
        refused = client.get(payees)
        problem = assert_problem(refused, 429, "rate_limited")
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 1 / RATE_PER_S
        assert problem["retry_after"] == retry_after
        # refused before the route and before its body: a body past the size limit is not even looked at
        preview = f"/v1/users/{alice}/categorize/preview"
        assert_problem(client.post(preview, json={"memos": ["X" * (2 * MIB)]}), 429, "rate_limited")
        # another token of alice's is alice: the same bucket
        assert_problem(alice_again.get(payees), 429, "rate_limited")
        # bob is served, and so are the health, readiness and metrics routes
        assert other.get(f"/v1/users/{bob}/payees").status_code == 200
        assert {client.get(path).status_code for path in ("/healthz", "/readyz", "/metrics") * 5} == {200}
        assert rate_limited_count(client) == before + 3
        # once Retry-After has passed, alice has one more request
        time.sleep(retry_after)
        assert client.get(payees).status_code == 200
        assert_problem(client.get(payees), 429, "rate_limited")
