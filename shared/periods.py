"""Calendar periods the services group by (pure)."""

from __future__ import annotations

from datetime import date


def month_of(day: date) -> str:
    """The month a day belongs to (`YYYY-MM`): the grouping of operations, sheets and search pages."""
    return day.isoformat()[:7]
