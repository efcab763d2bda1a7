"""shared.kafka_noise: aiokafka's stream of connection errors becomes one warning per outage."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from prometheus_client import REGISTRY

from shared.kafka_noise import KafkaOutageLog
from shared.logging import bind_context, clear_context, configure_logging

REFUSED = ConnectionRefusedError(111, "Connection refused")
NOT_READY = "NodeNotReadyError: Attempt to send a request to node which is not ready (node id 1)."

# what aiokafka 0.14.0 logs while the broker is down, logger by logger (see the installed sources)
OUTAGE_RECORDS: list[tuple[str, int, str, tuple[Any, ...]]] = [
    ("aiokafka.consumer.fetcher", logging.ERROR, "Failed fetch messages from %s: %s", (1, NOT_READY)),
    ("aiokafka", logging.ERROR, "Unable connect to node with id %s: %s", (1, REFUSED)),
    ("aiokafka", logging.ERROR, "Unable to update metadata from %s", ([1],)),
    ("aiokafka", logging.ERROR, 'Unable connect to "%s:%s": %s', ("127.0.0.1", 9092, REFUSED)),
    (
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        "Group Coordinator Request failed: %s",
        ("[Error 15] GroupCoordinatorNotAvailableError",),
    ),
    (
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        "Error sending %s to node %s [%s] -- marking coordinator dead",
        ("HeartbeatRequest_v1", 1, NOT_READY),
    ),
    (
        "aiokafka.consumer.group_coordinator",
        logging.WARNING,
        "Marking the coordinator dead (node %s)for group %s.",
        (1, "cat"),
    ),
    (
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        "Heartbeat session expired - marking coordinator dead",
        (),
    ),
    (
        "aiokafka.producer.sender",
        logging.WARNING,
        "Cannot send %r to %s: %r",
        ("ProduceRequest", 1, NOT_READY),
    ),
    ("aiokafka.conn", logging.ERROR, "%s", ("KafkaConnectionError: Connection at 127.0.0.1:9092 closed",)),
]


def record(
    name: str, level: int, msg: str, args: tuple[Any, ...] = (), exc: BaseException | None = None
) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def outage_record(index: int) -> logging.LogRecord:
    return record(*OUTAGE_RECORDS[index % len(OUTAGE_RECORDS)])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines:
    """What the filter says, as (level, event, fields)."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        self.said.append((level, event, fields))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.said]


def outages_metric(service: str) -> float:
    value = REGISTRY.get_sample_value(
        "banksync_errors_total", {"service": service, "kind": "kafka", "code": "kafka_unreachable"}
    )
    return value or 0.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
def service() -> str:
    return f"unit-{uuid.uuid4().hex[:6]}"  # a metric series of this test's own


@pytest.fixture
def outages(service: str, clock: Clock, lines: Lines) -> KafkaOutageLog:
    return KafkaOutageLog(service, quiet_s=5, clock=clock, emit=lines)


def test_an_outage_is_one_warning_then_one_recovery_line(outages, clock, lines, service):
    kept = []
    for index in range(300):  # 30 s of aiokafka retrying every 100 ms
        kept.append(outages.filter(outage_record(index)))
        clock.now += 0.1
    assert not any(kept)
    assert lines.said == [
        (
            "warning",
            "kafka_unreachable",
            {
                "service": service,
                "logger": "aiokafka.consumer.fetcher",
                "error": f"Failed fetch messages from 1: {NOT_READY}",
                "detail": "aiokafka's connection errors are withheld until Kafka answers again",
            },
        )
    ]
    assert outages.in_outage
    last_error_at = clock.now - 0.1
    clock.now = last_error_at + 4.9
    assert not outages.due_for_probe()
    clock.now = last_error_at + 5
    assert outages.due_for_probe()
    outages.reachable()
    assert lines.said[1] == (
        "info",
        "kafka_reachable_again",
        {"service": service, "outage_s": 29.9, "suppressed": 300},
    )
    assert not outages.in_outage
    outages.reachable()  # nothing more to say
    assert len(lines.said) == 2


def test_each_outage_has_its_warning_and_the_metric_counts_outages_not_lines(outages, clock, lines, service):
    for _ in range(3):
        for index in range(40):
            outages.filter(outage_record(index))
            clock.now += 0.05
        clock.now += 5
        outages.reachable()
    assert lines.events() == ["kafka_unreachable", "kafka_reachable_again"] * 3
    assert [fields["suppressed"] for _, _, fields in lines.said[1::2]] == [40, 40, 40]
    assert outages_metric(service) == 3


def test_a_new_connection_error_restarts_the_quiet_period(outages, clock):
    outages.filter(outage_record(0))
    clock.now += 4
    assert not outages.due_for_probe()
    outages.filter(outage_record(1))
    clock.now += 4
    assert not outages.due_for_probe()
    clock.now += 1
    assert outages.due_for_probe()


def test_a_coordinator_or_leader_error_alone_is_no_outage_but_is_withheld_during_one(outages, clock, lines):
    # Kafka says these while it starts or moves a group's coordinator, reachable all along
    loading = record(
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        "Group Coordinator Request failed: %s",
        ("[Error 15] GroupCoordinatorNotAvailableError",),
    )
    expired = record(
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        "Heartbeat session expired - marking coordinator dead",
    )
    assert outages.filter(loading)
    assert outages.filter(expired)
    assert lines.said == []
    outages.filter(outage_record(1))  # unreachable: the outage starts
    clock.now += 4
    assert not outages.filter(loading)
    assert not outages.filter(expired)
    clock.now += 1
    assert outages.due_for_probe()  # they are withheld, but they do not keep the outage open
    outages.reachable()
    assert lines.said[-1][2] == {"service": outages.service, "outage_s": 0.0, "suppressed": 3}
    assert outages.filter(loading)


