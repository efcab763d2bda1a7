"""A flood on a real service (issue #16): one token sends as fast as 8 clients can while a few healthy users
go on with their modest traffic. The flood is shed with 429 (each with `Retry-After`) and never becomes a
5xx; the healthy users are all answered, and fast.

Bounded and loopback only: the categorizer runs as its own process on the real engines, with its rate limit
set low for this process (`RATE_LIMIT_PER_S`, `RATE_LIMIT_BURST`) so that the flood is past it within a
second; the flood stops at `FLOOD_MAX_REQUESTS` or `FLOOD_MAX_S`, whichever comes first, and runs in a
process of its own, so that its client work does not delay the healthy users' measured requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from harness.devstack import Engines, ServiceProcess, bearer, categorizer_alone, new_user

pytestmark = pytest.mark.engines

PER_S = 20.0
BURST = 40
FLOOD_CLIENTS = 8
FLOOD_MAX_REQUESTS = 6000
FLOOD_MAX_S = 15.0
HEALTHY_USERS = 4
HEALTHY_EVERY_S = 0.1  # each healthy user: one request every 100 ms, 10 a second, half the rate
# the healthy users' p95 during the flood, measured on this 2-core machine with other test runs and a
# benchmark beside it (load average 4 to 27): 83 to 363 ms (p50 21 to 82 ms). About three times the worst: a
# busy machine does not fail the test, a service that made its users wait seconds behind a flood (a route
# blocking the event loop, a queue in front of the limiter) does
HEALTHY_P95_BOUND_S = 1.0
MEMOS = ["CB BOULANGERIE MARTIN 12/03", "PRLV SEPA EDF CLIENTS PARTICULIERS", "RETRAIT DAB 14/03 BNP"]
# the flood asks for what costs the service most: a preview of many memos (CPU) at each request
FLOOD_MEMOS = [f"{memo} REF{n}" for n in range(40) for memo in MEMOS]


@pytest.fixture(scope="module")
def flooded_categorizer(engines: Engines, log_dir: Any) -> Iterator[ServiceProcess]:
    with categorizer_alone(
        engines,
        log_dir,
        "flood",
        RATE_LIMIT_PER_S=str(PER_S),
        RATE_LIMIT_BURST=str(BURST),
        LOG_LEVEL="WARNING",
    ) as proc:
        yield proc


# ---- the flood, in a process of its own -----------------------------------------------------------------


def flood(url: str, user: str, max_requests: int, max_s: float) -> dict[str, Any]:
    """`FLOOD_CLIENTS` clients sending `user`'s request back to back until either bound."""
    return asyncio.run(_flood(url, user, max_requests, max_s))


async def _flood(url: str, user: str, max_requests: int, max_s: float) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    bad_refusals: list[str] = []
    retry_afters: Counter[int] = Counter()
    sent = 0
    started = time.monotonic()
    deadline = started + max_s
    async with httpx.AsyncClient(
        base_url=url,
        headers=bearer(user),
        timeout=10,
        limits=httpx.Limits(max_connections=FLOOD_CLIENTS),
    ) as api:

        async def one_client() -> None:
            nonlocal sent
            while sent < max_requests and time.monotonic() < deadline:
                sent += 1
                try:
                    answer = await api.post(
                        f"/v1/users/{user}/categorize/preview", json={"memos": FLOOD_MEMOS}
                    )
                except httpx.HTTPError as exc:
                    statuses[f"error {type(exc).__name__}"] += 1
                    continue
                statuses[str(answer.status_code)] += 1
                if answer.status_code == 429:
                    retry_after = answer.headers.get("retry-after", "")
                    code = answer.json().get("code")
                    if not retry_after.isdigit() or int(retry_after) < 1 or code != "rate_limited":
                        bad_refusals.append(f"Retry-After {retry_after!r}, code {code!r}")
                    else:
                        retry_afters[int(retry_after)] += 1

        await asyncio.gather(*(one_client() for _ in range(FLOOD_CLIENTS)))
    return {
        "sent": sent,
        "elapsed_s": time.monotonic() - started,
        "statuses": dict(statuses),
        "bad_refusals": bad_refusals[:5],
        "retry_afters": dict(retry_afters),
    }


