"""The webhooks' signature as Powens makes it (BI-Signature, BI-Signature-Date), checked by the connector,
made by the sandbox; and the defensive parsing of their bodies."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from sandbox.webhooks import sign, signed_headers
from services.connector.api import MAX_WEBHOOK_DEPTH, nesting_depth, webhook_body
from services.connector.domain.secrets import InvalidWebhook, WebhookVerifier, parse_signature_date
from shared.problems import Problem

SECRET = "webhook-secret-for-the-unit-tests"
PATH = "/v1/webhooks/aggregator"
NOW = datetime(2026, 12, 1, 3, 0, 0, tzinfo=UTC)
BODY = b'{"user":{"id":7},"connection":{"id":101,"accounts":[]}}'


def powens_signature(secret: str, date: str, body: bytes) -> str:
    """Written out from Powens' description, independently of both implementations."""
    message = f"POST.{PATH}.{date}.".encode() + body
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def test_the_sandbox_signs_as_powens_and_the_connector_checks_the_same_scheme():
    headers = signed_headers(SECRET, f"http://connector.test:8002{PATH}", BODY, NOW)
    date = headers["BI-Signature-Date"]
    assert date == "2026-12-01T03:00:00.000000Z"
    assert headers["BI-Signature"] == powens_signature(SECRET, date, BODY)
    assert sign(SECRET, "post", PATH, date, BODY) == headers["BI-Signature"]
    verifier = WebhookVerifier(SECRET)
    digest = verifier.verify("POST", PATH, headers["BI-Signature"], date, BODY, now=NOW)
    assert len(digest) == 64
    # the same signature twice names the same digest (what a replay repeats); another one another
    assert verifier.verify("POST", PATH, headers["BI-Signature"], date, BODY, now=NOW) == digest
    later = signed_headers(SECRET, PATH, BODY, NOW + timedelta(microseconds=1))
    assert (
        verifier.verify("POST", PATH, later["BI-Signature"], later["BI-Signature-Date"], BODY, now=NOW)
        != digest
    )


@pytest.mark.parametrize(
    "change",
    ["secret", "path", "method", "body", "date", "no signature", "no date", "garbage"],
)
def test_anything_else_signed_or_nothing_signed_is_refused(change: str):
    date = "2026-12-01T03:00:00.000000Z"
    signature = powens_signature(SECRET, date, BODY)
    method, path, body = "POST", PATH, BODY
    given_signature: str | None = signature
    given_date: str | None = date
    if change == "secret":
        given_signature = powens_signature("another-secret", date, BODY)
    elif change == "path":
        path = "/v1/webhooks/other"
    elif change == "method":
        method = "PUT"
    elif change == "body":
        body = BODY + b" "
    elif change == "date":
        given_date = "2026-12-01T03:00:01.000000Z"
    elif change == "no signature":
        given_signature = None
    elif change == "no date":
        given_date = None
    else:
        given_signature = "not base64 at all"
    with pytest.raises(InvalidWebhook) as refused:
        WebhookVerifier(SECRET).verify(method, path, given_signature, given_date, body, now=NOW)
    assert refused.value.code == "invalid_webhook_signature"


@pytest.mark.parametrize("offset", [timedelta(minutes=-5, seconds=-1), timedelta(minutes=5, seconds=1)])
def test_a_date_outside_the_tolerance_is_refused(offset: timedelta):
    headers = signed_headers(SECRET, PATH, BODY, NOW + offset)
    with pytest.raises(InvalidWebhook) as refused:
        WebhookVerifier(SECRET, timedelta(minutes=5)).verify(
            "POST", PATH, headers["BI-Signature"], headers["BI-Signature-Date"], BODY, now=NOW
        )
    assert refused.value.code == "stale_webhook_signature"
    inside = signed_headers(SECRET, PATH, BODY, NOW + offset / 2)
    WebhookVerifier(SECRET).verify(
        "POST", PATH, inside["BI-Signature"], inside["BI-Signature-Date"], BODY, now=NOW
    )


def test_signature_dates_iso_or_http_dates():
    assert parse_signature_date("2026-12-01T03:00:00Z") == NOW
    assert parse_signature_date("2026-12-01T04:00:00+01:00") == NOW
    assert parse_signature_date("2026-12-01T03:00:00") == NOW  # no offset: UTC
    assert parse_signature_date(format_datetime(NOW, usegmt=True)) == NOW  # Tue, 01 Dec 2026 03:00:00 GMT
    for bad in ("", "yesterday", "2026-13-01", "1733022000"):
        assert parse_signature_date(bad) is None
    date = format_datetime(NOW, usegmt=True)
    WebhookVerifier(SECRET).verify("POST", PATH, powens_signature(SECRET, date, BODY), date, BODY, now=NOW)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b'{"a":' * (MAX_WEBHOOK_DEPTH + 1) + b"1" + b"}" * (MAX_WEBHOOK_DEPTH + 1),
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"",
    ],
)
def test_webhook_bodies_too_deep_not_json_or_not_objects_are_422(raw: bytes):
    with pytest.raises(Problem) as refused:
        webhook_body(raw)
    assert (refused.value.status, refused.value.code) == (422, "validation_error")


def test_a_webhook_body_as_deep_as_allowed_is_read():
    raw = b'{"a":' * (MAX_WEBHOOK_DEPTH - 1) + b"{}" + b"}" * (MAX_WEBHOOK_DEPTH - 1)
    assert nesting_depth(webhook_body(raw)) == MAX_WEBHOOK_DEPTH
    assert webhook_body(BODY)["connection"]["id"] == 101
    assert nesting_depth(1) == 0
    assert nesting_depth({"a": [1, {"b": []}]}) == 4
