"""The soak (issue #16): steady nightly-like traffic through two processes of every service, sampled.

`soak`: N users (300 full, 30 quick) with two accounts each, linked and first-synced as
`pipeline_nightly` sets them up, through `pipeline_stack(..., replicas=2)`: two processes each of
entitlements, the connector, the importer and the categorizer (the sandbox, the bank, stays single).
Then, for SOAK_MINUTES (22 full, BENCH_SOAK_MINUTES=N to change it; 2 quick), rounds start every ROUND
seconds (60 full, 20 quick): the bank books 3 lines on each account of a rotating quarter of the users,
a nightly run is requested (`POST /v1/ops/nightly-run`: every user synced, as each night), and the round
waits for every account's sync and for every consumer group of the stack to reach lag 0, then counts the
accounts with a balance gap. All along, users read their first page of operations from the two
importers in turn (2 a second), and every SAMPLE seconds (20 full, 5 quick) the bench samples each
process's resident memory (VmRSS), open descriptors, sockets and established TCP connections (/proc),
the lag of every group, and the balance gap. At the end every line booked during the soak must be
exactly one operation, categorised.

The judgement (each check with its figure in `checks`, `all_passed` over them):
- memory flat: for each service process, the median RSS of the last quarter of the steady phase (after a
  warm-up) at most RSS_GROWTH_LIMIT_PCT above the median of its second quarter (the benchmark's value is
  the largest growth, in %); the least-squares slope in MB/hour is reported beside it;
- connections flat: each process's floor (the fewest, sampled between nights when pools are idle) of
  descriptors and of established TCP connections in the last quarter at most CONNECTION_SLACK, or
  CONNECTION_SLACK_PCT of it, above the second quarter's, or no higher than the third quarter's (a
  pool filled up to its cap); the connections are also counted by what is at their other end, from the
  ports: Kafka, MongoDB, the process's own API, another process's;
- the lag back to 0 after every round (bounded), the balance gap 0 after every round and at the end,
  no line missing, duplicated or left uncategorised, no read of the importers failed.
The sandbox (the bank's stand-in, which keeps every line booked) is sampled and reported, not judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.linking import LinkedUser, SyncWatcher, nightly_run_now, set_up_night
from bench.pipeline import book_day, categorised_since, cpu_seconds, cpu_used, spread, wait_drained
from bench.registry import Context, Limit, Measurement, benchmark, load_average
from harness.devstack import ROOT, Stack, bearer, ensure_dir, new_user, pipeline_stack
from harness.waiting import wait_for_async
from ops.kafka import KafkaInspector, inspector
from ops.lag import totals
from services.importer.adapters.mongo import AccountStore
from shared.mongo import make_client

REPLICAS = 2
SERVICES = ("entitlements", "connector", "importer", "categorizer")
# each round books lines on one user in SLICES (a rotating share): every user gets new lines every
# SLICES rounds, and every round's night syncs every user, as each night does
SLICES = 4
READS_PER_S = 2
READ_PAGE = 50
# a round's syncs and its drain must each end within this; past it the soak stops its traffic and
# reports what it has (a stuck pipeline fails the soak, the time series stay in the result)
ROUND_WAIT_S = 600
END_DRAIN_S = 600
# the traffic's minutes of a full run: 22 (20 of steady phase after the warm-up); BENCH_SOAK_MINUTES=N for
# a longer one (whether a slow creep levels off), its hard timeout lengthened to match
SOAK_MINUTES = int(os.environ.get("BENCH_SOAK_MINUTES", "22"))

# Memory is flat when a service process's median RSS over the last quarter of the steady phase is at
# most 10% above its median over the second quarter: quarters ~10 minutes apart in the full run, whose
# medians a Python process's allocator noise (a few MB at 80-200 MB) does not move by 10%, while a leak
# of that size every 10 minutes doubles a process in under two hours (a night's window is two).
RSS_GROWTH_LIMIT_PCT = 10.0
# Connections are flat when a process's floor of descriptors and of established TCP connections (the
# fewest in a quarter, between nights) grows from the second quarter to the last by at most 3 or 10% of
# the second quarter's floor, whichever is more, or has stopped growing (the last quarter's floor no
# higher than the third's): kept-alive HTTP and database pools make the peaks move with the traffic and
# fill up to their cap (the connector's MongoDB pool reaches pymongo's 100 during the soak), a leak
# keeps raising the floor (one connection left open a round is ~10 between the second and last
# quarters, ~5 between the third and the last).
CONNECTION_SLACK = 3
CONNECTION_SLACK_PCT = 10.0


# ---- /proc ----------------------------------------------------------------------------------------------


def resident_mb(pid: int) -> float | None:
    """VmRSS now (not the peak): what a leak makes grow."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def descriptors(pid: int) -> tuple[int, set[int]] | None:
    """How many descriptors the process has open, and the inodes of its sockets among them."""
    folder = f"/proc/{pid}/fd"
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    sockets: set[int] = set()
    for name in names:
        try:
            target = os.readlink(f"{folder}/{name}")
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            sockets.add(int(target[8:-1]))
    return len(names), sockets


