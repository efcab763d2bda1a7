"""What the fault tests on the whole pipeline share: exact counts, an idle pipeline, topics followed
live, records produced as they were, and Kafka's own consumer group tool.

"Exact" means: the bank lines the sandbox holds (its control API, deleted lines excluded) are exactly
the operations the importer's API lists (cursor paging), one per aggregator transaction id, and every
operation carries the category the categorizer's preview gives its memo (so a lost or stale
categorisation shows, and so does a lost operation).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from harness.devstack import DEPLOY, Engines, Stack, new_user
from harness.paging import operations_by_account
from harness.waiting import wait_for
from shared.contract.envelope import CloudEvent
from shared.contract.topics import (
    CATEGORIZATIONS,
    CONNECTIONS,
    ENTITLEMENTS,
    OPERATIONS,
    SYNC_REQUESTS,
    TRANSACTIONS_RAW,
)
from shared.kafka import topic_partitions
from tests.kafka_helpers import events_where, opened

# ---- the bank's truth and the app's operations --------------------------------------------------------


def bank_lines(stack: Stack, accounts: list[str]) -> dict[str, set[str]]:
    """Live transaction ids per aggregator account, as the bank (sandbox) holds them now."""
    truth: dict[str, set[str]] = {}
    with stack.sandbox() as sandbox:
        for account in accounts:
            answer = sandbox.get(f"/sandbox/accounts/{account}/transactions/all")
            answer.raise_for_status()
            body = answer.json()
            lines = body["transactions"] if isinstance(body, dict) else body
            truth[account] = {str(t["id"]) for t in lines if not t.get("deleted")}
    return truth


def operations_of(stack: Stack, user: str, page: int = 250) -> dict[str, list[dict[str, Any]]]:
    """Every operation the importer's API lists, per aggregator account (cursor paging)."""
    out: dict[str, list[dict[str, Any]]] = {}
    with stack.client("importer", user) as api:
        for account, items in operations_by_account(api, user, limit=page):
            out.setdefault(account["aggregator_account_id"] or account["account_id"], []).extend(items)
    return out


@dataclass
class Outcome:
    """What the app shows against what the bank holds, at one moment."""

    expected: int
    operations: int
    duplicates: dict[str, int]
    missing: int
    extra: int
    categorised: int
    expected_categorised: int
    wrong_categories: int
    # app accounts whose last balance check found the bank's balance and the operations apart
    balance_gaps: dict[str, str] = field(default_factory=dict)
    # legs of a transfer between the user's accounts, and those whose other leg does not link back
    transfer_legs: int = 0
    broken_transfers: int = 0

    @property
    def exact(self) -> bool:
        return (
            self.operations == self.expected
            and not self.duplicates
            and not self.missing
            and not self.extra
            and self.wrong_categories == 0
            and not self.balance_gaps
            and self.broken_transfers == 0
        )


@dataclass
class Categories:
    """What the categorizer says of memos, asked once per memo (its preview stores nothing)."""

    stack: Stack
    user: str
    known: dict[str, str | None] = field(default_factory=dict)

    def of(self, memos: list[str]) -> dict[str, str | None]:
        wanted = sorted({m for m in memos if m not in self.known})
        with self.stack.client("categorizer", self.user) as api:
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start : start + 1000]
                answer = api.post(f"/v1/users/{self.user}/categorize/preview", json={"memos": chunk})
                answer.raise_for_status()
                for memo, result in zip(chunk, answer.json(), strict=True):
                    self.known[memo] = result["category"]
        return {m: self.known[m] for m in memos}


def memo_of(operation: dict[str, Any]) -> str:
    """The text the categorizer recognises: the raw memo, or the label when the bank gave none."""
    memo: str = operation["memo"]
    return memo if memo.strip() else operation["label"]


def balance_gaps(stack: Stack, user: str) -> dict[str, str]:
    """The app accounts whose balance gap is not zero (bank − operations; null: not checked)."""
    with stack.client("importer", user) as api:
        answer = api.get(f"/v1/users/{user}/accounts")
        answer.raise_for_status()
        return {
            a["account_id"]: a["balance_gap"]
            for a in answer.json()
            if a.get("balance_gap") is not None and Decimal(a["balance_gap"]) != 0
        }


