"""Pages of an account's operations on the real engine: read a month at a time, in the same order."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from services.importer.adapters.mongo import OperationStore, previous_month
from shared.periods import month_of

USER, ACCOUNT = "user-1", "acc-1"
FIRST = dt.date(2025, 10, 3)


@pytest.fixture
def store(operation_store: OperationStore) -> OperationStore:
    return operation_store


def operation(n: int, date: dt.date, account: str = ACCOUNT) -> dict[str, Any]:
    return {
        "_id": f"op-{n:04d}",
        "user_id": USER,
        "account_id": account,
        "date": date.isoformat(),
        "month": month_of(date),
        "amount": "-1.00",
    }


async def all_pages(
    store: OperationStore, months: list[str] | None, limit: int, **dates: dt.date | None
) -> list[list[str]]:
    pages: list[list[str]] = []
    after: tuple[str, str] | None = None
    while True:
        page = await store.page(
            USER,
            ACCOUNT,
            months=months,
            date_from=dates.get("date_from"),
            date_to=dates.get("date_to"),
            after=after,
            limit=limit,
        )
        pages.append([doc["_id"] for doc in page.items])
        if page.next_after is None:
            return pages
        after = page.next_after


def test_previous_month() -> None:
    assert previous_month("2026-01") == "2025-12"
    assert previous_month("2026-10") == "2026-09"
    assert month_of(dt.date(2026, 3, 31)) == "2026-03"


async def test_pages_by_month_are_the_pages_of_the_whole_account(store: OperationStore) -> None:
    # 400 operations over 13 months, several a day, a gap of two empty months, one dated ahead
    days = [FIRST + dt.timedelta(days=n // 3) for n in range(400) if not 60 <= n // 3 < 120]
    docs = [operation(n, day) for n, day in enumerate(days)]
    docs.append(operation(9999, dt.date(2027, 1, 15)))
    docs += [operation(5000 + n, FIRST, account="other") for n in range(20)]  # another account
    await store.insert_new(docs)
    months = sorted({doc["month"] for doc in docs if doc["account_id"] == ACCOUNT} | {"2025-12"})
    mine = sorted((d for d in docs if d["account_id"] == ACCOUNT), key=lambda d: (d["date"], d["_id"]))
    expected = [d["_id"] for d in reversed(mine)]
    for limit in (1, 7, 50, 500):
        by_month = await all_pages(store, months, limit)
        assert [i for page in by_month for i in page] == expected
        assert all(len(page) == limit for page in by_month[:-1])
        assert by_month == await all_pages(store, None, limit)  # the same pages as reading it whole
    window = {"date_from": dt.date(2025, 11, 10), "date_to": dt.date(2026, 2, 1)}
    inside = [
        d["_id"] for d in reversed(mine) if window["date_from"].isoformat() <= d["date"] <= "2026-02-01"
    ]
    assert [i for page in await all_pages(store, months, 25, **window) for i in page] == inside
    assert await all_pages(store, months, 25, **window) == await all_pages(store, None, 25, **window)


async def test_an_account_without_operations(store: OperationStore) -> None:
    assert await all_pages(store, [], 10) == [[]]
    assert await all_pages(store, ["2026-01"], 10) == [[]]
