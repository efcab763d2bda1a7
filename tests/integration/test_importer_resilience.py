"""The importer when things go wrong: killed mid-import, group offsets reset, MongoDB unreachable.

Whatever happens, every bank line is imported once: nothing lost, nothing doubled, and every
operation is announced (at least once, always with the same event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from harness.devstack import Engines, ServiceProcess, free_port, private_consumer_groups
from harness.waiting import wait_for
from services.importer.replay import replay_account
from shared.contract.envelope import CloudEvent, event_type
from shared.contract.topics import OPERATIONS, TRANSACTIONS_RAW
from shared.settings import ServiceSettings
from tests.importer_support import RawProducer, Txn, history, read_topic
from tests.kafka_helpers import opened

pytestmark = pytest.mark.engines

DATABASE = "importer_it_resilience"


@pytest.fixture(scope="module")
def mongo(engines) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(engines.mongodb_url)
    client.drop_database(DATABASE)
    yield client
    client.close()


def importer_process(engines: Engines, log_dir: Path, groups: dict[str, str], **env: str) -> ServiceProcess:
    """An importer process on the consumer groups of `private_consumer_groups`."""
    port = free_port()
    settings = {"MONGODB_DATABASE": DATABASE, **groups, **env}
    return ServiceProcess(
        "services.importer",
        port,
        engines.service_env(**settings),
        log_dir / f"importer-resilience-{port}.log",
    )


def stored(mongo: pymongo.MongoClient[dict[str, Any]], user: str) -> list[dict[str, Any]]:
    return list(
        mongo[DATABASE]["operations"].find({"user_id": user}, {"aggregator_transaction_id": 1, "akey": 1})
    )


async def imported_events(bootstrap: str, user: str, expected: int) -> list[CloudEvent]:
    records = await read_topic(
        bootstrap,
        OPERATIONS,
        match=lambda r: r.key.decode().startswith(f"{user}:"),
        expected=expected,
        within_s=60,
    )
    events = [opened(r.value) for r in records]
    return [e for e in events if e.type == event_type("operation.imported")]


async def test_killed_mid_import_then_restarted_loses_nothing_and_doubles_nothing(engines, log_dir, mongo):
    user = f"kill-{uuid.uuid4().hex[:8]}"
    groups = private_consumer_groups(engines, f"importer-kill-{uuid.uuid4().hex[:6]}")
    accounts = ("8101", "8102", "8103")
    lines = [txn for i, a in enumerate(accounts) for txn in history(a, 2000, first_id=1_000_000 * (i + 1))]
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "bnp", lines, sync_run="run-big")

    first = importer_process(engines, log_dir, groups).start()
    try:
        at_kill = wait_for(lambda: (n := len(stored(mongo, user))) >= 600 and n, 60, every=0.05)
    finally:
        first.stop(kill=True)  # SIGKILL: no commit, no goodbye
    assert first.process is not None
    assert first.process.returncode == -9
    assert at_kill < len(lines), "the import ended before the kill: nothing was tested"

    second = importer_process(engines, log_dir, groups).start()
    try:
        wait_for(lambda: len(stored(mongo, user)) >= len(lines), 90, every=0.5, what="the whole import")
        time.sleep(1.5)  # anything doubled would show now
        docs = stored(mongo, user)
    finally:
        second.stop()
    assert len(docs) == len(lines)
    assert {(d["akey"], d["aggregator_transaction_id"]) for d in docs} == {
        (f"{user}:{t.account}", str(t.id)) for t in lines
    }
    events = await imported_events(engines.kafka_bootstrap, user, expected=len(lines))
    assert {e.data["operation"]["id"] for e in events} == {d["_id"] for d in docs}  # none lost
    assert len({e.id for e in events}) == len(lines)  # a re-sent announcement keeps its id


async def reset_group_to_earliest(bootstrap: str, group: str) -> None:
    """What `kafka-consumer-groups --reset-offsets --to-earliest` does, for a group with no member."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(TRANSACTIONS_RAW, p) for p in range(6)]
        consumer.assign(partitions)
        beginning = await consumer.beginning_offsets(partitions)
        await consumer.commit(dict(beginning.items()))
    finally:
        await consumer.stop()


