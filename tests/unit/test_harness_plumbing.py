"""The one wait and the one pager that tests, benchmarks and the journey share (harness/)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from harness.paging import pages
from harness.waiting import wait_for, wait_for_async


def test_wait_for_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_for(lambda: next(counter) >= 3 and "done", 5, "the counter", every=0) == "done"


def test_wait_for_until_judges_the_value_and_returns_it() -> None:
    counter = itertools.count()
    assert wait_for(lambda: next(counter), 5, "the counter", every=0, until=lambda n: n == 0 or n >= 4) == 0
    assert wait_for(lambda: next(counter), 5, "the counter", every=0, until=lambda n: n >= 4) == 4


def test_wait_for_names_what_and_the_last_value_when_it_times_out() -> None:
    with pytest.raises(TimeoutError, match=r"the answer: not within 0.05 s \(last: \[\]\)"):
        wait_for(list, 0.05, "the answer", every=0.01)


def test_wait_for_async_takes_coroutine_and_plain_checks() -> None:
    counter = itertools.count()

    async def later() -> int | None:
        await asyncio.sleep(0)
        n = next(counter)
        return n if n >= 2 else None

    assert asyncio.run(wait_for_async(later, 5, "later", every=0)) == 2
    assert asyncio.run(wait_for_async(lambda: "now", 5, "now")) == "now"
    with pytest.raises(TimeoutError, match=r"never: not within 0.05 s \(last: 0\)"):
        asyncio.run(wait_for_async(lambda: 0, 0.05, "never", every=0.01))


def test_pages_follow_the_cursor_until_there_is_none() -> None:
    asked: list[dict[str, Any]] = []
    bodies = iter(
        [
            {"items": [1, 2], "next_cursor": "c1"},
            {"items": [3, 4], "next_cursor": "c2"},
            {"items": [5], "next_cursor": None},
        ]
    )

    def fetch(params: dict[str, Any]) -> dict[str, Any]:
        asked.append(params)
        return next(bodies)

    items = [item for body in pages(fetch, 2, q="x") for item in body["items"]]
    assert items == [1, 2, 3, 4, 5]
    assert asked == [
        {"q": "x", "limit": 2},
        {"q": "x", "limit": 2, "cursor": "c1"},
        {"q": "x", "limit": 2, "cursor": "c2"},
    ]
    # no limit: the API's own default
    assert next(pages(lambda params: {"items": [params], "next_cursor": None}, None))["items"] == [{}]
