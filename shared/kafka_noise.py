"""aiokafka's connection errors while Kafka is down: one warning per outage instead of a stream.

While the broker is unreachable every aiokafka client of a process logs an error at each retry
(measured: Kafka stopped, 15 s, started again, about 20 s without it: 3,123 lines from the categorizer,
6,059 from the importer). `KafkaOutageLog` is a filter on the log handler. The first record of aiokafka
saying the broker cannot be reached opens an outage and becomes one `kafka_unreachable` warning (its
text, its logger, the service); later ones, and those about a coordinator or a leader that follow from
it, are counted and withheld. A watch task then waits until aiokafka has said nothing of an unreachable
broker for `quiet_s` and Kafka answers the probe (the service's broker ping, as /readyz does): one
`kafka_reachable_again` info closes the outage with its length and the number of lines withheld. Every
other record, aiokafka's included (an unknown topic, an authorisation failure, a bug's traceback, a
coordinator still loading while Kafka starts), passes unchanged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import structlog

from shared.metrics import ERRORS

# Texts of aiokafka 0.14.0's records (client.py, conn.py, consumer/fetcher.py, consumer/group_coordinator.py,
# producer/sender.py) and names of its errors, matched against a record's message only (not a traceback:
# "Unexpected error in ... routine" is a bug's line). These say the broker cannot be reached: one opens an
# outage, and while they keep coming the outage goes on.
UNREACHABLE_MARKERS = re.compile(
    "|".join(
        re.escape(text)
        for text in (
            "Unable connect to",
            "Unable to request metadata from",
            "Unable to update metadata from",
            "Connection refused",
            "Connect call failed",
            "KafkaConnectionError",
            "NodeNotReadyError",
            "RequestTimedOutError",
            "KafkaTimeoutError",
        )
    )
)
# What follows from it (the group's coordinator, a partition's leader). Kafka also says these when it is
# there, while it starts or moves a coordinator or a leader: they are withheld during an outage only, and do
# not keep it open.
CONSEQUENCE_MARKERS = re.compile(
    "|".join(
        re.escape(text)
        for text in (
            "marking coordinator dead",
            "Marking the coordinator dead",
            "Heartbeat session expired",
            "is either not started or not valid",
            "GroupCoordinatorNotAvailableError",
            "NotCoordinatorForGroupError",
            "GroupLoadInProgressError",
            "LeaderNotAvailableError",
            "NotLeaderForPartitionError",
        )
    )
)
AIOKAFKA = "aiokafka"
SHORT_TEXT = 200

Probe = Callable[[], Awaitable[bool]]
Emit = Callable[..., None]


class Kind(Enum):
    UNREACHABLE = "unreachable"
    CONSEQUENCE = "consequence"


def outage_kind(record: logging.LogRecord) -> Kind | None:
    """Whether a record is aiokafka saying the broker cannot be reached, or what follows from that."""
    if record.levelno < logging.WARNING:
        return None
    if record.name != AIOKAFKA and not record.name.startswith(AIOKAFKA + "."):
        return None
    message = record.getMessage()
    if UNREACHABLE_MARKERS.search(message):
        return Kind.UNREACHABLE
    if CONSEQUENCE_MARKERS.search(message):
        return Kind.CONSEQUENCE
    return None


def log_line(level: str, event: str, **fields: Any) -> None:
    # outside any request's or event's context: an outage is not one user's
    logger = structlog.get_logger(__name__)
    contextvars.Context().run(getattr(logger, level), event, **fields)


@dataclass
class _Outage:
    started_at: float
    last_error_at: float
    suppressed: int


class KafkaOutageLog(logging.Filter):
    """One process's view of Kafka outages, told in two lines each (see the module's docstring).

    `probe` answers whether Kafka answers now; without one (a tool, not a service) a quiet `quiet_s` alone
    closes an outage, which an idle producer (one error, then nothing for `metadata_max_age_ms`) can fake.
    """

    def __init__(
        self,
        service: str,
        *,
        probe: Probe | None = None,
        quiet_s: float = 5.0,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        emit: Emit = log_line,
    ) -> None:
        super().__init__()
        self.service = service
        self.probe = probe
        self.quiet_s = quiet_s
        self.check_every_s = check_every_s
        self.clock = clock
        self.emit = emit
        self._outage: _Outage | None = None
        self._lock = threading.Lock()
        self._watch: asyncio.Task[None] | None = None

    @property
    def in_outage(self) -> bool:
        return self._outage is not None

    def filter(self, record: logging.LogRecord) -> bool:
        """logging's hook: False withholds the record."""
        kind = outage_kind(record)
        if kind is None:
            return True
        now = self.clock()
        with self._lock:
            outage = self._outage
            if outage is None:
                if kind is Kind.CONSEQUENCE:
                    return True
                self._outage = _Outage(started_at=now, last_error_at=now, suppressed=1)
            else:
                outage.suppressed += 1
                if kind is Kind.UNREACHABLE:
                    outage.last_error_at = now
        if outage is None:
            ERRORS.labels(self.service, "kafka", "kafka_unreachable").inc()
            self.emit(
                "warning",
                "kafka_unreachable",
                service=self.service,
                logger=record.name,
                error=record.getMessage().splitlines()[0][:SHORT_TEXT],
                detail="aiokafka's connection errors are withheld until Kafka answers again",
            )
        self._start_watch()
        return False

    def due_for_probe(self) -> bool:
        """In an outage, and aiokafka has said nothing of an unreachable broker for `quiet_s`."""
        with self._lock:
            return self._outage is not None and self.clock() - self._outage.last_error_at >= self.quiet_s

    def reachable(self) -> None:
        """Kafka answers: the outage (if any) ends with one line."""
        with self._lock:
            outage, self._outage = self._outage, None
        if outage is None:
            return
        self.emit(
            "info",
            "kafka_reachable_again",
            service=self.service,
            outage_s=round(outage.last_error_at - outage.started_at, 1),
            suppressed=outage.suppressed,
        )

    async def watch(self) -> None:
        """Until the outage ends: every `check_every_s`, once quiet, ask the probe."""
        while self.in_outage:
            await asyncio.sleep(self.check_every_s)
            if not self.due_for_probe():
                continue
            if await self._probe_answers():
                self.reachable()
            else:
                self._still_down()

    def _still_down(self) -> None:
        # a failed probe is an error of the outage, even when aiokafka logged nothing for it
        with self._lock:
            if self._outage is not None:
                self._outage.last_error_at = self.clock()

    async def _probe_answers(self) -> bool:
        if self.probe is None:
            return True
        try:
            return await self.probe()
        except Exception:
            return False

    def _start_watch(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a record from another thread: the next one from the loop starts the watch
        watch = self._watch
        if watch is not None and not watch.done() and watch.get_loop() is loop:
            return
        self._watch = loop.create_task(self.watch(), name="kafka_outage_watch", context=contextvars.Context())
