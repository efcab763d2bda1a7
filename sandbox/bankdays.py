"""Bank days for generated data: French public holidays, business days, month arithmetic."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return date(year, month, day + 1)


def holidays(year: int) -> frozenset[date]:
    """French public holidays (the days banks do not book)."""
    easter = _easter(year)
    fixed = [(1, 1), (5, 1), (5, 8), (7, 14), (8, 15), (11, 1), (11, 11), (12, 25)]
    moving = [easter + timedelta(days=1), easter + timedelta(days=39), easter + timedelta(days=50)]
    return frozenset([date(year, mo, da) for mo, da in fixed] + moving)


def is_business_day(day: date) -> bool:
    return day.weekday() < 5 and day not in holidays(day.year)


def business_day_on_or_after(day: date) -> date:
    while not is_business_day(day):
        day += timedelta(days=1)
    return day


def add_business_days(day: date, count: int) -> date:
    while count > 0:
        day += timedelta(days=1)
        if is_business_day(day):
            count -= 1
    return day


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) + months
    year, month0 = divmod(index, 12)
    return date(year, month0 + 1, min(day.day, days_in_month(year, month0 + 1)))


def days_in_month(year: int, month: int) -> int:
    following = date(year + (month == 12), month % 12 + 1, 1)
    return (following - timedelta(days=1)).day


def last_business_day(year: int, month: int) -> date:
    day = date(year, month, days_in_month(year, month))
    while not is_business_day(day):
        day -= timedelta(days=1)
    return day


def month_starts(start: date, end: date) -> Iterator[date]:
    """First day of every month that overlaps [start, end]."""
    current = date(start.year, start.month, 1)
    while current <= end:
        yield current
        current = add_months(current, 1)


def days(start: date, end: date) -> Iterator[date]:
    current = start
    while current <= end:
        yield current
        current += timedelta(days=1)