@pytest.mark.parametrize(
    ("name", "level", "msg", "args", "exc"),
    [
        (
            "aiokafka.cluster",
            logging.ERROR,
            "Topic %s not found in cluster metadata",
            ("banksync.nope",),
            None,
        ),
        ("aiokafka.cluster", logging.ERROR, "Topic %s is not authorized for this client", ("t",), None),
        ("aiokafka.conn", logging.ERROR, "Unexpected exception in AIOKafkaConnection", (), REFUSED),
        (
            "aiokafka.consumer.fetcher",
            logging.ERROR,
            "Unexpected error in fetcher routine",
            (),
            KeyError("x"),
        ),
        (
            "aiokafka.consumer.group_coordinator",
            logging.WARNING,
            "Heartbeat failed for group %s because it is rebalancing",
            ("cat",),
            None,
        ),
        (
            "aiokafka.consumer.group_coordinator",
            logging.ERROR,
            "Heartbeat failed: %r",
            ("UnknownError",),
            None,
        ),
        (
            "aiokafka",
            logging.INFO,
            "Unable connect to node with id %s: %s",
            (1, REFUSED),
            None,
        ),  # below WARNING
        ("pymongo.topology", logging.ERROR, "Connection refused", (), None),
        ("uvicorn.error", logging.ERROR, "Unable connect to node with id 1", (), None),
        ("aiokafkaesque", logging.ERROR, "Unable connect to node with id 1", (), None),
    ],
)
def test_other_records_pass_unchanged_in_and_out_of_an_outage(outages, lines, name, level, msg, args, exc):
    other = record(name, level, msg, args, exc)
    assert outages.filter(other)
    assert lines.said == []
    outages.filter(outage_record(0))
    assert outages.filter(other)
    outages.reachable()
    assert lines.said[-1][2]["suppressed"] == 1


async def test_the_watch_closes_the_outage_once_quiet_and_the_probe_answers(service, clock, lines):
    answers = [False, True]
    asked: list[float] = []

    async def probe() -> bool:
        asked.append(clock.now)
        return answers.pop(0)

    outages = KafkaOutageLog(service, probe=probe, quiet_s=5, check_every_s=0.01, clock=clock, emit=lines)
    outages.filter(outage_record(0))  # from inside the loop: the watch starts
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert asked == []  # not quiet yet: the probe is not even asked
    clock.now += 5
    for _ in range(500):
        if len(asked) == 1:
            break
        await asyncio.sleep(0.01)
    assert asked == [1005.0]
    assert outages.in_outage  # the probe said no, which counts as an error of the outage
    await asyncio.sleep(0.05)
    assert len(asked) == 1
    clock.now += 5
    for _ in range(500):
        if not outages.in_outage:
            break
        await asyncio.sleep(0.01)
    assert asked == [1005.0, 1010.0]
    assert lines.events() == ["kafka_unreachable", "kafka_reachable_again"]
    # from the first error to the last sign of the outage (the probe's no at 1005)
    assert lines.said[1][2]["outage_s"] == 5.0


async def test_a_probe_that_raises_is_a_no(service, clock, lines):
    async def probe() -> bool:
        raise RuntimeError("broker not started")

    outages = KafkaOutageLog(service, probe=probe, quiet_s=0, check_every_s=0.01, clock=clock, emit=lines)
    outages.filter(outage_record(0))
    await asyncio.sleep(0.1)
    assert outages.in_outage
    assert lines.events() == ["kafka_unreachable"]


def test_a_record_from_another_thread_is_withheld_without_a_loop(outages, lines):
    kept: list[bool] = []
    worker = threading.Thread(target=lambda: kept.append(outages.filter(outage_record(1))))
    worker.start()
    worker.join(5)
    assert kept == [False]
    assert lines.events() == ["kafka_unreachable"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging binds the current stdout (here pytest's capture); later tests must not log there."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers


def test_through_the_service_logging_one_json_warning_without_the_callers_context(restore_logging, capsys):
    configure_logging("unit", "INFO")
    clear_context()
    bind_context(user_id="alice", correlation_id="run-7")
    try:
        for index in range(50):
            name, level, msg, args = OUTAGE_RECORDS[index % len(OUTAGE_RECORDS)]
            logging.getLogger(name).log(level, msg, *args)
        logging.getLogger("aiokafka.cluster").error("Topic %s not found in cluster metadata", "banksync.nope")
    finally:
        clear_context()
    said = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(line["event"], line["level"]) for line in said] == [
        ("kafka_unreachable", "warning"),
        ("Topic banksync.nope not found in cluster metadata", "error"),
    ]
    warning = said[0]
    assert warning["service"] == "unit"
    assert warning["logger"] == "aiokafka.consumer.fetcher"
    assert warning["error"].startswith("Failed fetch messages from 1: NodeNotReadyError")
    # an outage is nobody's
    assert "user_id" not in warning
    assert "correlation_id" not in warning
    assert said[1]["user_id"] == "alice"  # other lines keep theirs
