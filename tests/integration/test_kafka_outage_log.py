"""Kafka down for 15 s: each service logs one warning and one recovery line, not aiokafka's stream (#16).

Before shared.kafka_noise, the same outage (about 20 s without Kafka, its stop and start included)
filled the categorizer's log with 3,119 aiokafka lines and the importer's with 6,055 ("Unable connect to
node with id 1", "Unable to update metadata from [1]", "Failed fetch messages", "Group Coordinator Request
failed", heartbeat errors...).

The broker is stopped, so this runs on a private pair of engines (not the session's, which other tests
share), as test_faults_engines does.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.devstack import (
    Engines,
    ServiceProcess,
    categorizer_alone,
    ensure_dir,
    importer_alone,
    running_service,
)
from harness.waiting import wait_for
from shared.kafka_noise import CONSEQUENCE_MARKERS, UNREACHABLE_MARKERS

pytestmark = pytest.mark.engines

OUTAGE_S = 15


@pytest.fixture(scope="module")
def private_engines() -> Iterator[Engines]:
    started = Engines.start()
    if not started.owned:
        started.stop()
        pytest.skip("external engines (KAFKA_BOOTSTRAP_SERVERS, MONGODB_URL) cannot be stopped by the tests")
    try:
        yield started
    finally:
        started.stop()


def lines_from(path: Path, offset: int) -> list[dict[str, Any]]:
    """The process's log from `offset` on; every line must be one JSON object (no stray traceback)."""
    text = path.read_bytes()[offset:].decode(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def events(path: Path, offset: int, event: str) -> list[dict[str, Any]]:
    return [line for line in lines_from(path, offset) if line["event"] == event]


def outages_counted(proc: ServiceProcess) -> float:
    text = httpx.get(proc.url + "/metrics", timeout=10).text
    found = re.search(
        r'^banksync_errors_total\{(?=[^}]*code="kafka_unreachable")(?=[^}]*kind="kafka")[^}]*\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(300)
def test_kafka_down_15s_is_one_warning_and_one_recovery_line_per_service(private_engines, log_dir):
    logs = ensure_dir(log_dir / "kafka-outage")
    with (
        categorizer_alone(private_engines, logs, "outage_cat") as categorizer,
        importer_alone(private_engines, logs, "outage_imp", "outage-imp") as importer,
        # entitlements publishes through its outbox: few clients, whose group coordinator may still be
        # loading when it starts (that alone is no outage)
        running_service("services.entitlements", private_engines, logs, MONGODB_DATABASE="outage_ent") as ent,
    ):
        services = {"categorizer": categorizer, "importer": importer, "entitlements": ent}
        offsets = {name: proc.log_path.stat().st_size for name, proc in services.items()}
        stopped_at = time.monotonic()
        private_engines.stop_kafka()
        for name, proc in services.items():
            wait_for(
                partial(events, proc.log_path, offsets[name], "kafka_unreachable"),
                30,
                f"{name} saying Kafka is unreachable",
            )
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
        restarted_at = datetime.now(UTC)
        private_engines.start_kafka()
        for proc in services.values():
            proc.wait_until("/readyz", 200, 120)
        ready_after = time.monotonic() - stopped_at
        for name, proc in services.items():
            wait_for(
                partial(events, proc.log_path, offsets[name], "kafka_reachable_again"),
                30,
                f"{name} saying Kafka is reachable again",
            )
        counted = {name: outages_counted(proc) for name, proc in services.items()}

    for name, proc in services.items():
        said = lines_from(proc.log_path, offsets[name])
        [unreachable] = [line for line in said if line["event"] == "kafka_unreachable"]
        [again] = [line for line in said if line["event"] == "kafka_reachable_again"]
        assert unreachable["level"] == "warning"
        assert unreachable["service"] == name
        assert unreachable["logger"].startswith("aiokafka")
        assert UNREACHABLE_MARKERS.search(unreachable["error"]), unreachable
        assert again["level"] == "info"
        assert again["service"] == name
        # not a quiet spell taken for the end: Kafka answered, after its restart
        assert datetime.fromisoformat(again["timestamp"]) > restarted_at
        assert OUTAGE_S - 1 <= again["outage_s"] <= ready_after + 1, (again, ready_after)
        # aiokafka retries every 100 ms per client: thousands of lines were withheld, none printed
        assert again["suppressed"] >= 100, again
        aiokafka_noise = [
            line
            for line in said
            if line["level"] in ("warning", "error")
            and (UNREACHABLE_MARKERS.search(line["event"]) or CONSEQUENCE_MARKERS.search(line["event"]))
        ]
        assert aiokafka_noise == [], aiokafka_noise[:3]
        assert counted[name] == 1
