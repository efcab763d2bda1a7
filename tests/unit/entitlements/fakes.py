"""The entitlements' ports in memory (services.entitlements.ports): dicts and lists, nothing mocked.

They keep the adapters' promises the handlers rely on: a compare-and-set on the version, an outbox in
the user's record, a history that takes a change once, an erasure recorded once per user.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from services.entitlements.domain.erasure import Erasure, ServiceErased
from services.entitlements.domain.history import ChangeRecord
from services.entitlements.domain.rights import Entitlements
from shared.contract.payloads import EntitlementChanged, UserErasureRequested


class MemoryEntitlements:
    def __init__(self) -> None:
        self.states: dict[str, Entitlements] = {}
        self.outboxes: dict[str, list[ChangeRecord]] = {}
        self.lines: dict[tuple[str, int], ChangeRecord] = {}

    async def get(self, user_id: str) -> Entitlements:
        return self.states.get(user_id) or Entitlements.unknown_user(user_id)

    async def save(self, after: Entitlements, expected_version: int, record: ChangeRecord) -> bool:
        if (await self.get(after.user_id)).version != expected_version:
            return False
        self.states[after.user_id] = after
        self.outboxes.setdefault(after.user_id, []).append(record)
        return True

    async def outbox(self, user_id: str) -> list[ChangeRecord]:
        return sorted(self.outboxes.get(user_id, []), key=lambda r: r.version)

    async def pending(self, limit: int = 100) -> list[ChangeRecord]:
        users = [user for user, records in self.outboxes.items() if records][:limit]
        return [record for user in users for record in await self.outbox(user)]

    async def record_history(self, record: ChangeRecord) -> None:
        self.lines.setdefault((record.user_id, record.version), record)

    async def mark_sent(self, user_id: str, version: int) -> None:
        self.outboxes[user_id] = [r for r in self.outboxes.get(user_id, []) if r.version != version]

    async def list_history(self, user_id: str, limit: int) -> list[ChangeRecord]:
        mine = [record for (user, _), record in self.lines.items() if user == user_id]
        return sorted(mine, key=lambda r: r.version, reverse=True)[:limit]

    async def erase(self, user_id: str) -> int:
        deleted = 1 if self.states.pop(user_id, None) else 0
        self.outboxes.pop(user_id, None)
        for key in [key for key in self.lines if key[0] == user_id]:
            del self.lines[key]
            deleted += 1
        return deleted


class MemoryErasures:
    def __init__(self) -> None:
        self.erasures: dict[str, Erasure] = {}

    async def requested(self, erase_id: str, user_id: str, at: datetime) -> Erasure:
        return self.erasures.setdefault(erase_id, Erasure(erase_id, user_id, at))

    async def answered(self, erase_id: str, service: str, answer: ServiceErased) -> None:
        erasure = self.erasures.get(erase_id)
        if erasure is not None:
            self.erasures[erase_id] = replace(erasure, answers={**erasure.answers, service: answer})

    async def get(self, erase_id: str) -> Erasure | None:
        return self.erasures.get(erase_id)


@dataclass
class MemoryKeys:
    """The users' data keys: who has one, and whose were destroyed."""

    keys: set[str] = field(default_factory=set)
    destroyed: list[str] = field(default_factory=list)

    async def destroy(self, user_id: str) -> None:
        self.keys.discard(user_id)
        self.destroyed.append(user_id)


@dataclass(frozen=True)
class Announced:
    """One announced event as its readers see it: its name, its payload, its correlation id."""

    name: str
    payload: BaseModel
    correlation_id: str
    key: str


@dataclass
class RecordingAnnouncer:
    announced: list[Announced] = field(default_factory=list)

    async def entitlement_changed(
        self, change: EntitlementChanged, *, correlation_id: str, at: datetime
    ) -> None:
        self.announced.append(Announced("entitlement.changed", change, correlation_id, change.user_id))

    async def erasure_requested(self, request: UserErasureRequested, *, correlation_id: str) -> None:
        self.announced.append(Announced("user.erasure_requested", request, correlation_id, request.user_id))


@dataclass
class FakeClock:
    """A clock that stands still until told (whole seconds: what MongoDB keeps of it, it gives back)."""

    now: datetime = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
