"""Operations' view of one sync on the whole pipeline: the correlation id tells the whole story through
events and JSON logs, and every service's /metrics carries throughput, latency, errors by code and its
consumer lag."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.devstack import new_user
from harness.waiting import wait_for
from shared.contract.envelope import CloudEvent
from shared.contract.topics import CATEGORIZATIONS, OPERATIONS, SYNC_REQUESTS, SYNC_STATUS, TRANSACTIONS_RAW
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.timeout(300)

SERVICES = ("entitlements", "connector", "importer", "categorizer")
# entitlements consumes no topic (it publishes through its outbox): no consumer lag of its own
CONSUMING = ("connector", "importer", "categorizer")


def log_lines_with(path: Path, correlation_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if correlation_id in line:
            lines.append(json.loads(line))
    return lines


def test_one_correlation_id_follows_a_sync_from_the_request_to_the_categorisation(stack, engines):
    user = new_user("trace")
    stack.entitle(user)
    connection = stack.link_bank(user)
    stack.select_all(user, connection)
    # the selection starts a first sync on its own: let it finish, the traced one is the next
    first_done = wait_for(
        lambda: stack.status(user),
        timeout=120,
        what="the first sync finished",
        every=0.5,
        until=lambda status: status and all(s["state"] == "ok" and s["last_run"] for s in status),
    )
    assert first_done, stack.status(user)
    correlation_id = f"trace-{uuid.uuid4().hex}"
    today = dt.date.today().isoformat()
    with stack.sandbox() as bank:
        appended = bank.post(
            f"/sandbox/accounts/{connection['accounts'][0]['aggregator_account_id']}/transactions",
            json=[
                {"date": today, "value": "-42.10", "original_wording": "CB CARREFOUR 12/03"},
                {"date": today, "value": "-9.99", "original_wording": "PRLV SEPA NETFLIX ECH/120324"},
                {"date": today, "value": "-60.00", "original_wording": "RETRAIT DAB 12/03 PARIS"},
            ],
        )
    assert appended.status_code == 201, appended.text
    with stack.client("connector", user) as api:
        answer = api.post(f"/v1/users/{user}/sync", headers={"X-Correlation-ID": correlation_id})
    assert answer.status_code == 202, answer.text
    assert answer.headers["X-Correlation-ID"] == correlation_id
    stack.wait_run(user, answer.json()["sync_run_id"], timeout=120)

    def traced() -> dict[str, list[CloudEvent]]:
        by_topic = {
            topic: [
                event
                for _, event, _ in asyncio.run(read_all(engines.kafka_bootstrap, topic))
                if event.correlationid == correlation_id
            ]
            for topic in (SYNC_REQUESTS, SYNC_STATUS, TRANSACTIONS_RAW, OPERATIONS, CATEGORIZATIONS)
        }
        return by_topic

    by_topic = wait_for(
        traced, 90, "the correlation id on every topic", every=2, until=lambda found: all(found.values())
    )
    names = {topic: {event.name for event in events} for topic, events in by_topic.items()}
    assert names[SYNC_REQUESTS] == {"sync.requested"}, names
    assert {"sync.started", "sync.succeeded"} <= names[SYNC_STATUS], names
    assert len([e for e in by_topic[TRANSACTIONS_RAW] if e.name == "transaction.observed"]) == 3, names
    assert names[TRANSACTIONS_RAW] == {"transaction.observed", "account.synced"}, names
    assert "operation.imported" in names[OPERATIONS], names
    assert names[CATEGORIZATIONS] == {"operation.categorized"}, names
    assert all(event.userid == user for events in by_topic.values() for event in events)

    # the JSON logs of the three services on the path carry it too: `grep <id>` tells the story
    for name in ("connector", "importer", "categorizer"):
        lines = wait_for(
            lambda n=name: log_lines_with(stack.processes[n].log_path, correlation_id),
            30,
            f"{name}'s log lines with the correlation id",
            every=0.5,
        )
        assert lines, f"{name} logged nothing with the correlation id"
        assert all(line.get("correlation_id") == correlation_id for line in lines), lines[:3]
        assert all(line["service"] == name for line in lines)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            samples.append((labels, float(match.group(2))))
    return samples


def test_every_service_exposes_throughput_latency_errors_by_code_and_its_consumer_lag(stack):
    user = new_user("metrics")
    with httpx.Client(timeout=10) as http:
        for name in SERVICES:
            # one refused request per service: counted under its problem code
            refused = http.get(f"{stack.url(name)}/v1/users/{user}/nothing-here")
            assert refused.status_code in (401, 404)

        def scraped() -> dict[str, str]:
            texts = {name: http.get(f"{stack.url(name)}/metrics").text for name in SERVICES}
            lagging = [n for n in CONSUMING if not metric_samples(texts[n], "banksync_consumer_lag")]
            return {} if lagging else texts

        texts = wait_for(scraped, timeout=60, what="every consumer's lag in /metrics", every=2)
    assert texts, "a service never reported its consumer lag"
    for name, text in texts.items():
        lag = metric_samples(text, "banksync_consumer_lag")
        assert all(labels["service"] == name and value >= 0 for labels, value in lag), lag
        errors = metric_samples(text, "banksync_errors_total")
        assert any(labels["kind"] == "http" and labels["code"] for labels, _ in errors), (name, errors)
        assert metric_samples(text, "banksync_http_requests_total"), name
        assert metric_samples(text, "banksync_http_request_duration_seconds_bucket"), name
    # the consuming services also measure their handlers
    for name in CONSUMING:
        assert metric_samples(texts[name], "banksync_handler_duration_seconds_bucket"), name
        assert metric_samples(texts[name], "banksync_events_consumed_total"), name
