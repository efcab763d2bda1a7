"""Building raw bank events and talking to a running importer, for the importer's tests and benchmark."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from harness.devstack import user_client
from harness.paging import every_item, operations_path
from shared.contract.envelope import CloudEvent, account_key, deterministic_event_id
from shared.contract.topics import TRANSACTIONS_RAW
from shared.kafka import cloudevent_headers

MERCHANTS = (
    "CARREFOUR MARKET",
    "BOULANGERIE PAUL",
    "SNCF INTERNET",
    "AMAZON EU SARL",
    "FNAC DARTY",
    "TOTAL ENERGIES",
    "PHARMACIE DU CENTRE",
    "UBER EATS",
    "DECATHLON",
    "PICARD SURGELES",
)
DEBITS = (
    "PRLV SEPA EDF CLIENTS",
    "PRLV SEPA FREE MOBILE",
    "PRLV SEPA DGFIP IMPOT",
    "PRLV SEPA MAIF ASSURANCE",
)


@dataclass
class Txn:
    """A Powens transaction, as the connector puts it in `transaction.observed`."""

    id: int
    account: str
    date: dt.date
    value: Decimal
    wording: str
    simplified: str
    coming: bool = False
    deleted: dt.datetime | None = None
    last_update: dt.datetime = field(default_factory=lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    def powens(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "id_account": int(self.account) if self.account.isdigit() else self.account,
            "date": self.date.isoformat(),
            "rdate": self.date.isoformat(),
            "vdate": self.date.isoformat(),
            "value": float(self.value),
            "original_wording": self.wording,
            "simplified_wording": self.simplified,
            "wording": self.simplified,
            "type": "card",
            "coming": self.coming,
            "active": True,
            "deleted": self.deleted.isoformat() if self.deleted else None,
            "last_update": self.last_update.isoformat(),
            "original_currency": None,
        }


def history(account: str, n: int, *, first_id: int, seed: int = 1, end: dt.date | None = None) -> list[Txn]:
    """About 13 months of a French current account: card payments, direct debits, a salary."""
    rng = random.Random(seed)
    end = end or dt.date(2026, 11, 20)
    start = end - dt.timedelta(days=395)
    lines: list[Txn] = []
    for i in range(n):
        day = start + dt.timedelta(days=i * 395 // max(n, 1))
        if i % 40 == 0:
            wording, simplified, value = (
                "VIR SEPA RECU /DE ACME SAS /MOTIF SALAIRE",
                "ACME SAS",
                Decimal("2450.00"),
            )
        elif i % 9 == 0:
            simplified = rng.choice(DEBITS)
            wording, value = f"{simplified} ECH/{day:%d%m%y}", -Decimal(rng.randint(1500, 12000)) / 100
        else:
            simplified = rng.choice(MERCHANTS)
            wording = f"CARTE X4974 {day:%d/%m} {simplified}"
            value = -Decimal(rng.randint(150, 9000)) / 100
        lines.append(Txn(first_id + i, account, day, value, wording, simplified))
    return lines


def raw_event(
    user: str, bank_id: str, txn: Txn, *, sync_run: str = "sync-1", initial: bool = True
) -> CloudEvent:
    return CloudEvent.new(
        service="connector",
        name="transaction.observed",
        data={
            "user_id": user,
            "connection_id": f"conn-{user}",
            "aggregator_account_id": txn.account,
            "bank": {"id": bank_id, "name": f"Banque {bank_id}"},
            "sync_run_id": sync_run,
            "initial": initial,
            "transaction": txn.powens(),
        },
        user_id=user,
        correlation_id=sync_run,
        subject=txn.account,
    )


def synced_event(
    user: str,
    bank_id: str,
    account: str,
    *,
    sync_run: str,
    balance: object,
    coming: object = None,
    transactions: int = 0,
    initial: bool = False,
    account_type: str = "checking",
) -> CloudEvent:
    """`account.synced`, as the connector publishes it after an account's lines (its id restates the sync)."""
    return CloudEvent.new(
        service="connector",
        name="account.synced",
        data={
            "user_id": user,
            "connection_id": f"conn-{user}",
            "aggregator_account_id": account,
            "bank": {"id": bank_id, "name": f"Banque {bank_id}"},
            "sync_run_id": sync_run,
            "initial": initial,
            "currency": "EUR",
            "balance": None if balance is None else str(balance),
            "coming": None if coming is None else str(coming),
            "transactions": transactions,
            "type": account_type,
        },
        user_id=user,
        correlation_id=sync_run,
        subject=account,
        event_id=deterministic_event_id("account.synced", user, account, sync_run),
    )


class RawProducer:
    """Publishes raw events as the connector does (same key, headers and partitioner)."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )

    async def __aenter__(self) -> RawProducer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(self, user: str, bank_id: str, txns: Iterable[Txn], sync_run: str = "sync-1") -> None:
        futures = []
        for txn in txns:
            event = raw_event(user, bank_id, txn, sync_run=sync_run)
            futures.append(
                await self.producer.send(
                    TRANSACTIONS_RAW,
                    value=event.to_json_bytes(),
                    key=account_key(user, txn.account).encode(),
                    headers=[(k, v.encode()) for k, v in cloudevent_headers(event).items()],
                )
            )
        await asyncio.gather(*futures)

    async def send_event(self, key: str, event: CloudEvent, topic: str = TRANSACTIONS_RAW) -> tuple[int, int]:
        """One event, with the CloudEvents headers, as the connector sends it."""
        sent = await self.producer.send(
            topic,
            value=event.to_json_bytes(),
            key=key.encode(),
            headers=[(k, v.encode()) for k, v in cloudevent_headers(event).items()],
        )
        metadata = await sent
        return metadata.partition, metadata.offset

    async def send_raw(self, key: str, value: bytes, topic: str = TRANSACTIONS_RAW) -> tuple[int, int]:
        metadata = await (await self.producer.send(topic, value=value, key=key.encode()))
        return metadata.partition, metadata.offset


def api(url: str, user: str, scopes: str = "") -> httpx.Client:
    return user_client(url, user, scopes)


def all_operations(client: httpx.Client, user: str, account_id: str, page: int = 500) -> list[dict[str, Any]]:
    return every_item(client, operations_path(user, account_id), page)


def accounts_of(client: httpx.Client, user: str) -> list[dict[str, Any]]:
    answer = client.get(f"/v1/users/{user}/accounts")
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()
    return result


def account_for(client: httpx.Client, user: str, aggregator_account_id: str) -> dict[str, Any] | None:
    for account in accounts_of(client, user):
        if account["aggregator_account_id"] == aggregator_account_id:
            return account
    return None


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    match: Any = None,
    expected: int | None = None,
    within_s: float = 30,
    quiet_s: float = 1.0,
) -> list[Any]:
    """Records of a topic from the start (those `match` accepts), until `expected` came and it is quiet."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        quiet_since = loop.time()
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=300, max_records=5000)
            got = [r for records in batches.values() for r in records if match is None or match(r)]
            if got:
                found += got
                quiet_since = loop.time()
            elif (expected is None or len(found) >= expected) and loop.time() - quiet_since >= quiet_s:
                break
    finally:
        await consumer.stop()
    return found
