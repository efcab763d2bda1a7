"""The night: its window, each user's stable moment in it, who is requested and who is left alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.connector.domain.failures import SyncState


@dataclass(frozen=True)
class NightlyWindow:
    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def parse(cls, window: str, zone: str) -> NightlyWindow:
        """`"02:00-04:00"` in `Europe/Paris`."""
        try:
            first, last = (time.fromisoformat(part.strip()) for part in window.split("-"))
        except ValueError as exc:
            raise ValueError(f"nightly window must look like 02:00-04:00, not {window!r}") from exc
        if last <= first:
            raise ValueError(f"nightly window must end after it starts: {window!r}")
        return cls(first, last, ZoneInfo(zone))

    def next_start(self, now: datetime) -> datetime:
        """The next window start after `now` (aware), in UTC; DST-safe via the zone."""
        local = now.astimezone(self.zone)
        candidate_day: date = local.date()
        for _ in range(3):
            candidate = datetime.combine(candidate_day, self.start, tzinfo=self.zone)
            if candidate > local:
                return candidate.astimezone(UTC)
            candidate_day += timedelta(days=1)
        raise AssertionError("unreachable: a later day always starts after now")

    def span(self) -> timedelta:
        today = date(2000, 1, 3)
        return datetime.combine(today, self.end) - datetime.combine(today, self.start)

    def run_key(self, now: datetime) -> str:
        """The local date of the night a run belongs to: one run per night across all replicas."""
        return now.astimezone(self.zone).date().isoformat()


def spread_offset(user_id: str, span: timedelta) -> timedelta:
    """A stable place for each user inside the window, so the aggregator is not hit all at once."""
    digest = int(hashlib.sha256(user_id.encode()).hexdigest()[:8], 16)
    return timedelta(seconds=digest % max(1, int(span.total_seconds())))


def nightly_order(users: Iterable[str], span: timedelta) -> list[tuple[timedelta, str]]:
    """Each user's place in the night (`spread_offset`), earliest first: the scheduler requests them
    as their moment comes, so the aggregator sees a steady flow instead of everyone at the window's start."""
    return sorted((spread_offset(user, span), user) for user in users)


def spreading_span(window: NightlyWindow) -> timedelta:
    """Requests are spread over the first three quarters of the window; the last quarter lets the
    last of them finish inside it."""
    return window.span() * 3 / 4


@dataclass(frozen=True)
class LiveConnection:
    """What the night needs of a connection not removed (all of them are read, once)."""

    key: str
    user_id: str
    paused: bool = False
    state: str | None = None

    @property
    def waiting_on_user(self) -> bool:
        """Only the reconnect webview helps it: the night does not retry it."""
        return self.state == SyncState.ACTION_NEEDED.value

    @property
    def to_sync(self) -> bool:
        return not self.paused and not self.waiting_on_user


def connections_by_user(connections: Iterable[LiveConnection]) -> dict[str, list[LiveConnection]]:
    by_user: dict[str, list[LiveConnection]] = {}
    for conn in connections:
        by_user.setdefault(conn.user_id, []).append(conn)
    return by_user


def waiting_on_user(connections: Mapping[str, Sequence[LiveConnection]]) -> set[str]:
    """Users whose every connection is paused or waits on them, one at least waiting: not requested."""
    return {
        user
        for user, conns in connections.items()
        if all(c.paused or c.waiting_on_user for c in conns) and any(c.waiting_on_user for c in conns)
    }


@dataclass(frozen=True)
class NightlyReport:
    """What a nightly run did: users with live connections, requested, skipped (with those waiting)."""

    users: int
    requested: int
    skipped: int
    waiting_on_user: int
