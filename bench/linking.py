"""Thousands of users linked to a bank without a webview each: the set-up of the large nightly benchmarks.

Linking through the webview costs about ten HTTP requests and a dozen database writes per user (~0.3 s
each on this machine with their first syncs), which made the set-up of 10,000 users most of an
hour. Here the bank side comes from the sandbox's control API (`POST /sandbox/users`: users whose
login worked, their savings and card accounts enabled) and the connector's side is written as its
callback and the account selection leave it: the aggregator user with its encrypted token, and the
connection with its selected accounts. Everything after that goes through the real services:
entitlements over HTTP, the first syncs as a real nightly run (`POST /v1/ops/nightly-run`), through
Kafka, the importer and the categorizer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from harness.devstack import Stack
from harness.waiting import wait_for_async
from services.connector.adapters.mongo import ConnectorRepository, connection_document
from services.connector.domain.accounts import bank_account_view
from services.connector.domain.connections import Connection
from services.connector.domain.secrets import TokenCipher
from shared.auth import issue_token
from shared.contract.envelope import CloudEvent
from shared.contract.payloads import Bank
from shared.contract.topics import SYNC_STATUS
from shared.kafka import topic_partitions
from shared.mongo import make_client
from shared.settings import DEV_JWT_SECRET, DEV_TOKEN_KEY

# the sandbox makes at most this many users a request
SANDBOX_CHUNK = 500
# requests in flight to entitlements during the set-up
ENTITLE_CONCURRENCY = 32


@dataclass(frozen=True)
class LinkedUser:
    user_id: str
    connection_id: str
    aggregator_account_ids: tuple[str, ...]  # the selected ones


def connector_documents(
    user_id: str, made: dict[str, Any], bank_names: dict[str, str], cipher: TokenCipher, at: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The connector's `aggregator_users` and `connections` documents of one user the sandbox linked,
    as `Linking.activate`, `Linking.callback` and `Connections.select_accounts` write them."""
    connection = made["connection"]
    connection_id = str(connection["id"])
    bank_id = str(connection["id_connector"])
    aggregator_user = {
        "_id": user_id,
        "token_enc": cipher.encrypt(made["token"], user_id),
        "id_user": str(made["id_user"]),
        "created_at": at,
    }
    linked = Connection(
        user_id,
        connection_id,
        Bank(id=bank_id, name=bank_names.get(bank_id, f"Banque {bank_id}")),
        tuple(bank_account_view(a) for a in connection["all_accounts"] if not a.get("deleted")),
        linked_at=at,
    )
    return aggregator_user, connection_document(linked)