def established_connections(
    tables: Iterable[str] = ("/proc/net/tcp", "/proc/net/tcp6"),
) -> dict[int, tuple[int, int]]:
    """Socket inode → (local port, remote port) of every ESTABLISHED TCP connection (state 01) of this
    network namespace."""
    found: dict[int, tuple[int, int]] = {}
    for table in tables:
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cells = row.split()
            if len(cells) > 9 and cells[3] == "01":
                local, remote = (int(address.rsplit(":", 1)[1], 16) for address in cells[1:3])
                found[int(cells[9])] = (local, remote)
    return found


@dataclass(frozen=True)
class Peers:
    """What the ports of a connection say about its other end."""

    kafka: int
    mongodb: int
    services: dict[int, str]  # the HTTP port of each process of the stack → its name

    def of(self, own_port: int, local: int, remote: int) -> str:
        if remote == self.kafka:
            return "kafka"
        if remote == self.mongodb:
            return "mongodb"
        if local == own_port:
            return "http_in"  # a client of this process's API (the bench's readers, another service)
        if remote in self.services:
            return "http_out"  # this process calling another (the connector: the sandbox, entitlements)
        return "other"


@dataclass(frozen=True)
class ProcessSample:
    rss_mb: float | None
    fds: int | None
    sockets: int | None
    tcp: int | None  # established TCP connections
    peers: dict[str, int] = field(default_factory=dict)  # the established ones by what is at the other end


def sample_processes(processes: dict[str, tuple[int, int]], peers: Peers) -> dict[str, ProcessSample]:
    """Each process (name → (pid, HTTP port)): memory, descriptors, sockets, TCP connections."""
    established = established_connections()
    out: dict[str, ProcessSample] = {}
    for name, (pid, port) in processes.items():
        opened = descriptors(pid)
        if opened is None:
            out[name] = ProcessSample(resident_mb(pid), None, None, None)
            continue
        count, sockets = opened
        mine = [established[inode] for inode in sockets if inode in established]
        by_peer: dict[str, int] = {}
        for local, remote in mine:
            kind = peers.of(port, local, remote)
            by_peer[kind] = by_peer.get(kind, 0) + 1
        out[name] = ProcessSample(resident_mb(pid), count, len(sockets), len(mine), by_peer)
    return out


# ---- the judgement (pure) -------------------------------------------------------------------------------

Series = Sequence[tuple[float, float]]  # (seconds since the traffic started, value)


def quarter(series: Series, start: float, end: float, index: int) -> list[float]:
    """The values of quarter `index` (0-3) of [start, end] (the last one includes `end`)."""
    width = (end - start) / 4
    low, high = start + index * width, start + (index + 1) * width
    return [v for t, v in series if low <= t < high or (index == 3 and t == end)]


def slope_per_hour(series: Series, start: float, end: float) -> float | None:
    """The least-squares slope of the values over [start, end], per hour."""
    points = [(t, v) for t, v in series if start <= t <= end]
    if len(points) < 2 or len({t for t, _ in points}) < 2:
        return None
    fit = statistics.linear_regression([t for t, _ in points], [v for _, v in points])
    return round(fit.slope * 3600, 2)