async def test_group_reset_to_earliest_and_replay_add_nothing(engines, log_dir, mongo):
    user, acct = f"reset-{uuid.uuid4().hex[:8]}", "8201"
    groups = private_consumer_groups(engines, f"importer-reset-{uuid.uuid4().hex[:6]}")
    lines = history(acct, 500, first_id=5_000_000, seed=3)
    async with RawProducer(engines.kafka_bootstrap) as producer:
        await producer.send(user, "bnp", lines, sync_run="run-1")
        proc = importer_process(engines, log_dir, groups).start()
        try:
            wait_for(lambda: len(stored(mongo, user)) >= 500, 60, every=0.3)
        finally:
            proc.stop()

        await reset_group_to_earliest(engines.kafka_bootstrap, groups["IMPORTER_GROUP_ID"])
        proc = importer_process(engines, log_dir, groups).start()
        try:
            # a line after the others on the same partition: once it is in, everything before was read again
            sentinel = Txn(
                5_999_999, acct, lines[-1].date, lines[-1].value, "CARTE X4974 SENTINEL", "SENTINEL"
            )
            await producer.send(user, "bnp", [sentinel], sync_run="run-2")
            wait_for(lambda: len(stored(mongo, user)) >= 501, 60, every=0.3, what="the sentinel")
            time.sleep(1.0)
            assert len(stored(mongo, user)) == 501
        finally:
            proc.stop()

    settings = ServiceSettings(
        kafka_bootstrap_servers=engines.kafka_bootstrap,
        mongodb_url=engines.mongodb_url,
        mongodb_database=DATABASE,
    )
    result = await replay_account(settings, user, acct, None)
    assert (result.records_matched, result.stats.imported, result.stats.unchanged) == (501, 0, 501)
    assert len(stored(mongo, user)) == 501

    events = await imported_events(engines.kafka_bootstrap, user, expected=501)
    assert len(events) == 501  # the re-read announced nothing again


class CuttableProxy:
    """A TCP proxy to MongoDB that can be cut (connections closed, port refusing) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def open(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()


async def test_mongodb_unreachable_is_waited_out_not_dead_lettered(engines, log_dir, mongo):
    user, acct = f"outage-{uuid.uuid4().hex[:8]}", "8301"
    host, port = engines.mongodb_url.removeprefix("mongodb://").split(":")
    proxy = CuttableProxy((host, int(port)))
    proxy.open()
    groups = private_consumer_groups(engines, f"importer-outage-{uuid.uuid4().hex[:6]}")
    proc = importer_process(engines, log_dir, groups, MONGODB_URL=proxy.url).start()
    try:
        before = history(acct, 100, first_id=6_000_000, seed=8)
        during = history(acct, 200, first_id=6_100_000, seed=9)
        async with RawProducer(engines.kafka_bootstrap) as producer:
            await producer.send(user, "bnp", before, sync_run="run-1")
            wait_for(lambda: len(stored(mongo, user)) >= 100, 60, every=0.3)

            proxy.cut()
            await producer.send(user, "bnp", during, sync_run="run-2")
            await asyncio.sleep(6)
            assert len(stored(mongo, user)) == 100
            log = proc.log_path.read_text()
            assert "engine_unreachable_waiting" in log
            assert "record_dead_lettered" not in log
            proxy.open()

        wait_for(lambda: len(stored(mongo, user)) >= 300, 60, every=0.3, what="the import after the outage")
        time.sleep(1.0)
        docs = stored(mongo, user)
        assert len(docs) == 300
        assert len({d["aggregator_transaction_id"] for d in docs}) == 300
    finally:
        proc.stop()
        proxy.cut()
