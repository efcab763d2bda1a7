"""Filtering and paging of transaction lists, Powens style. Pure functions over `Transaction` records.

Order: `date` descending, then `id` descending (most recent first, a stable total order).
Deleted lines (`deleted` set) are left out unless the query asks for changes (`last_update`), for them
(`deleted=true`) or for everything (`all`): a client that follows changes learns of deletions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from sandbox.models import Transaction

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


@dataclass(frozen=True)
class TransactionQuery:
    min_date: date | None = None  # inclusive, on `date`
    max_date: date | None = None  # inclusive, on `date`
    last_update: datetime | None = None  # strictly after
    deleted: bool | None = None  # None: the default rule above
    all: bool = False
    income: bool | None = None

    @property
    def include_deleted(self) -> bool:
        if self.deleted is not None:
            return self.deleted
        return self.all or self.last_update is not None


def matches(tx: Transaction, query: TransactionQuery) -> bool:
    if tx.deleted is not None and not query.include_deleted:
        return False
    if not tx.active and not query.all:
        return False
    if query.min_date is not None and tx.date < query.min_date:
        return False
    if query.max_date is not None and tx.date > query.max_date:
        return False
    if query.last_update is not None and tx.last_update <= query.last_update:
        return False
    return query.income is None or (tx.value_cents > 0) == query.income


def select(transactions: Iterable[Transaction], query: TransactionQuery) -> list[Transaction]:
    """The matching lines, most recent first."""
    rows = [tx for tx in transactions if matches(tx, query)]
    rows.sort(key=lambda tx: (tx.date, tx.id), reverse=True)
    return rows


@dataclass(frozen=True)
class Page:
    items: list[Transaction]
    total: int
    offset: int
    limit: int
    first_date: date | None  # over every matching line
    last_date: date | None
    result_min_date: date | None  # over this page
    result_max_date: date | None

    @property
    def next_offset(self) -> int | None:
        following = self.offset + len(self.items)
        return following if following < self.total and self.items else None


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    return max(1, min(limit, MAX_LIMIT))


def paginate(rows: list[Transaction], offset: int, limit: int) -> Page:
    items = rows[offset : offset + limit]
    dates = [tx.date for tx in rows]
    page_dates = [tx.date for tx in items]
    return Page(
        items=items,
        total=len(rows),
        offset=offset,
        limit=limit,
        first_date=min(dates) if dates else None,
        last_date=max(dates) if dates else None,
        result_min_date=min(page_dates) if page_dates else None,
        result_max_date=max(page_dates) if page_dates else None,
    )