def memory_trend(series: Series, start: float, end: float) -> dict[str, Any]:
    """Median RSS of the second and last quarters of [start, end], the growth between them, the slope."""
    second, last = quarter(series, start, end, 1), quarter(series, start, end, 3)
    if not second or not last:
        return {"flat": None, "why": "too few samples in a quarter"}
    before, after = statistics.median(second), statistics.median(last)
    growth_pct = (after - before) / before * 100 if before else 0.0
    return {
        "q2_median_mb": round(before, 1),
        "q4_median_mb": round(after, 1),
        "growth_mb": round(after - before, 1),
        "growth_pct": round(growth_pct, 2),
        "slope_mb_per_h": slope_per_hour(series, start, end),
        "max_mb": max(v for t, v in series if start <= t <= end),
        "flat": growth_pct <= RSS_GROWTH_LIMIT_PCT,
    }


def floor_trend(series: Series, start: float, end: float) -> dict[str, Any]:
    """The fewest and the most of the second and last quarters (and the fewest of the third), and
    whether the floor held: the last quarter's at most CONNECTION_SLACK (or CONNECTION_SLACK_PCT) above
    the second's, or no higher than the third's (a pool that filled up to its cap and stayed there)."""
    second, third, last = (quarter(series, start, end, index) for index in (1, 2, 3))
    if not second or not third or not last:
        return {"flat": None, "why": "too few samples in a quarter"}
    slack = max(CONNECTION_SLACK, min(second) * CONNECTION_SLACK_PCT / 100)
    return {
        "q2_min": min(second),
        "q3_min": min(third),
        "q4_min": min(last),
        "q2_max": max(second),
        "q4_max": max(last),
        "flat": min(last) - min(second) <= slack or min(last) <= min(third),
    }


def check(value: Any, limit: Any, passed: bool) -> dict[str, Any]:
    return {"value": value, "limit": limit, "passed": passed}


# ---- the soak -------------------------------------------------------------------------------------------


@dataclass
class Round:
    index: int
    at_s: float  # since the traffic started
    users: int
    booked: int = 0
    requested: int = 0
    synced_s: float | None = None  # from the nightly request to the last account's sync finished
    drained_s: float | None = None  # from the nightly request to every group at lag 0
    balance_gaps: int | None = None  # accounts with a gap, once drained
    failed_syncs: int = 0
    error: str | None = None


@dataclass
class Reads:
    """The users' reads of their operations, per importer process."""

    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    empty: int = 0
    last_error: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            name: {**(spread(values) or {"n": 0}), "errors": self.errors.get(name, 0)}
            for name, values in self.latencies_ms.items()
        }