def outcome(stack: Stack, user: str, truth: dict[str, set[str]], categories: Categories) -> Outcome:
    seen = operations_of(stack, user)
    all_ops = [op for ops in seen.values() for op in ops]
    duplicates: dict[str, int] = {}
    missing = extra = 0
    for account, ids in truth.items():
        counts = Counter(str(op["aggregator_transaction_id"]) for op in seen.get(account, []))
        duplicates |= {f"{account}:{t}": n for t, n in counts.items() if n > 1}
        missing += len(ids - set(counts))
        extra += len(set(counts) - ids)
    extra += sum(len(ops) for account, ops in seen.items() if account not in truth)
    rules = categories.of([memo_of(op) for op in all_ops])
    by_id = {op["id"]: op for op in all_ops}

    def wanted(op: dict[str, Any]) -> str | None:
        # a leg of a transfer between the user's own accounts is savings, whatever its memo's rules say
        return "epargne" if op.get("transfer") else rules[memo_of(op)]

    legs = [op for op in all_ops if op.get("transfer")]
    broken = [
        op
        for op in legs
        if (other := by_id.get(op["transfer"]["operation_id"])) is None
        or (other.get("transfer") or {}).get("operation_id") != op["id"]
        or other["account_id"] == op["account_id"]
    ]
    return Outcome(
        expected=sum(len(ids) for ids in truth.values()),
        operations=len(all_ops),
        duplicates=duplicates,
        missing=missing,
        extra=extra,
        categorised=sum(1 for op in all_ops if op["category"]),
        expected_categorised=sum(1 for op in all_ops if wanted(op)),
        wrong_categories=sum(1 for op in all_ops if op["category"] != wanted(op)),
        balance_gaps=balance_gaps(stack, user),
        transfer_legs=len(legs),
        broken_transfers=len(broken),
    )


def pipeline_groups(database: str) -> list[tuple[str, str]]:
    """The consumer groups of `pipeline_stack(engines, log_dir, database)` with their topics, in the order
    records flow through them (harness.devstack names them so)."""
    return [
        (f"connector-entitlements-{database}", ENTITLEMENTS),
        (f"connector-sync-{database}", SYNC_REQUESTS),
        (f"{database}-imp-conn", CONNECTIONS),
        (f"{database}-imp", TRANSACTIONS_RAW),
        (f"{database}-cat", OPERATIONS),
        (f"{database}-imp-cat", CATEGORIZATIONS),
        (f"connector-importer-events-{database}", OPERATIONS),
    ]


async def lags(bootstrap: str, groups: list[tuple[str, str]]) -> dict[str, int]:
    """Records each group has not committed yet, group after group in the given order.

    For each group the topic's ends are read before the group's commits: when every group has no lag,
    whatever a group published before committing was already counted by the next one, so nothing is
    in flight between them.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        out: dict[str, int] = {}
        for group, topic in groups:
            partitions = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
            ends = await consumer.end_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(group)
            out[group] = sum(
                ends[tp] - max(committed[tp].offset if tp in committed else 0, 0) for tp in partitions
            )
        return out
    finally:
        await consumer.stop()
        await admin.close()


def wait_idle(bootstrap: str, groups: list[tuple[str, str]], timeout: float = 240) -> None:
    """Until every record on the pipeline's topics is handled and committed by its group."""
    wait_for(
        lambda: run_async(lags(bootstrap, groups)),
        timeout,
        "every consumer group caught up (lag by group)",
        every=1.0,
        until=lambda lag: not any(lag.values()),
    )


def settle(stack: Stack, user: str, truth: dict[str, set[str]], timeout: float = 300) -> Outcome:
    """Once the pipeline is idle (every group caught up), the app must show exactly the bank's lines,
    each categorised as the categorizer says; looked at twice, a little apart (a doubled line or a late
    write would show). Polling the API instead would scan FerretDB over and over and slow the pipeline."""
    groups = pipeline_groups(stack.database)
    categories = Categories(stack, user)
    bootstrap = stack.engines.kafka_bootstrap
    wait_idle(bootstrap, groups, timeout)
    first = outcome(stack, user, truth, categories)
    time.sleep(1.5)
    wait_idle(bootstrap, groups, 60)
    again = outcome(stack, user, truth, categories)
    assert first.exact, f"the app does not show exactly the bank's lines: {first}"
    assert again.exact, f"exact once, then not: {again}"
    return again


def sync_settled(stack: Stack, user: str) -> bool:
    try:
        status = stack.status(user)
    except httpx.HTTPError:  # the connector restarting, or its database away
        return False
    # an account the bank closed stays `closed`: its last sync is what it is
    return bool(status) and all(s["state"] in ("ok", "closed") and s["last_run"] for s in status)


def sync_completes(stack: Stack, user: str, timeout: float = 150, re_request_after: float = 60) -> bool:
    """Waits for every account's sync to end well; asks again once, as the user would, when it seems
    lost (a run killed with its connector). Returns whether it had to ask again."""
    started = time.monotonic()
    asked = False

    def settled() -> bool:
        nonlocal asked
        if sync_settled(stack, user):
            return True
        if not asked and time.monotonic() - started > re_request_after:
            stack.sync(user)
            asked = True
        return False

    try:
        wait_for(settled, timeout, f"the sync of {user} ending well", every=1)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {stack.status(user)}") from None
    return asked


