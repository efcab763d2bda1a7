"""What the handlers need from the outside, over the domain's records: storage, the key vault, the
event bus and the process's coordination. The adapters (services.entitlements.adapters) implement them
on MongoDB, shared.vault and Kafka; tests/unit/entitlements/fakes.py in memory."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from services.entitlements.domain.erasure import Erasure, ServiceErased
from services.entitlements.domain.history import ChangeRecord
from services.entitlements.domain.rights import Entitlements
from shared.contract.payloads import EntitlementChanged, UserErasureRequested


class EntitlementsStore(Protocol):
    """The users' rights with, in the same record, the outbox of changes not yet announced; and the
    history of the announced ones."""

    async def get(self, user_id: str) -> Entitlements:
        """The user's rights (a user never seen: Standard, no option, version 0)."""
        ...

    async def save(self, after: Entitlements, expected_version: int, record: ChangeRecord) -> bool:
        """The new state and its change in the outbox, at once, if the stored version is still
        `expected_version`; False when another writer got there first."""
        ...

    async def outbox(self, user_id: str) -> list[ChangeRecord]:
        """The user's changes not yet announced, in version order."""
        ...

    async def pending(self, limit: int = 100) -> list[ChangeRecord]:
        """Changes not yet announced of up to `limit` users, each user's in version order."""
        ...

    async def record_history(self, record: ChangeRecord) -> None:
        """Idempotent: a change recorded twice is one line of history."""
        ...

    async def mark_sent(self, user_id: str, version: int) -> None:
        """The change of that version leaves the outbox (one pushed meanwhile stays)."""
        ...

    async def list_history(self, user_id: str, limit: int) -> list[ChangeRecord]:
        """The user's recorded changes, the last first."""
        ...

    async def erase(self, user_id: str) -> int:
        """Removes the user's rights and history; how many documents went."""
        ...


class ErasureStore(Protocol):
    """The erasures asked for, one per user, with each service's answer."""

    async def requested(self, erase_id: str, user_id: str, at: datetime) -> Erasure:
        """The erasure, recorded on its first request (a later one keeps the first date and answers)."""
        ...

    async def answered(self, erase_id: str, service: str, answer: ServiceErased) -> None: ...

    async def get(self, erase_id: str) -> Erasure | None: ...


class KeyShredder(Protocol):
    """The users' data keys (shared.vault): destroying one makes the user's sealed records unreadable."""

    async def destroy(self, user_id: str) -> None: ...


class Announcer(Protocol):
    """The events of banksync.entitlements.v1 this service writes (keyed by the user)."""

    async def entitlement_changed(
        self, change: EntitlementChanged, *, correlation_id: str, at: datetime
    ) -> None:
        """`entitlement.changed`, once per version (a repeat carries the same event id)."""
        ...

    async def erasure_requested(self, request: UserErasureRequested, *, correlation_id: str) -> None: ...


class Coordination(Protocol):
    """Who waits for whom inside one process."""

    def one_writer(self, user_id: str) -> AbstractAsyncContextManager[None]:
        """Changes of one user, one at a time."""
        ...

    def one_relay(self) -> AbstractAsyncContextManager[None]:
        """The outbox relay, one at a time: events leave in version order, and once each."""
        ...
