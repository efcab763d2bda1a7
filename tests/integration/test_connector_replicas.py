"""The same user's on-demand sync sent to two connector replicas at the same instant (issue #16).

Two connector processes share their database and consumer groups (the rest of the pipeline runs once).
Two threads fire `POST /v1/users/{u}/sync` at both replicas at the same instant, round after round,
for several users, some of them several times, each round after the bank added lines. From the second
round on, the connection's lease is one a crashed run left behind (ended, never let go), so the two
requests race to take it over (on the local engine a filtered update alone lets both win in about a
third of such races: tests/unit/connector/test_run_leases.py). What must hold:

- one sync run per connection at a time: the two requests return the same run (one claimed the
  connection, the other joined it: CONTRACT.md "a request made while one runs joins it"), and on
  banksync.sync-status.v1 no account's run starts while another run of it is open;
- every bank line imported exactly once, each categorised as the categorizer says, balance gap zero
  (tests/faults.py `settle`: the sandbox's live lines are exactly the operations the importer lists).

What makes it hold across replicas is the connection's lease in MongoDB (shared.leases: an insert,
and one take-over ticket per ended lease), never a lock in one process.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest

from harness.devstack import Engines, Stack, bearer, ensure_dir, pipeline_stack
from harness.waiting import wait_for
from shared.contract.topics import SYNC_REQUESTS, SYNC_STATUS
from tests.conftest import module_database
from tests.faults import TopicTail, account_ids, bank_lines, linked, select, settle, sync_completes

pytestmark = pytest.mark.engines

# the small accounts: about 190 lines a connection, so a first sync takes seconds
SYNCED_KINDS = ("savings", "card")
# rounds of simultaneous requests per user: some users once, some several times
ROUNDS_PER_USER = (3, 2, 1)
NEW_LINES_PER_ROUND = 2


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, engines: Engines, log_dir: Path) -> Iterator[Stack]:
    """The whole pipeline once, and a second connector process on the same database and groups."""
    database = module_database(request)
    with pipeline_stack(engines, ensure_dir(log_dir / database), database) as running:
        running.add_replica("connector")
        yield running


@dataclass
class Pair:
    """What the two replicas answered to one simultaneous request."""

    user: str
    run_ids: tuple[str, str]

    @property
    def joined(self) -> bool:
        return self.run_ids[0] == self.run_ids[1]


def at_once(stack: Stack, user: str) -> Pair:
    """`POST /v1/users/{user}/sync` sent to both connector replicas at the same instant (two threads
    released together, their connections opened beforehand)."""
    urls = [proc.url for proc in stack.replicas("connector")]
    assert len(urls) == 2
    clients = [httpx.Client(base_url=url, headers=bearer(user), timeout=30) for url in urls]
    gate = threading.Barrier(len(clients), timeout=30)
    answers: list[httpx.Response | BaseException | None] = [None] * len(clients)

    def fire(index: int) -> None:
        try:
            clients[index].get("/healthz").raise_for_status()  # the connection is open before the gate
            gate.wait()
            answers[index] = clients[index].post(f"/v1/users/{user}/sync")
        except BaseException as exc:  # shown below
            answers[index] = exc

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(len(clients))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for client in clients:
            client.close()
    run_ids: list[str] = []
    for answer in answers:
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 202, answer.text
        run_ids.append(answer.json()["sync_run_id"])
    return Pair(user, (run_ids[0], run_ids[1]))


def crashed_run_left(stack: Stack, user: str, connection_id: str) -> None:
    """The connection's lease as a run killed in the middle of its sync leaves it: ended, never let go."""
    ended = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    client: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(stack.engines.mongodb_url) as client:
        client[f"{stack.database}_conn"]["active_runs"].replace_one(
            {"_id": f"{user}:{connection_id}"},
            {"run_id": f"crashed-{uuid.uuid4().hex[:8]}", "claimed_at": ended, "expires_at": ended},
            upsert=True,
        )


def add_lines(stack: Stack, account: str, round_: int) -> None:
    """New bank lines on `account` (what the next sync has to bring)."""
    today = dt.date.today()
    lines = [
        {
            "date": (today - dt.timedelta(days=n + 1)).isoformat(),
            "value": -round(4.5 + 3 * n + round_, 2),
            "original_wording": f"CARTE X4974 {today:%d/%m} {merchant} {round_}",
        }
        for n, merchant in enumerate(("CARREFOUR CITY", "BOULANGERIE DU MARCHE")[:NEW_LINES_PER_ROUND])
    ]
    with stack.sandbox() as sandbox:
        sandbox.post(f"/sandbox/accounts/{account}/transactions", json=lines).raise_for_status()