# ---- the healthy users, here ----------------------------------------------------------------------------


@dataclass
class Healthy:
    user: str
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)


async def healthy_traffic(url: str, users: list[Healthy], until: concurrent.futures.Future[Any]) -> None:
    """Each user, one request every HEALTHY_EVERY_S (a listing, then a preview, in turn) while the flood
    lasts, and at most FLOOD_MAX_S + 5 s."""
    stop_at = time.monotonic() + FLOOD_MAX_S + 5

    async def one_user(healthy: Healthy) -> None:
        async with httpx.AsyncClient(base_url=url, headers=bearer(healthy.user), timeout=10) as api:
            turn = 0
            while not until.done() and time.monotonic() < stop_at:
                began = time.monotonic()
                if turn % 2 == 0:
                    answer = await api.get(f"/v1/users/{healthy.user}/payees")
                else:
                    answer = await api.post(
                        f"/v1/users/{healthy.user}/categorize/preview", json={"memos": MEMOS}
                    )
                healthy.latencies_s.append(time.monotonic() - began)
                healthy.statuses[answer.status_code] += 1
                turn += 1
                await asyncio.sleep(max(0.0, began + HEALTHY_EVERY_S - time.monotonic()))

    await asyncio.gather(*(one_user(each) for each in users))


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def test_a_flooding_token_is_shed_with_429_and_healthy_users_are_served(flooded_categorizer):
    flooder = new_user("flooder")
    users = [Healthy(new_user(f"healthy{n}")) for n in range(HEALTHY_USERS)]
    # the spawned process imports this module afresh: nothing of the test's state goes with it
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(time.sleep, 0).result(timeout=60)  # the worker is up before anything is timed
        flooding = pool.submit(flood, flooded_categorizer.url, flooder, FLOOD_MAX_REQUESTS, FLOOD_MAX_S)
        await healthy_traffic(flooded_categorizer.url, users, flooding)
        report = flooding.result(timeout=30)

    statuses = report["statuses"]
    latencies = sorted(s for each in users for s in each.latencies_s)
    figures = {
        "flood_requests": report["sent"],
        "flood_s": round(report["elapsed_s"], 1),
        "flood_statuses": statuses,
        "retry_after_s": report["retry_afters"],
        "healthy_requests": len(latencies),
        "healthy_p50_ms": round(1000 * percentile(latencies, 50), 1),
        "healthy_p95_ms": round(1000 * percentile(latencies, 95), 1),
        "healthy_max_ms": round(1000 * latencies[-1], 1),
    }
    print(f"\nflood figures: {figures}")

    # no 5xx and no failed connection, anywhere
    assert not [s for s in statuses if not s.isdigit() or int(s) >= 500], figures
    assert all(code < 500 for each in users for code in each.statuses), figures
    # at most the burst and the rate over the flood's time got through (a second of slack for the clocks),
    # the rest was shed with 429, each with its Retry-After
    at_most = BURST + PER_S * (report["elapsed_s"] + 1)
    assert set(statuses) <= {"200", "429"}, figures
    assert BURST <= statuses.get("200", 0) <= at_most, figures
    assert report["bad_refusals"] == [], report["bad_refusals"]
    # and it was a flood: at least three times what the limit lets through, so mostly 429
    assert report["sent"] >= 3 * at_most, figures
    # every healthy user was answered 2xx every time, all along the flood, and quickly
    for each in users:
        assert set(each.statuses) == {200}, (each.user, each.statuses)
        assert sum(each.statuses.values()) >= 0.5 * report["elapsed_s"] / HEALTHY_EVERY_S, figures
    assert percentile(latencies, 95) < HEALTHY_P95_BOUND_S, figures
