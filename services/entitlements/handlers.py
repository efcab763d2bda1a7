"""What each request and the outbox relay do: load, decide with the domain, store, announce."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.entitlements.adapters import EntitlementsRepository, history_entry
from services.entitlements.domain import Change, Entitlements, Option, Plan, decide
from shared.contract.envelope import CloudEvent, deterministic_event_id
from shared.contract.topics import ENTITLEMENTS
from shared.kafka import EventPublisher
from shared.logging import get_logger

SERVICE = "entitlements"
log = get_logger(__name__)
Command = Callable[[Entitlements], Change | None]


class ConcurrentUpdate(Exception):
    """Too many writers raced on one user's entitlements."""


def view(entitlements: Entitlements) -> dict[str, Any]:
    decision = decide(entitlements)
    return {
        "user_id": entitlements.user_id,
        "plan": entitlements.plan.value,
        "options": sorted(o.value for o in entitlements.options),
        "auto_sync_allowed": decision.allowed,
        "reason": decision.reason,
        "code": decision.code,
        "version": entitlements.version,
    }


def changed_event(user_id: str, entry: dict[str, Any]) -> CloudEvent:
    state = Entitlements(
        user_id=user_id,
        plan=Plan(entry["plan"]),
        options=frozenset(Option(o) for o in entry["options"]),
        version=entry["version"],
    )
    at: datetime = entry["at"]
    return CloudEvent.new(
        service=SERVICE,
        name="entitlement.changed",
        data={
            **view(state),
            "change": {"action": entry["action"], **entry["detail"]},
            "changed_at": at.isoformat(),
            **({"actor": entry["actor"]} if entry.get("actor") else {}),
        },
        user_id=user_id,
        correlation_id=entry["request_id"],
        subject=user_id,
        event_id=deterministic_event_id("entitlement.changed", user_id, str(entry["version"])),
        time=at,
    )


class EntitlementsHandlers:
    def __init__(
        self,
        repository: EntitlementsRepository,
        publisher: EventPublisher,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.repository = repository
        self.publisher = publisher
        self.clock = clock
        # One relay at a time in this process, so events leave in version order and once each.
        # Several replicas may still repeat one: the event id is deterministic and consumers apply
        # an entitlement only when its version is newer than what they hold.
        self._relay_lock = asyncio.Lock()
        # FerretDB v1 can lose one of two concurrent updates of a document even when both filter on the
        # version, so changes of one user are serialised here; the version guard is what protects
        # writers in other replicas on MongoDB.
        self._user_locks = [asyncio.Lock() for _ in range(64)]

    async def get(self, user_id: str) -> Entitlements:
        return await self.repository.get(user_id)

    async def apply(
        self, user_id: str, command: Command, request_id: str, actor: dict[str, str]
    ) -> tuple[Entitlements, bool]:
        """Runs a command with optimistic concurrency; returns the resulting state and whether it changed.

        `actor` (the token's `sub` and scope) goes into the history and the event: who changed what.
        """
        async with self._user_locks[zlib.crc32(user_id.encode()) % len(self._user_locks)]:
            return await self._apply(user_id, command, request_id, actor)

    async def _apply(
        self, user_id: str, command: Command, request_id: str, actor: dict[str, str]
    ) -> tuple[Entitlements, bool]:
        for _ in range(10):
            current = await self.repository.get(user_id)
            change = command(current)
            if change is None:
                return current, False
            entry = history_entry(
                version=change.after.version,
                action=change.action.value,
                plan=change.after.plan.value,
                options=sorted(o.value for o in change.after.options),
                detail={k: v.value for k, v in (("plan", change.plan), ("option", change.option)) if v},
                at=self.clock(),
                request_id=request_id,
                actor=actor,
            )
            if await self.repository.save(change.after, current.version, entry):
                log.info(
                    "entitlement_changed",
                    user_id=user_id,
                    action=change.action.value,
                    version=entry["version"],
                    actor=actor["sub"],
                    actor_scope=actor["scope"],
                )
                await self.relay_user(user_id)
                return change.after, True
        raise ConcurrentUpdate(user_id)

    async def relay_user(self, user_id: str) -> None:
        async with self._relay_lock:
            doc = await self.repository.current.find_one({"_id": user_id})
            if doc is not None:
                await self._relay_doc(doc)

    async def relay_pending(self) -> int:
        """Publishes what an earlier crash or failure left in outboxes; returns how many events."""
        sent = 0
        async with self._relay_lock:
            for doc in await self.repository.pending():
                sent += await self._relay_doc(doc)
        return sent

    async def _relay_doc(self, doc: dict[str, Any]) -> int:
        user_id: str = doc["_id"]
        entries = sorted(doc.get("outbox", []), key=lambda e: e["version"])
        for entry in entries:
            await self.repository.record_history(user_id, entry)
            await self.publisher.publish(ENTITLEMENTS, user_id, changed_event(user_id, entry))
            await self.repository.mark_sent(user_id, entry["version"])
        return len(entries)

    async def run_relay(self, every_s: float = 2.0) -> None:
        while True:
            try:
                await self.relay_pending()
            except Exception as exc:
                log.warning("outbox_relay_failed", error=repr(exc))
            await asyncio.sleep(every_s)