@dataclass
class Soak:
    stack: Stack
    kafka: KafkaInspector
    accounts_store: AccountStore
    linked: list[LinkedUser]
    accounts: int
    groups: list[str]
    processes: dict[str, tuple[int, int]]  # every process of the stack by its name: (pid, HTTP port)
    peers: Peers
    started: float = field(default_factory=time.monotonic)
    samples: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    reads: Reads = field(default_factory=Reads)
    lag_max_by_group: dict[str, int] = field(default_factory=dict)
    sample_errors: int = 0
    last_sample_error: str | None = None
    # the sampler and a round's drain both read the lags through the one inspector
    kafka_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def now(self) -> float:
        return round(time.monotonic() - self.started, 1)

    async def lag_by_group(self) -> dict[str, int]:
        """Known lag of every group of the stack (a partition without a committed offset counts 0)."""
        async with self.kafka_lock:
            snapshots, rows = await self.kafka.lag(self.groups)
        return {total.group: total.lag for total in totals(snapshots, rows)}

    async def total_lag(self) -> int:
        return sum((await self.lag_by_group()).values())

    async def sample(self) -> dict[str, Any]:
        processes = sample_processes(self.processes, self.peers)
        lags = await self.lag_by_group()
        for group, lag in lags.items():
            self.lag_max_by_group[group] = max(lag, self.lag_max_by_group.get(group, 0))
        found = {
            "t": self.now(),
            "rss_mb": {name: s.rss_mb for name, s in processes.items()},
            "fds": {name: s.fds for name, s in processes.items()},
            "sockets": {name: s.sockets for name, s in processes.items()},
            "tcp": {name: s.tcp for name, s in processes.items()},
            "peers": {name: s.peers for name, s in processes.items()},
            "lag": sum(lags.values()),
            "gap": await self.accounts_store.count_balance_gaps(),
            "load": load_average(),
        }
        self.samples.append(found)
        return found

    async def sample_every(self, every_s: float, stop: asyncio.Event) -> None:
        """A sample every `every_s` seconds until `stop`; one that fails is counted, not fatal."""
        while not stop.is_set():
            try:
                await self.sample()
            except Exception as exc:
                self.sample_errors += 1
                self.last_sample_error = f"{type(exc).__name__}: {exc}"
            await until_set(stop, every_s)

    async def read_operations(self, stop: asyncio.Event) -> None:
        """Users read their first page of operations, at each importer process in turn."""
        names = self.stack.replica_names("importer")
        clients = {name: httpx.AsyncClient(base_url=self.stack.url(name), timeout=30) for name in names}
        try:
            count = 0
            while not stop.is_set():
                name = names[count % len(names)]
                # a stride prime to the population, so that consecutive reads are of different users
                user = self.linked[(count * 7919) % len(self.linked)].user_id
                started = time.perf_counter()
                try:
                    answer = await clients[name].get(
                        f"/v1/users/{user}/operations", params={"limit": READ_PAGE}, headers=bearer(user)
                    )
                    answer.raise_for_status()
                    self.reads.empty += not answer.json()["items"]
                    self.reads.latencies_ms.setdefault(name, []).append(
                        (time.perf_counter() - started) * 1000
                    )
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    self.reads.errors[name] = self.reads.errors.get(name, 0) + 1
                    self.reads.last_error = f"{name}: {type(exc).__name__}: {exc}"
                count += 1
                await until_set(stop, 1 / READS_PER_S)
        finally:
            for client in clients.values():
                await client.aclose()

    async def one_round(self, index: int) -> Round:
        """The bank books a slice of the users' lines, a nightly run syncs everyone, the pipeline drains."""
        chosen = self.linked[index % SLICES :: SLICES]
        done = Round(index, self.now(), len(chosen))
        self.rounds.append(done)
        done.booked = await book_day(self.stack, chosen)
        at = datetime.now(UTC)
        requested = time.monotonic()
        users = {user.user_id for user in self.linked}
        async with SyncWatcher(self.stack.engines.kafka_bootstrap, at, users) as night:
            report = await nightly_run_now(self.stack)
            done.requested = int(report.get("requested", 0))
            await night.wait(self.accounts, timeout_s=ROUND_WAIT_S)
            done.synced_s = round(time.monotonic() - requested, 1)
            done.failed_syncs = night.failed
        # every group of the stack, not only the importer's and the categorizer's (`wait_drained`): the
        # connector's reading of the importer's events is part of the traffic too
        await wait_for_async(
            self.total_lag, ROUND_WAIT_S, f"round {index} drained (lag of every group)", 0.5, until=is_zero
        )
        done.drained_s = round(time.monotonic() - requested, 1)
        done.balance_gaps = await self.accounts_store.count_balance_gaps()
        return done

    async def traffic(self, soak_s: float, round_s: float) -> str | None:
        """Rounds every `round_s` seconds (at once after one that overran) while the soak lasts; returns
        why it stopped early, if it did."""
        index = 0
        while self.now() < soak_s:
            await asyncio.sleep(max(0.0, index * round_s - self.now()))
            try:
                await self.one_round(index)
            except (TimeoutError, httpx.HTTPError) as exc:
                self.rounds[-1].error = f"{type(exc).__name__}: {exc}"
                return f"round {index}: {self.rounds[-1].error}"
            index += 1
        return None

    def cpu_now(self) -> dict[str, float | None]:
        return {name: cpu_seconds(pid) for name, (pid, _) in self.processes.items()}