def round_finished(stack: Stack, user: str, pair: Pair) -> None:
    """Until every account's last run is one of the pair's and has finished well."""

    def done(status: list[dict[str, Any]]) -> bool:
        return bool(status) and all(
            s["state"] == "ok" and s["last_run"] and s["last_run"]["sync_run_id"] in pair.run_ids
            for s in status
        )

    wait_for(lambda: stack.status(user), 90, f"the round of {user} {pair.run_ids} finished", 0.3, until=done)


def on_demand_runs(tail: TopicTail, user: str) -> set[str]:
    """The runs of the user's on-demand `sync.requested` published since the tail started."""
    requested = tail.events(SYNC_REQUESTS, user, "sync.requested")
    return {str(e.data["sync_run_id"]) for e in requested if e.data.get("reason") == "on_demand"}


def overlapping_runs(tail: TopicTail, user: str) -> list[str]:
    """Accounts (with the two runs) where a run started while another run of that account was open, read
    on banksync.sync-status.v1 (one key per account: its events are in the order they were published)."""
    open_run: dict[str, str] = {}
    found: list[str] = []
    for event in tail.events(SYNC_STATUS, user):
        account = str(event.data["aggregator_account_id"])
        run = str(event.data["sync_run_id"])
        if event.name == "sync.started":
            if account in open_run and open_run[account] != run:
                found.append(f"{account}: {run} started while {open_run[account]} was open")
            open_run[account] = run
        elif event.name in ("sync.succeeded", "sync.failed") and open_run.get(account) == run:
            del open_run[account]
    return found


@pytest.mark.timeout(600)
def test_the_same_users_sync_sent_to_two_replicas_at_once_runs_once_and_imports_each_line_once(stack):
    connectors = stack.replica_names("connector")
    users: dict[str, list[str]] = {}
    connections: dict[str, str] = {}
    cards: set[str] = set()  # a deferred card's balance is its outstanding total: never checked
    for index in range(len(ROUNDS_PER_USER)):
        user, connection = linked(stack, "twosyncs", bank=index % 4)
        accounts = account_ids(connection, *SYNCED_KINDS)
        assert len(accounts) == len(SYNCED_KINDS), connection["accounts"]
        select(stack, user, connection, accounts)  # each account's first sync starts at once
        users[user] = accounts
        connections[user] = str(connection["connection_id"])
        cards |= set(account_ids(connection, "card"))
    for user in users:
        sync_completes(stack, user, re_request_after=1e9)

    pairs: list[Pair] = []
    with TopicTail(stack.engines.kafka_bootstrap, [SYNC_STATUS, SYNC_REQUESTS]) as tail:
        for round_ in range(max(ROUNDS_PER_USER)):
            for (user, accounts), rounds in zip(users.items(), ROUNDS_PER_USER, strict=True):
                if round_ >= rounds:
                    continue
                for account in accounts:
                    add_lines(stack, account, round_)
                if round_:
                    crashed_run_left(stack, user, connections[user])
                pair = at_once(stack, user)
                round_finished(stack, user, pair)
                pairs.append(pair)

        # one run per connection at a time, whichever replica took each request
        for user in users:
            assert overlapping_runs(tail, user) == [], user
        joined = [pair for pair in pairs if pair.joined]
        assert len(pairs) == sum(ROUNDS_PER_USER)
        # at the same instant, one request claims the connection (or takes the crashed run's lease over)
        # and the other joins its run: a run lasts far longer than the two requests are apart
        assert joined == pairs, [p.run_ids for p in pairs]
        for pair in pairs:
            assert set(pair.run_ids) <= on_demand_runs(tail, pair.user), (
                "a run id answered is a run requested"
            )
        for user in users:
            answered = {run for pair in pairs if pair.user == user for run in pair.run_ids}
            assert on_demand_runs(tail, user) == answered, "one request published per run"
    print(f"\n{len(joined)} of {len(pairs)} simultaneous pairs joined one run; replicas {connectors}")

    # every bank line once, each categorised, no balance gap
    for user, accounts in users.items():
        truth = bank_lines(stack, accounts)
        result = settle(stack, user, truth)
        assert result.operations == sum(len(ids) for ids in truth.values()) > 0
        assert result.categorised == result.expected_categorised > 0
        assert not result.balance_gaps
        status = {s["aggregator_account_id"]: s for s in stack.status(user)}
        for account in accounts:
            gap = status[account]["balance_gap"]
            if account in cards:
                assert gap is None, status[account]
            else:
                assert gap is not None, status[account]
                assert Decimal(str(gap)) == 0, status[account]
