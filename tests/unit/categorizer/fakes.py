"""The categorizer's ports in memory (services/categorizer/ports.py): dicts and lists, the same answers as
the MongoDB and Kafka adapters for what the handler tests do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar

from services.categorizer.domain.matching import Categorization
from services.categorizer.domain.rules import RuleSet
from services.categorizer.domain.transfers import TransferLeg
from services.categorizer.ports import (
    Categorized,
    Projected,
    RulesStatus,
    Seen,
    StoredLeg,
    StoredRules,
    operation_key,
)
from shared.contract.payloads import TransferRef

T = TypeVar("T")


@dataclass
class _Rules:
    stored: StoredRules
    pending: bool = False
    requested_at: datetime | None = None
    correlation_id: str | None = None


class _Held:
    async def keep(self) -> None:
        return None


class MemoryRuleSets:
    """RuleSets: one record per user; a change keeps the payees of the version it replaces; one
    re-examination of a user at a time."""

    def __init__(self) -> None:
        self.users: dict[str, _Rules] = {}
        self.reexamined: set[str] = set()  # users whose re-examination is held now

    @contextlib.asynccontextmanager
    async def reexamining(self, user_id: str) -> AsyncIterator[_Held | None]:
        if user_id in self.reexamined:
            yield None
            return
        self.reexamined.add(user_id)
        try:
            yield _Held()
        finally:
            self.reexamined.discard(user_id)

    async def stored(self, user_id: str) -> StoredRules:
        found = self.users.get(user_id)
        return StoredRules(RuleSet(user_id)) if found is None else found.stored

    async def get(self, user_id: str) -> RuleSet:
        return (await self.stored(user_id)).ruleset

    async def versions(self, user_ids: Iterable[str]) -> dict[str, int]:
        return {user: (await self.get(user)).version for user in set(user_ids)}

    async def update(
        self,
        user_id: str,
        command: Callable[[RuleSet], tuple[RuleSet, T]],
        at: datetime,
        correlation_id: str,
        *,
        reexamine: bool,
    ) -> tuple[RuleSet, T]:
        before = await self.stored(user_id)
        after, answer = command(before.ruleset)
        snapshots = {**before.kept(before.examined_version), before.ruleset.version: before.ruleset.payees}
        snapshots[after.version] = after.payees
        entry = self.users.get(user_id) or _Rules(before)
        entry.stored = StoredRules(after, before.examined_version, snapshots)
        entry.correlation_id = correlation_id
        if reexamine:
            entry.pending, entry.requested_at = True, at
        self.users[user_id] = entry
        return after, answer

    async def reexamination_done(self, user_id: str, version: int) -> None:
        entry = self.users.get(user_id)
        if entry is None:
            return
        stored = entry.stored
        since = max(stored.examined_version, version)
        snapshots = {**stored.kept(since), stored.ruleset.version: stored.ruleset.payees}
        entry.stored = StoredRules(stored.ruleset, since, snapshots)
        entry.pending = stored.ruleset.version > since

    async def pending_since(self, before: datetime, limit: int = 100) -> list[str]:
        return [
            user
            for user, entry in self.users.items()
            if entry.pending and entry.requested_at is not None and entry.requested_at < before
        ][:limit]

    async def status(self, user_id: str) -> RulesStatus:
        entry = self.users.get(user_id)
        if entry is None:
            return RulesStatus(0, False)
        return RulesStatus(entry.stored.ruleset.version, entry.pending)

    async def correlation_id(self, user_id: str) -> str | None:
        entry = self.users.get(user_id)
        return None if entry is None else entry.correlation_id


class MemoryProjection:
    """Projection: the state each operation's writes leave (a write sets what it says; a deletion
    forgets everything before it), the user's choice and the rules' result ranked as the adapter ranks
    them (the highest choice number, the newest rules version)."""

    def __init__(self) -> None:
        self.operations: dict[str, Projected] = {}  # operation_key -> the operation
        self.choices: set[tuple[str, str, int]] = set()  # (user, operation, number) claimed

    async def get(self, user_id: str, operation_id: str) -> Projected | None:
        return self.operations.get(operation_key(user_id, operation_id))

    async def get_many(self, operations: Iterable[tuple[str, str, str, str | None]]) -> dict[str, Projected]:
        found: dict[str, Projected] = {}
        for user_id, account_id, op_id, month in operations:
            op = self.operations.get(operation_key(user_id, op_id))
            if op is not None and (op.account_id, op.month) == (account_id, month):
                found[operation_key(user_id, op_id)] = op
        return found

    async def of_user(self, user_id: str) -> AsyncIterator[Projected]:
        for op in list(self.operations.values()):
            if op.user_id == user_id:
                yield op

    async def write_seen(self, seen: Sequence[Seen], at: datetime) -> None:
        for item in seen:
            key = operation_key(item.user_id, item.operation_id)
            op = self.operations.get(key) or Projected(
                item.user_id, item.operation_id, item.account_id, "", "", 0, None, None, item.month
            )
            op = replace(op, account_id=item.account_id, memo=item.memo, label=item.label, month=item.month)
            if (
                item.seen_version is not None
                and item.result is not None
                and item.seen_version >= op.seen_version
            ):
                op = replace(op, seen_version=item.seen_version, result=item.result)
            if item.manual is not None and item.choice >= op.choice:
                op = replace(op, manual=item.manual, choice=item.choice)
            self.operations[key] = op

    def _set_result(self, user_id: str, operation_id: str, version: int, result: Categorization) -> None:
        key = operation_key(user_id, operation_id)
        if key in self.operations and version >= self.operations[key].seen_version:
            self.operations[key] = replace(self.operations[key], seen_version=version, result=result)

    async def set_seen_version(self, items: Sequence[tuple[Seen, int, Categorization]], at: datetime) -> None:
        for item, version, result in items:
            self._set_result(item.user_id, item.operation_id, version, result)

    async def set_results(self, items: Sequence[tuple[Projected, int, Categorization]], at: datetime) -> None:
        for op, version, result in items:
            self._set_result(op.user_id, op.operation_id, version, result)

    async def set_choice(
        self,
        op: Projected,
        manual: Categorization | None,
        choice: int,
        at: datetime,
        seen: tuple[int, Categorization] | None = None,
    ) -> None:
        key = operation_key(op.user_id, op.operation_id)
        if key not in self.operations or choice < self.operations[key].choice:
            return
        now = replace(self.operations[key], manual=manual, choice=choice)
        if seen is not None and seen[0] >= now.seen_version:
            now = replace(now, seen_version=seen[0], result=seen[1])
        self.operations[key] = now

    async def next_choice(self, op: Projected, at: datetime) -> int:
        number = op.choice + 1
        while (op.user_id, op.operation_id, number) in self.choices:
            number += 1
        self.choices.add((op.user_id, op.operation_id, number))
        return number

    async def delete(
        self, user_id: str, account_id: str, month: str | None, operation_ids: Sequence[str], at: datetime
    ) -> None:
        for op_id in operation_ids:
            self.operations.pop(operation_key(user_id, op_id), None)

    async def delete_account(self, user_id: str, account_id: str) -> int:
        gone = [
            k for k, op in self.operations.items() if (op.user_id, op.account_id) == (user_id, account_id)
        ]
        for key in gone:
            del self.operations[key]
        return len(gone)


class MemoryTransfers:
    """Transfers: a user's legs by operation id, and one pairing of a user's legs at a time."""

    def __init__(self) -> None:
        self.legs: dict[str, dict[str, StoredLeg]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def pairing(self, user_ids: Sequence[str]) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as held:
            for user_id in sorted(set(user_ids)):
                await held.enter_async_context(self._locks.setdefault(user_id, asyncio.Lock()))
            yield

    async def put(self, legs: Sequence[tuple[str, TransferLeg, str]], at: datetime) -> None:
        for user_id, leg, month in legs:
            own = self.legs.setdefault(user_id, {})
            before = own.get(leg.operation_id)
            own[leg.operation_id] = StoredLeg(user_id, leg, month, None if before is None else before.partner)

    async def of_user(self, user_id: str) -> dict[str, StoredLeg]:
        return dict(self.legs.get(user_id, {}))

    async def get(self, user_id: str, operation_id: str) -> StoredLeg | None:
        return self.legs.get(user_id, {}).get(operation_id)

    async def write(
        self, user_id: str, links: dict[str, TransferRef | None], gone: Iterable[str], at: datetime
    ) -> None:
        own = self.legs.setdefault(user_id, {})
        for op_id, ref in links.items():
            if op_id in own:
                own[op_id] = replace(own[op_id], partner=ref)
        for op_id in gone:
            own.pop(op_id, None)

    async def delete_account(self, user_id: str, account_id: str) -> int:
        own = self.legs.get(user_id, {})
        gone = [op_id for op_id, leg in own.items() if leg.leg.account_id == account_id]
        for op_id in gone:
            del own[op_id]
        return len(gone)


@dataclass
class RecordingCategorizations:
    """Categorizations: what was announced, in order."""

    announced: list[Categorized] = field(default_factory=list)

    async def announce(self, items: Sequence[Categorized]) -> None:
        self.announced.extend(items)
