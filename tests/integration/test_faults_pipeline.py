"""Faults on the whole pipeline: nothing lost, nothing doubled (issue #8).

Every test counts exactly (tests/faults.py): the bank lines the sandbox holds are the operations the
importer's API lists (cursor paging), one per aggregator transaction id, each with the category the
categorizer's preview gives its memo; and every operation was announced once, by one event id.

What covers what (Kafka stopped, FerretDB stopped and the consumer group reset with Kafka's own tool
are in test_faults_engines.py, on private engines; "alone" is what existed before, on one service):
- SIGKILL of the connector, entitlements, the importer and the categorizer in turn, in the middle of
  one large sync, each restarted at once (importer alone: test_importer_resilience).
- aggregator latency, 5xx, 429 and a 5xx burst beyond the retry budget: exact operations and
  categories at the end (raw lines alone: test_connector_sync).
- the same records twice (raw lines, operations, categorizations re-produced): nothing new, nothing
  doubled (importer alone: the group reset of test_importer_resilience).
- poison records in every consumed topic, on the partition of the good records that follow them
  (the consumer wrapper alone, on a private topic: test_consumer_dlq). Every topic gets bad JSON,
  bytes that are not UTF-8, JSON that is not a CloudEvent and a wrong schema; then what applies to
  it: raw lines an absurd amount, an implausible date, a date years ahead, a line of another account
  and a currency that is not ISO (the last three pass the schema, the importer rejects them); an
  operation an impossible date and an unknown status; a categorisation a negative rules version; a
  sync request an unknown reason and a date that is not one; an entitlement an unknown plan.

Who consumes what (services/*/app.py): the connector banksync.sync-requests.v1 and
banksync.entitlements.v1; the importer banksync.transactions.raw.v1, banksync.categorizations.v1 and
banksync.connections.v1; the categorizer banksync.operations.v1. The entitlements service consumes no
topic (it only publishes `entitlement.changed` from its outbox), so it has no poison case; its kill
is mid-sync like the others (the connector trusts its projection meanwhile). Not poison, by design:
a categorisation of an operation the importer no longer has (deleted meanwhile) is dropped, and an
event type a consumer does not handle on a shared topic is skipped.

Sizes are moderate because each operation costs the importer a FerretDB write when its
categorisation arrives: one sync of two demo banks (about 2,400 lines) for the four kills, a few
hundred lines elsewhere. About 5 minutes here on a quiet 2-core machine (test_faults_engines about 3).
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

import pytest

from harness.devstack import Stack, new_user
from harness.waiting import wait_for
from services.importer.domain.identities import auto_account_id
from shared.contract.envelope import CloudEvent
from shared.contract.topics import (
    CATEGORIZATIONS,
    CONNECTIONS,
    DLQ,
    ENTITLEMENTS,
    OPERATIONS,
    SYNC_REQUESTS,
    TRANSACTIONS_RAW,
)
from tests.faults import (
    TopicTail,
    account_ids,
    announced_once,
    bank_lines,
    faults_cleared,
    linked,
    produce,
    run_async,
    select,
    set_faults,
    settle,
    sync_completes,
)
from tests.kafka_helpers import opened, read_raw

pytestmark = pytest.mark.engines

DATABASE = "faults"


# ---- SIGKILL of each service in the middle of a sync ----------------------------------------------------

# (service, the topic and event whose progress says where the sync is, the share of the lines seen there)
KILLS = [
    ("connector", TRANSACTIONS_RAW, "transaction.observed", 0.15),
    ("entitlements", TRANSACTIONS_RAW, "transaction.observed", 0.35),
    ("importer", OPERATIONS, "operation.imported", 0.55),
    ("categorizer", CATEGORIZATIONS, "operation.categorized", 0.75),
]


def reached(tail: TopicTail, topic: str, user: str, name: str, at: int) -> bool:
    return tail.count(topic, user, name) >= at


@pytest.mark.timeout(480)
def test_sigkill_of_each_service_mid_sync_then_restart_loses_nothing_and_doubles_nothing(stack):
    """One large sync (a user with two demo banks), each service SIGKILLed in turn while its part of it
    is under way, then started again at once. One sync for the four kills: every operation costs a
    FerretDB write per categorisation, and four syncs of this size would take minutes more."""
    user = new_user("kill")
    stack.entitle(user)
    connections = [stack.link_bank(user, bank_index=bank) for bank in (0, 1)]
    truth = bank_lines(stack, [a for c in connections for a in account_ids(c)])
    total = sum(len(ids) for ids in truth.values())
    assert total > 2000
    with TopicTail(stack.engines.kafka_bootstrap, [TRANSACTIONS_RAW, OPERATIONS, CATEGORIZATIONS]) as tail:
        with faults_cleared(stack):
            # the aggregator answers slowly: the sync lasts long enough to be cut four times
            set_faults(stack, latency_ms=500)
            for connection in connections:
                select(stack, user, connection, account_ids(connection))  # each starts its first sync
            for service, topic, name, share in KILLS:
                at = int(total * share)
                wait_for(
                    functools.partial(reached, tail, topic, user, name, at),
                    180,
                    f"{at} {name} on {topic}",
                    every=0.05,
                )
                stack.stop(service, kill=True)  # SIGKILL: no commit, no goodbye
                seen = tail.distinct(topic, user, name)
                proc = stack.processes[service].process
                assert proc is not None
                assert proc.returncode == -9
                assert seen < total, f"{service}: its part had ended before the kill, nothing was tested"
                stack.processes[service].start(wait_ready=False)  # back at once, the sync goes on
            for service, *_ in KILLS:
                stack.processes[service].wait_until("/readyz", 200, 90)

        asked_again = sync_completes(stack, user)
        result = settle(stack, user, truth)
        assert result.operations == total
        assert result.categorised == result.expected_categorised > total // 2
        announced_once(tail, user, total)
    # the connector's unfinished run was taken up again from its uncommitted request: nobody had to ask
    assert not asked_again


# ---- the aggregator misbehaves: latency, 5xx, 429, then a burst longer than the retry budget ---------------


def append_lines(stack: Stack, account: str, count: int, seed: int) -> list[str]:
    """New bank lines (some recognisable, some not), as the bank would add them."""
    merchants = [
        "CARTE X4974 {d} CARREFOUR CITY",
        "PRLV SEPA EDF CLIENTS PARTICULIERS",
        "CARTE X4974 {d} BOULANGERIE DU MARCHE",
        "VIR SEPA RECU /DE JEAN DUPONT /MOTIF REMBOURSEMENT",
        "CARTE X4974 {d} SNCF INTERNET",
        "CARTE X4974 {d} ATELIER {n}",
    ]
    today = dt.date.today()
    lines = []
    for i in range(count):
        day = today - dt.timedelta(days=1 + (i * 7 + seed) % 60)
        memo = merchants[(i + seed) % len(merchants)].format(d=day.strftime("%d/%m"), n=seed * 1000 + i)
        lines.append(
            {
                "date": day.isoformat(),
                "value": -round(3 + (i * 37 + seed) % 9000 / 100, 2),
                "original_wording": memo,
            }
        )
    with stack.sandbox() as sandbox:
        answer = sandbox.post(f"/sandbox/accounts/{account}/transactions", json=lines)
        answer.raise_for_status()
        return [str(i) for i in answer.json()["ids"]]


@pytest.mark.timeout(420)
def test_aggregator_latency_5xx_and_429_then_exact_operations(stack):
    user, connection = linked(stack, "flaky", 1)
    accounts = account_ids(connection, "savings", "card")  # the small ones: the lines come below
    savings = account_ids(connection, "savings")[0]
    with faults_cleared(stack):
        # the first sync while one request in four fails (500, 502 or 503) and every answer is slow
        set_faults(stack, error_rate=0.25, latency_ms=60)
        select(stack, user, connection, accounts)
        sync_completes(stack, user, re_request_after=1e9)

        # new lines (more than one page), and a sync through a burst of 429 (Retry-After honoured),
        # then of 503
        append_lines(stack, savings, 600, seed=1)
        set_faults(stack, rate_limit_next=3, retry_after_s=1, fail_next=2)
        run = stack.sync(user)
        assert {s["state"] for s in stack.wait_run(user, run, timeout=120)} == {"ok"}

        # more lines, then a sync that meets more failures than its retry budget: it fails, the
        # cursor stays, and the next sync (the user clicks again) still brings those lines
        append_lines(stack, savings, 100, seed=2)
        set_faults(stack, fail_next=10_000)
        failed = stack.sync(user)
        status = stack.wait_run(user, failed, timeout=120)
        assert {s["state"] for s in status} == {"error"}
        assert all(s["error"]["code"] for s in status)
    assert {s["state"] for s in stack.wait_run(user, stack.sync(user), timeout=120)} == {"ok"}

    truth = bank_lines(stack, accounts)
    result = settle(stack, user, truth)
    assert result.operations == sum(len(ids) for ids in truth.values())
    assert result.categorised == result.expected_categorised


# ---- the same records twice ----------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_the_same_records_delivered_twice_change_nothing(stack):
    user, connection = linked(stack, "twice", 2)
    accounts = account_ids(connection, "savings", "card")  # a small sync: what matters is the re-sending
    select(stack, user, connection, accounts)
    sync_completes(stack, user, re_request_after=1e9)
    truth = bank_lines(stack, accounts)
    first = settle(stack, user, truth)

    bootstrap = stack.engines.kafka_bootstrap
    with TopicTail(bootstrap, [OPERATIONS, CATEGORIZATIONS]) as tail:
        before = {
            topic: [
                (key, value, headers)
                for key, value, headers, _, _ in run_async(read_raw(bootstrap, topic))
                if _user_of(value) == user
            ]
            for topic in (TRANSACTIONS_RAW, OPERATIONS, CATEGORIZATIONS)
        }
        observed = [v for _, v, _ in before[TRANSACTIONS_RAW] if b"banksync.transaction.observed.v1" in v]
        assert len(observed) == first.expected
        for topic, records in before.items():
            run_async(produce(bootstrap, topic, records))
        again = settle(stack, user, truth)
        # the importer announced nothing new; the categorizer restated what it had said, same ids
        assert tail.count(OPERATIONS, user) == len(before[OPERATIONS])  # only the re-sent ones
        original_ids = {opened(v).id for _, v, _ in before[CATEGORIZATIONS]}
        assert {e.id for e in tail.events(CATEGORIZATIONS, user)} <= original_ids
    assert (again.operations, again.categorised) == (first.operations, first.categorised)


def _user_of(value: bytes) -> str | None:
    try:
        return opened(value).userid
    except ValueError:
        return None


# ---- poison records in every consumed topic ---------------------------------------------------------------


def envelope(name: str, data: dict[str, Any], user: str, *, event_id: str | None = None) -> bytes:
    return CloudEvent.new(
        service="poison", name=name, data=data, user_id=user, correlation_id="poison", event_id=event_id
    ).to_json_bytes()


def raw_line(user: str, account: str, **changes: Any) -> dict[str, Any]:
    tx = {
        "id": 990_000_001,
        "id_account": int(account),
        "date": dt.date.today().isoformat(),
        "value": -12.5,
        "original_wording": "CARTE X4974 POISON",
        "coming": False,
        **changes.pop("tx", {}),
    }
    return {
        "user_id": user,
        "connection_id": "poison",
        "aggregator_account_id": account,
        "bank": {"id": "poison", "name": "Poison"},
        "sync_run_id": "poison",
        "initial": False,
        "transaction": tx,
        **changes,
    }


def poisons(user: str, account: str, app_account: str) -> dict[str, tuple[str, str, list[tuple[str, bytes]]]]:
    """Per topic: its partition key, the service that consumes it, and (why, record) of each poison."""
    common = [
        ("bad JSON", b"{not json"),
        ("not UTF-8", b"\xff\xfe\x00 binary"),
        ("not a CloudEvent", b'{"hello": "world"}'),
    ]
    op = {
        "id": str(uuid.uuid4()),
        "account_id": app_account,
        "date": "2026-01-01",
        "amount": "-1.00",
        "currency": "EUR",
        "memo": "X",
        "label": "X",
        "status": "booked",
        "source": "bank",
    }
    return {
        TRANSACTIONS_RAW: (
            f"{user}:{account}",
            "importer",
            [
                *common,
                ("wrong schema", envelope("transaction.observed", {"user_id": user}, user)),
                (
                    "absurd amount",
                    envelope("transaction.observed", raw_line(user, account, tx={"value": 1e15}), user),
                ),
                (
                    "absurd date",
                    envelope(
                        "transaction.observed", raw_line(user, account, tx={"date": "1850-01-01"}), user
                    ),
                ),
                (
                    "date years ahead",
                    envelope(
                        "transaction.observed", raw_line(user, account, tx={"date": "2099-06-01"}), user
                    ),
                ),
                (
                    "unknown account",
                    envelope("transaction.observed", raw_line(user, account, tx={"id_account": 1}), user),
                ),
                (
                    "not ISO currency",
                    envelope("transaction.observed", raw_line(user, account, currency="euros"), user),
                ),
            ],
        ),
        OPERATIONS: (
            f"{user}:{app_account}",
            "categorizer",
            [
                *common,
                ("wrong schema", envelope("operation.imported", {"user_id": user}, user)),
                (
                    "absurd date",
                    envelope(
                        "operation.imported",
                        {"user_id": user, "operation": {**op, "date": "0000-13-45"}},
                        user,
                    ),
                ),
                (
                    "unknown status",
                    envelope(
                        "operation.imported", {"user_id": user, "operation": {**op, "status": "maybe"}}, user
                    ),
                ),
            ],
        ),
        CATEGORIZATIONS: (
            f"{user}:{app_account}",
            "importer",
            [
                *common,
                ("wrong schema", envelope("operation.categorized", {"user_id": user}, user)),
                (
                    "negative rules version",
                    envelope(
                        "operation.categorized",
                        {
                            "user_id": user,
                            "account_id": app_account,
                            "operation_id": "x",
                            "payee": None,
                            "category": None,
                            "source": None,
                            "keyword": None,
                            "rules_version": -1,
                        },
                        user,
                    ),
                ),
            ],
        ),
        CONNECTIONS: (
            user,
            "importer",
            [
                *common,
                ("wrong schema", envelope("account.discovered", {"user_id": user, "account": "x"}, user)),
            ],
        ),
        SYNC_REQUESTS: (
            user,
            "connector",
            [
                *common,
                ("wrong schema", envelope("sync.requested", {"user_id": user, "reason": "because"}, user)),
                (
                    "absurd date",
                    envelope(
                        "sync.requested",
                        {
                            "user_id": user,
                            "sync_run_id": "x",
                            "reason": "on_demand",
                            "requested_at": "yesterday",
                        },
                        user,
                    ),
                ),
            ],
        ),
        ENTITLEMENTS: (
            user,
            "connector",
            [
                *common,
                ("wrong schema", envelope("entitlement.changed", {"user_id": user, "plan": "gold"}, user)),
            ],
        ),
    }


@pytest.mark.timeout(300)
def test_poison_records_in_every_consumed_topic_go_to_the_dlq_and_the_stream_goes_on(stack):
    bootstrap = stack.engines.kafka_bootstrap
    user = new_user("poison")
    sent: dict[tuple[str, int, int], tuple[str, str]] = {}  # (topic, partition, offset) -> (service, why)

    def poison(topics: list[str], account: str = "0", app_account: str = "0") -> None:
        for topic, (key, service, records) in poisons(user, account, app_account).items():
            if topic in topics:
                at = run_async(produce(bootstrap, topic, [(key, value, {}) for _, value in records]))
                sent.update(
                    {(topic, p, o): (service, why) for (why, _), (p, o) in zip(records, at, strict=True)}
                )

    # before each good record that follows on the same partition (same key)
    poison([ENTITLEMENTS, SYNC_REQUESTS, CONNECTIONS])
    stack.entitle(user)
    connection = stack.link_bank(user, bank_index=3)
    card = account_ids(connection, "card")[0]
    poison([TRANSACTIONS_RAW, OPERATIONS, CATEGORIZATIONS], card, auto_account_id(f"{user}:{card}"))
    select(stack, user, connection, [card])
    sync_completes(stack, user, re_request_after=1e9)
    truth = bank_lines(stack, [card])
    settle(stack, user, truth)  # raw lines, operations and categorizations all went past their poison

    # the importer took the bank's account details after the poison on banksync.connections.v1
    bank_name = next(a["name"] for a in connection["accounts"] if a["aggregator_account_id"] == card)
    with stack.client("importer", user) as api:
        wait_for(
            lambda: [a["name"] for a in api.get(f"/v1/users/{user}/accounts").json()] == [bank_name],
            30,
            "account name",
        )
    # the connector's projection of entitlements went past its poison: a cancellation pauses the user
    with stack.billing() as api:
        api.delete(f"/v1/users/{user}/options/auto_import").raise_for_status()
    wait_for(lambda: {s["state"] for s in stack.status(user)} == {"paused"}, 30, "paused")

    # every consumer group of a topic dead-letters what it cannot read: on banksync.operations.v1 the
    # connector (it follows account deletions and balance checks) too, and on banksync.entitlements.v1
    # every service (each follows erasure requests; entitlements the answers too, in a group of its own),
    # for the records that are no CloudEvent at all (one of another type with a wrong schema is not
    # theirs to judge)
    unreadable = {why for why, _ in poisons(user, "0", "0")[OPERATIONS][2][:3]}
    also_reading = {
        OPERATIONS: {"connector"},
        ENTITLEMENTS: {"connector", "importer", "categorizer", "entitlements"},
    }

    def expected(topic: str, service: str, why: str) -> set[str]:
        return {service} | (also_reading.get(topic, set()) if why in unreadable else set())

    def dead_letters() -> dict[tuple[str, int, int], dict[str, dict[str, str]]]:
        found: dict[tuple[str, int, int], dict[str, dict[str, str]]] = {}
        for _, _, headers, _, _ in run_async(read_raw(bootstrap, DLQ)):
            where = (
                headers.get("dlq.original_topic", ""),
                int(headers.get("dlq.original_partition", -1)),
                int(headers.get("dlq.original_offset", -1)),
            )
            if where in sent:
                found.setdefault(where, {})[headers.get("dlq.service", "")] = headers
        return found

    def complete(found: dict[tuple[str, int, int], dict[str, dict[str, str]]]) -> bool:
        return all(
            set(found.get(w, {})) >= expected(w[0], service, why) for w, (service, why) in sent.items()
        )

    dead = wait_for(lambda: (d := dead_letters()) and complete(d) and d, 60, "every poison in the DLQ")
    for where, (service, why) in sent.items():
        by_service = dead[where]
        assert set(by_service) == expected(where[0], service, why), (why, sorted(by_service))
        assert all(headers["dlq.error"] for headers in by_service.values()), why