def count_requests(stack: Stack, user: str) -> int:
    """The `sync.requested` of `user` on banksync.sync-requests.v1 so far."""
    found = run_async(
        events_where(stack.engines.kafka_bootstrap, SYNC_REQUESTS, lambda k, e: e.userid == user)
    )
    return len(found)


def set_faults(stack: Stack, **faults: Any) -> None:
    with stack.sandbox() as sandbox:
        sandbox.post("/sandbox/faults", json=faults).raise_for_status()


# ---- users, their banks and what was announced ---------------------------------------------------------


def linked(stack: Stack, prefix: str, bank: int) -> tuple[str, dict[str, Any]]:
    user = new_user(prefix)
    stack.entitle(user)
    return user, stack.link_bank(user, bank_index=bank)


def account_ids(connection: dict[str, Any], *types: str) -> list[str]:
    return [a["aggregator_account_id"] for a in connection["accounts"] if not types or a["type"] in types]


def select(stack: Stack, user: str, connection: dict[str, Any], accounts: list[str]) -> None:
    """The user's choice of accounts: the first sync of each starts at once."""
    with stack.client("connector", user) as api:
        api.put(
            f"/v1/users/{user}/connections/{connection['connection_id']}/accounts",
            json={"selected": accounts},
        ).raise_for_status()


def announced_once(tail: TopicTail, user: str, operations: int) -> None:
    """Every operation announced, a re-sent announcement under the same event id."""
    imported = tail.events(OPERATIONS, user, "operation.imported")
    assert len({e.data["operation"]["id"] for e in imported}) == operations
    assert len({e.id for e in imported}) == operations
    categorized = tail.events(CATEGORIZATIONS, user, "operation.categorized")
    assert len({e.data["operation_id"] for e in categorized}) == operations


# ---- following topics live ------------------------------------------------------------------------------


class TopicTail:
    """Collects every record produced on `topics` from now on, in a background thread (no group)."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self._events: dict[tuple[str, str], list[CloudEvent]] = {}  # by topic and user
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="topic-tail", daemon=True)

    def __enter__(self) -> TopicTail:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError(f"the topic tail did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._follow())
        except BaseException as exc:  # shown by __enter__ or by the counts
            self._error = exc

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, p)
                for topic in self.topics
                for p in await topic_partitions(self.bootstrap, topic)
            ]
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, ends[tp])
            self._ready.set()
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                parsed = [(r.topic, _event(r.value)) for rs in batches.values() for r in rs]
                with self._lock:
                    for topic, event in parsed:
                        if event is not None:  # not a CloudEvent: a poison record, not counted
                            self._events.setdefault((topic, event.userid), []).append(event)
        finally:
            await consumer.stop()

    def events(self, topic: str, user: str, name: str | None = None) -> list[CloudEvent]:
        self._check()
        with self._lock:
            found = list(self._events.get((topic, user), ()))
        return [e for e in found if name is None or e.name == name]

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the topic tail stopped: {self._error!r}")

    def distinct(self, topic: str, user: str, name: str | None = None) -> int:
        """Events by id: a re-sent one (same id) counts once."""
        return len({e.id for e in self.events(topic, user, name)})

    def count(self, topic: str, user: str, name: str | None = None) -> int:
        self._check()
        if name is None:
            with self._lock:
                return len(self._events.get((topic, user), ()))
        return len(self.events(topic, user, name))


def _event(value: bytes | None) -> CloudEvent | None:
    try:
        return opened(value or b"")
    except ValueError:
        return None


# ---- Kafka: producing records as they were, and the standard group tool ---------------------------------


async def produce(
    bootstrap: str, topic: str, records: list[tuple[str, bytes, dict[str, str]]]
) -> list[tuple[int, int]]:
    """Sends (key, value, headers) as they are; returns (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic, value, key=key.encode(), headers=[(k, v.encode()) for k, v in headers.items()]
            )
            for key, value, headers in records
        ]
        return [(m.partition, m.offset) for m in await asyncio.gather(*sent)]
    finally:
        await producer.stop()


def kafka_classpath(engines: Engines) -> str:
    if shutil.which("java") is None:
        pytest.skip("java is not installed: Kafka's own tools cannot run")
    return subprocess.run(
        [str(DEPLOY / "kafka.sh"), "classpath"],
        env=engines.env or None,
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    ).stdout.strip()


def consumer_groups(engines: Engines, *args: str) -> str:
    """Kafka's own `kafka-consumer-groups` (ConsumerGroupCommand), as the README's runbook runs it."""
    answer = subprocess.run(
        [
            "java",
            "-cp",
            kafka_classpath(engines),
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            engines.kafka_bootstrap,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr
    return answer.stdout


def run_async(coro: Any) -> Any:
    """Runs a coroutine from a sync test, in a worker thread with its own loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.contextmanager
def faults_cleared(stack: Stack) -> Iterator[None]:
    try:
        yield
    finally:
        set_faults(stack)
