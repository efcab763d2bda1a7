"""Time for the sandbox: an injectable clock and the Powens-style timestamp format."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class FixedClock:
    """A clock for tests: returns `now` until moved."""

    def __init__(self, now: datetime) -> None:
        self._now = now.astimezone(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta

    def set(self, now: datetime) -> None:
        with self._lock:
            self._now = now.astimezone(UTC)


def format_ts(moment: datetime) -> str:
    """UTC, ISO 8601, whole seconds: `2025-03-12T14:05:33Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_date(day: date) -> str:
    return day.isoformat()


def parse_ts(text: str) -> datetime:
    """Parse a `last_update`-style value: ISO date-time (`T` or space, `Z`, offset or none) or a date.

    Naive values are taken as UTC. A `+` turned into a space by a careless URL encoder is put back.
    Raises ValueError when nothing fits.
    """
    raw = text.strip()
    if not raw:
        raise ValueError("empty timestamp")
    if len(raw) == 10:
        day = date.fromisoformat(raw)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    candidates = [raw]
    if " " in raw[11:]:  # "2025-03-12T14:05:33 00:00": the + of the offset was decoded as a space
        head, _, tail = raw.rpartition(" ")
        candidates.append(f"{head}+{tail}")
    for candidate in candidates:
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    raise ValueError(f"not a timestamp: {text!r}")