async def entitle_all(stack: Stack, users: list[str]) -> None:
    """Every user subscribes to Auto-Import, over entitlements' HTTP API (one kept-alive client, as the
    billing backend would call it), so the connector projects their rights from the real events."""
    token = issue_token(DEV_JWT_SECRET, "bench-billing", scopes="billing")
    slots = asyncio.Semaphore(ENTITLE_CONCURRENCY)
    limits = httpx.Limits(max_connections=ENTITLE_CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=stack.url("entitlements"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
        limits=limits,
    ) as api:

        async def one(user: str) -> None:
            async with slots:
                (await api.post(f"/v1/users/{user}/options/auto_import")).raise_for_status()

        await asyncio.gather(*(one(user) for user in users))


async def link_users(stack: Stack, users: list[str], enable: Iterable[str]) -> list[LinkedUser]:
    """Every user linked to one of the demo banks (alternately), `enable`'s account kinds selected."""
    cipher = TokenCipher(stack.processes["connector"].env.get("BANKSYNC_TOKEN_KEY", DEV_TOKEN_KEY))
    client = make_client(stack.engines.mongodb_url)
    repository = ConnectorRepository(client[f"{stack.database}_conn"])
    linked: list[LinkedUser] = []
    try:
        with stack.sandbox() as bank:
            banks = bank.get("/2.0/connectors").json()["connectors"][:2]
            names = {str(b["id"]): str(b["name"]) for b in banks}
            for start in range(0, len(users), SANDBOX_CHUNK):
                chunk = users[start : start + SANDBOX_CHUNK]
                answer = await asyncio.to_thread(
                    bank.post,
                    "/sandbox/users",
                    json={
                        "connector_ids": [
                            banks[i % len(banks)]["id"] for i in range(start, start + len(chunk))
                        ],
                        "enable": sorted(enable),
                    },
                    timeout=300,
                )
                answer.raise_for_status()
                at = datetime.now(UTC)
                documents = [
                    connector_documents(user, made, names, cipher, at)
                    for user, made in zip(chunk, answer.json()["users"], strict=True)
                ]
                await repository.users.insert_many([user for user, _ in documents], ordered=False)
                await repository.connections.insert_many([conn for _, conn in documents], ordered=False)
                linked += [
                    LinkedUser(
                        conn["user_id"],
                        conn["connection_id"],
                        tuple(a["aggregator_account_id"] for a in conn["accounts"] if a["selected"]),
                    )
                    for _, conn in documents
                ]
    finally:
        await client.close()
    return linked


async def consumer_since(
    bootstrap: str, topic: str, since: datetime
) -> tuple[AIOKafkaConsumer, dict[TopicPartition, int]]:
    """A started consumer of every partition of `topic`, at its first record written at or after `since`
    (at the end where there is none), and each partition's end offset when it was placed."""
    partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        for tp in partitions:
            start = starts.get(tp)
            consumer.seek(tp, start.offset if start else ends[tp])
    except BaseException:
        await consumer.stop()
        raise
    return consumer, ends


@dataclass
class SyncWatcher:
    """Follows `banksync.sync-status.v1` from a moment on: which accounts of `users` finished a sync
    (succeeded or failed) and when. Reads Kafka, not the connector's collections: polling those would
    load the database being measured."""

    bootstrap: str
    since: datetime
    users: set[str]
    finished: dict[str, datetime] = field(default_factory=dict)
    failed: int = 0
    _consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> SyncWatcher:
        self._consumer, _ = await consumer_since(self.bootstrap, SYNC_STATUS, self.since)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def read(self) -> int:
        """Reads what arrived; returns how many accounts have finished so far."""
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=500, max_records=20_000)
        for records in batches.values():
            for record in records:
                event = CloudEvent.from_json_bytes(record.value or b"")
                if event.userid not in self.users or event.time < self.since:
                    continue
                if event.name in ("sync.succeeded", "sync.failed"):
                    key = f"{event.userid}:{event.data['aggregator_account_id']}"
                    self.finished[key] = datetime.fromisoformat(str(event.data["finished_at"]))
                    self.failed += event.name == "sync.failed"
        return len(self.finished)

    async def wait(self, accounts: int, timeout_s: float) -> datetime:
        """Until `accounts` accounts have finished; returns when the last of them did."""
        # no pause between reads: each one waits up to half a second for records
        await wait_for_async(
            self.read, timeout_s, f"{accounts} accounts synced", 0, until=lambda synced: synced >= accounts
        )
        return max(self.finished.values())


async def nightly_run_now(stack: Stack) -> dict[str, int]:
    """`POST /v1/ops/nightly-run` (what the scheduler does every night); returns the connector's report."""

    def post() -> dict[str, int]:
        with stack.client("connector", "bench-ops", scopes="ops") as ops:
            answer = ops.post("/v1/ops/nightly-run", timeout=1800)
            answer.raise_for_status()
            report: dict[str, int] = answer.json()
            return report

    return await asyncio.to_thread(post)


@dataclass(frozen=True)
class NightSetUp:
    linked: list[LinkedUser]
    accounts: int
    first_night: dict[str, int]
    steps: dict[str, float]  # seconds since the set-up started, at the end of each step


async def set_up_night(
    stack: Stack, users: list[str], enable: Iterable[str] = ("savings", "card")
) -> NightSetUp:
    """Users entitled (over HTTP: the connector projects their rights from the events), linked
    (`link_users`), and first-synced by a first nightly run through the stack's real services."""
    started = time.monotonic()
    at = datetime.now(UTC)
    steps: dict[str, float] = {}
    await entitle_all(stack, users)
    steps["entitled_s"] = round(time.monotonic() - started, 1)
    linked = await link_users(stack, users, enable)
    accounts = sum(len(user.aggregator_account_ids) for user in linked)
    steps["linked_s"] = round(time.monotonic() - started, 1)
    async with SyncWatcher(stack.engines.kafka_bootstrap, at, set(users)) as first:
        report = await nightly_run_now(stack)
        await first.wait(accounts, timeout_s=4 * len(users) + 600)
    steps["first_synced_s"] = round(time.monotonic() - started, 1)
    return NightSetUp(linked, accounts, report, steps)