async def until_set(event: asyncio.Event, timeout_s: float) -> None:
    """Waits `timeout_s`, or less when `event` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


def port_of(address: str) -> int:
    """The port of `host:port` or of a URL naming one (`mongodb://127.0.0.1:27017`)."""
    return int(address.rstrip("/").rsplit(":", 1)[1].split("/", 1)[0])


def is_zero(value: int) -> bool:
    return value == 0


async def bank_ids(stack: Stack, accounts: Iterable[str]) -> dict[str, set[str]]:
    """The ids of every live line the bank holds now, per aggregator account (the sandbox's truth)."""
    slots = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=stack.url("sandbox"), timeout=60) as bank:

        async def one(account: str) -> tuple[str, set[str]]:
            async with slots:
                answer = await bank.get(f"/sandbox/accounts/{account}/transactions/all")
                answer.raise_for_status()
                lines = answer.json()["transactions"]
                return account, {str(line["id"]) for line in lines if not line.get("deleted")}

        return dict(await asyncio.gather(*(one(account) for account in accounts)))


def reconcile(booked: dict[str, str], operations: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Lines booked during the soak (`transaction id → user`) against the operations created during it:
    missing, duplicated (more than one operation for a line), extra (an operation of no booked line),
    booked lines whose operation is not categorised."""
    per_line: dict[str, list[dict[str, Any]]] = {}
    for op in operations:
        per_line.setdefault(f"{op['user_id']}:{op['aggregator_transaction_id']}", []).append(op)
    wanted = {f"{user}:{tx}" for tx, user in booked.items()}
    return {
        "booked": len(wanted),
        "operations": len(operations),
        "missing": len(wanted - per_line.keys()),
        "duplicates": sum(len(ops) - 1 for key, ops in per_line.items() if len(ops) > 1),
        "extra": len(per_line.keys() - wanted),
        "uncategorised": sum(
            1 for key in wanted & per_line.keys() if not any(op.get("categorized_at") for op in per_line[key])
        ),
    }


SERIES_COLUMNS = ("t", "lag", "gap", "load")
PROCESS_COLUMNS = ("rss_mb", "fds", "sockets", "tcp")


def sample_table(samples: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The time series, one line of text per sample (the results file puts every list item on a line of
    its own: ~40 figures a sample made 3 KB each): `columns` names each space-separated cell of `rows`,
    `-` where a figure could not be read (a process gone)."""

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    columns = [*SERIES_COLUMNS, *(f"{metric}:{name}" for metric in PROCESS_COLUMNS for name in names)]
    rows = [
        " ".join(
            [cell(sample.get(column)) for column in SERIES_COLUMNS]
            + [cell(sample[metric].get(name)) for metric in PROCESS_COLUMNS for name in names]
        )
        for sample in samples
    ]
    return {"columns": columns, "rows": rows}


def process_trends(
    series: Sequence[dict[str, Any]], names: Iterable[str], start: float, end: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each process's memory trend, and its descriptors' and TCP connections' floors (those by peer too),
    over the steady phase [start, end] of the samples."""

    def of(metric: str, name: str) -> list[tuple[float, float]]:
        return [(s["t"], s[metric][name]) for s in series if s[metric].get(name) is not None]

    memory: dict[str, Any] = {}
    connections: dict[str, Any] = {}
    for name in names:
        memory[name] = memory_trend(of("rss_mb", name), start, end)
        fds, tcp = floor_trend(of("fds", name), start, end), floor_trend(of("tcp", name), start, end)
        kinds = sorted({kind for sample in series for kind in sample["peers"].get(name, {})})
        by_peer = {
            kind: floor_trend(
                [(s["t"], s["peers"][name].get(kind, 0)) for s in series if name in s["peers"]], start, end
            )
            for kind in kinds
        }
        connections[name] = {
            "fds": fds,
            "tcp": tcp,
            "tcp_by_peer": by_peer,
            "flat": fds["flat"] and tcp["flat"],
        }
    return memory, connections


@benchmark(
    "soak",
    timeout_s=max(3600, SOAK_MINUTES * 60 + 1800),
    limit=Limit.fixed(RSS_GROWTH_LIMIT_PCT, higher_is_better=False),
)
async def soak(ctx: Context) -> Measurement:
    """Steady nightly-like traffic through 2 processes of every service: memory, connections, lag, gaps."""
    users_n = ctx.user_count(full=300, quick=30)
    soak_s = ctx.size(full=SOAK_MINUTES * 60, quick=120)
    warmup_s = ctx.size(full=120, quick=40)  # two rounds: the pools fill during the first nights
    round_s = ctx.size(full=60, quick=20)
    sample_s = ctx.size(full=20, quick=5)
    with pipeline_stack(
        ctx.engines,
        ensure_dir(ROOT / ".run" / "bench-logs"),
        f"bench_soak_{ctx.run_id[-6:]}",
        common_env={"LOG_LEVEL": "WARNING", "AGGREGATOR_SANDBOX_HISTORY_MONTHS": "1"},
        replicas=REPLICAS,
    ) as stack:
        users = [new_user("soak") for _ in range(users_n)]
        setup_started = time.monotonic()
        setup = await set_up_night(stack, users)
        await wait_drained(stack, timeout_s=2 * users_n + 600)
        setup_s = round(time.monotonic() - setup_started, 1)
        names = {service: stack.replica_names(service) for service in SERVICES}
        processes = {
            name: (proc.process.pid, proc.port)
            for name, proc in stack.processes.items()
            if proc.process is not None and proc.running
        }
        peers = Peers(
            port_of(ctx.engines.kafka_bootstrap),
            port_of(ctx.engines.mongodb_url),
            {port: name for name, (_, port) in processes.items()},
        )
        owner = {account: user.user_id for user in setup.linked for account in user.aggregator_account_ids}
        before = await bank_ids(stack, owner)
        client = make_client(ctx.engines.mongodb_url)
        try:
            async with inspector(ctx.engines.kafka_bootstrap) as kafka:
                groups = [group for group in await kafka.group_ids() if stack.database in group]
                snapshots = await kafka.group_snapshots(groups)
                members = {s.group: len({m.consumer_id for m in s.assignments.values()}) for s in snapshots}
                run = Soak(
                    stack,
                    kafka,
                    AccountStore(client[f"{stack.database}_imp"]),
                    setup.linked,
                    setup.accounts,
                    groups,
                    processes,
                    peers,
                )
                soak_at = datetime.now(UTC)
                cpu_before = run.cpu_now()
                stop_sampling, stop_reading = asyncio.Event(), asyncio.Event()
                sampler = asyncio.create_task(run.sample_every(sample_s, stop_sampling))
                reader = asyncio.create_task(run.read_operations(stop_reading))
                try:
                    stopped_early = await run.traffic(soak_s, round_s)
                    stop_reading.set()
                    traffic_end_s = run.now()
                    # the last round waited for lag 0 already; a round that did not is waited for here
                    end_drain_s: float | None = 0.0
                    if stopped_early:
                        drain_started = time.monotonic()
                        try:
                            await wait_for_async(
                                run.total_lag, END_DRAIN_S, "the soak drained", 1, until=is_zero
                            )
                            end_drain_s = round(time.monotonic() - drain_started, 1)
                        except TimeoutError:
                            end_drain_s = None  # `lag_at_end` fails; the figures are still written
                    cpu = cpu_used(cpu_before, run.cpu_now())
                finally:
                    stop_reading.set()
                    stop_sampling.set()
                    await asyncio.gather(reader, sampler)
                final = await run.sample()
                operations = await categorised_since(stack, soak_at)
                after = await bank_ids(stack, owner)
        finally:
            await client.close()

    last = run.rounds[-1] if run.rounds else None
    booked = {tx: owner[account] for account, ids in after.items() for tx in ids - before[account]}
    lines = reconcile(booked, operations)
    steady_from, steady_to = float(warmup_s), traffic_end_s
    series = run.samples[:-1]  # the final sample is taken once idle, after the traffic

    service_names = [name for service in SERVICES for name in names[service]]
    memory, connections = process_trends(series, list(processes), steady_from, steady_to)
    growth = [memory[name].get("growth_pct") for name in service_names]
    worst_growth = max((g for g in growth if g is not None), default=None)
    if worst_growth is None:
        raise RuntimeError(f"no memory trend: {len(series)} samples over {traffic_end_s} s of traffic")
    drained = [r.drained_s for r in run.rounds if r.drained_s is not None]
    gaps_after_rounds = [r.balance_gaps for r in run.rounds if r.balance_gaps is not None]
    gap_max = max([*gaps_after_rounds, final["gap"]])
    read_errors = sum(run.reads.errors.values())
    checks = {
        "memory_flat": check(
            worst_growth,
            RSS_GROWTH_LIMIT_PCT,
            all(memory[name].get("flat") is True for name in service_names),
        ),
        "connections_flat": check(
            {name: connections[name]["flat"] for name in service_names},
            f"last quarter's floor <= second's + max({CONNECTION_SLACK}, {CONNECTION_SLACK_PCT:g}%), "
            "or <= third's",
            all(connections[name]["flat"] is True for name in service_names),
        ),
        "rounds_drained": check(
            f"{len(drained)} of {len(run.rounds)}", ROUND_WAIT_S, not stopped_early and bool(drained)
        ),
        "lag_at_end": check(final["lag"], 0, final["lag"] == 0),
        "balance_gap_accounts_max": check(gap_max, 0, gap_max == 0),
        "missing": check(lines["missing"], 0, lines["missing"] == 0),
        "duplicates": check(lines["duplicates"], 0, lines["duplicates"] == 0),
        "extra": check(lines["extra"], 0, lines["extra"] == 0),
        "uncategorised": check(lines["uncategorised"], 0, lines["uncategorised"] == 0),
        "booked_as_counted": check(
            lines["booked"],
            sum(r.booked for r in run.rounds),
            lines["booked"] == sum(r.booked for r in run.rounds),
        ),
        "read_errors": check(read_errors, 0, read_errors == 0),
        "steady_minutes": check(
            round((steady_to - steady_from) / 60, 1),
            round((soak_s - warmup_s) / 60, 1),
            steady_to - steady_from >= soak_s - warmup_s,
        ),
    }
    return Measurement(
        "soak: largest RSS growth of a service process, second to last quarter of the steady phase",
        "%",
        worst_growth,
        {
            "users": users_n,
            "accounts": setup.accounts,
            "replicas": names,
            "group_members": members,
            "soak_s": soak_s,
            "warmup_s": warmup_s,
            "round_s": round_s,
            "sample_s": sample_s,
            "traffic_s": traffic_end_s,
            "steady_minutes": round((steady_to - steady_from) / 60, 1),
            "stopped_early": stopped_early,
            "rounds": len(run.rounds),
            "round_drained_s": spread(drained),
            "round_synced_s": spread([r.synced_s for r in run.rounds if r.synced_s is not None]),
            "lines": lines,
            "memory": memory,
            "connections": connections,
            "max_lag": max((s["lag"] for s in run.samples), default=0),
            "max_lag_by_group": run.lag_max_by_group,
            # from the last round's nightly request to every group at lag 0 (every round's: round_drained_s);
            # after a round that did not drain, from the traffic's end
            "lag_back_to_zero_s": last.drained_s if last is not None and not stopped_early else end_drain_s,
            "balance_gap_accounts_max": gap_max,
            "balance_gap_accounts_max_any_sample": max((s["gap"] for s in run.samples), default=0),
            "balance_gap_accounts_end": final["gap"],
            "balance_gap_source": "the importer's store (AccountStore.count_balance_gaps: accounts whose "
            "latest balance check found a gap), one count for both importer processes",
            "reads": run.reads.summary(),
            "reads_empty": run.reads.empty,
            "reads_last_error": run.reads.last_error,
            "sample_errors": run.sample_errors,
            "last_sample_error": run.last_sample_error,
            "cpu_s": cpu,
            "setup_s": setup_s,
            "checks": {**checks, "all_passed": all(c["passed"] for c in checks.values())},
            "rounds_detail": [vars(r) for r in run.rounds],
            "samples": sample_table(run.samples, list(processes)),
        },
    )
