"""What each request, each answer and the outbox relay do: load, decide with the domain, store, announce.

Entitlements: a command runs under optimistic concurrency; the new state and its change are stored at
once (the change in the state's outbox), then relayed: recorded in the history and announced as
`entitlement.changed`, then taken out of the outbox. A crash in between only delays the event.

Erasures (RGPD art. 17): the user's data key is destroyed first (every sealed record of theirs in Kafka
becomes unreadable at once), then `user.erasure_requested` is announced. Each service, this one included
(shared.erasure, with `erase_own`), removes its documents and answers `user.erased`; the answers are
recorded in the erasure's status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from services.entitlements.domain.commands import Command
from services.entitlements.domain.erasure import Erasure, ServiceErased, erase_id_of
from services.entitlements.domain.history import Actor, ChangeRecord
from services.entitlements.domain.rights import Entitlements, decide
from services.entitlements.ports import (
    Announcer,
    Coordination,
    EntitlementsStore,
    ErasureStore,
    KeyShredder,
)
from shared.contract.payloads import EntitlementChange, EntitlementChanged, UserErased, UserErasureRequested
from shared.logging import get_logger

log = get_logger(__name__)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ConcurrentUpdate(Exception):
    """Too many writers raced on one user's entitlements."""


def entitlement_changed(record: ChangeRecord) -> EntitlementChanged:
    """The event of one change: the resulting rights, whole, with the change, its date and its author."""
    state = record.after
    decision = decide(state)
    return EntitlementChanged(
        user_id=state.user_id,
        plan=state.plan,
        options=state.option_names,
        auto_sync_allowed=decision.allowed,
        reason=decision.reason,
        code=decision.code,
        version=state.version,
        change=EntitlementChange(action=record.action.value, plan=record.plan, option=record.option),
        changed_at=record.at,
        actor=record.actor.as_dict() if record.actor else None,
    )


class EntitlementsHandlers:
    def __init__(
        self,
        store: EntitlementsStore,
        announcer: Announcer,
        coordination: Coordination,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.announcer = announcer
        # one writer per user and one relay at a time in this process (the adapters say why); events
        # may still repeat across replicas: the event id is deterministic, and consumers apply an
        # entitlement only when its version is newer than what they hold
        self.coordination = coordination
        self.clock = clock

    async def get(self, user_id: str) -> Entitlements:
        return await self.store.get(user_id)

    async def history(self, user_id: str, limit: int) -> list[ChangeRecord]:
        return await self.store.list_history(user_id, limit)

    async def apply(
        self, user_id: str, command: Command, request_id: str, actor: Actor
    ) -> tuple[Entitlements, bool]:
        """Runs a command with optimistic concurrency; returns the resulting state and whether it changed.

        `actor` goes into the history and the event: who changed what.
        """
        async with self.coordination.one_writer(user_id):
            for _ in range(10):
                current = await self.store.get(user_id)
                change = command(current)
                if change is None:
                    return current, False
                record = ChangeRecord.of(change, at=self.clock(), request_id=request_id, actor=actor)
                if await self.store.save(change.after, current.version, record):
                    log.info(
                        "entitlement_changed",
                        user_id=user_id,
                        action=change.action.value,
                        version=record.version,
                        actor=actor.sub,
                        actor_scope=actor.scope,
                    )
                    await self.relay_user(user_id)
                    return change.after, True
            raise ConcurrentUpdate(user_id)

    async def relay_user(self, user_id: str) -> int:
        """Announces what the user's outbox holds; returns how many events."""
        async with self.coordination.one_relay():
            return await self._relay(await self.store.outbox(user_id))

    async def relay_pending(self) -> int:
        """Publishes what an earlier crash or failure left in outboxes; returns how many events."""
        async with self.coordination.one_relay():
            return await self._relay(await self.store.pending())

    async def _relay(self, records: Sequence[ChangeRecord]) -> int:
        for record in records:
            await self.store.record_history(record)
            await self.announcer.entitlement_changed(
                entitlement_changed(record), correlation_id=record.request_id, at=record.at
            )
            await self.store.mark_sent(record.user_id, record.version)
        return len(records)


class ErasureHandlers:
    def __init__(
        self,
        erasures: ErasureStore,
        entitlements: EntitlementsStore,
        keys: KeyShredder,
        announcer: Announcer,
        clock: Clock = utc_now,
    ) -> None:
        self.erasures = erasures
        self.entitlements = entitlements
        self.keys = keys
        self.announcer = announcer
        self.clock = clock

    async def request(self, user_id: str, correlation_id: str) -> Erasure:
        """Idempotent: asking again is the same erasure (its first date), done again."""
        now = self.clock()
        erasure = await self.erasures.requested(erase_id_of(user_id), user_id, now)
        # the key first: from this moment on, nothing of the user in the event log opens again
        await self.keys.destroy(user_id)
        request = UserErasureRequested(user_id=user_id, erase_id=erasure.erase_id, requested_at=now)
        await self.announcer.erasure_requested(request, correlation_id=correlation_id)
        return erasure

    async def get(self, erase_id: str) -> Erasure | None:
        return await self.erasures.get(erase_id)

    async def erase_own(self, user_id: str) -> int:
        """The user's rights and their history (the erasure's own record stays)."""
        return await self.entitlements.erase(user_id)

    async def on_answers(self, answers: Sequence[UserErased]) -> None:
        """Each service's answer (answers of one user come in order: one partition, one writer)."""
        for answer in answers:
            await self.erasures.answered(
                answer.erase_id,
                answer.service,
                ServiceErased(erased_at=answer.erased_at, documents_deleted=answer.documents_deleted),
            )
