"""Erasing a user (RGPD article 17): the request, its status, and the entitlements' own documents.

`POST /v1/ops/users/{user_id}/erase` destroys the user's data key first (shared.vault: every sealed record
of theirs in Kafka becomes unreadable at once), then announces `user.erasure_requested`. Each service,
this one included (shared.erasure), removes its documents and answers `user.erased`; this module records
the answers in the erasure's status. The erase id is the user's: asking twice is the same erasure, asked
again (every service does its part again, finding nothing left).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.entitlements.adapters import EntitlementsRepository
from shared.consumer import Incoming, TopicConsumer
from shared.contract.envelope import CloudEvent, deterministic_event_id
from shared.contract.payloads import UserErased, UserErasureRequested
from shared.contract.topics import ENTITLEMENTS
from shared.erasure import erasures_group, subscribe_erasures
from shared.kafka import EventPublisher
from shared.service import Runtime
from shared.vault import KeyVault

Doc = dict[str, Any]
SERVICE = "entitlements"
# every service that holds documents of a user, and answers an erasure
ERASING_SERVICES = ("entitlements", "connector", "importer", "categorizer")


def erase_id_of(user_id: str) -> str:
    return deterministic_event_id("erasure", user_id)


class ErasureRegistry:
    """The `erasures` collection: one document per erased user, with each service's answer."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.coll = db["erasures"]

    async def requested(self, erase_id: str, user_id: str, at: datetime) -> Doc:
        """The erasure, recorded on its first request (a later one keeps the first date and answers)."""
        found = await self.coll.find_one({"_id": erase_id})
        if found is not None:
            return found
        doc: Doc = {"_id": erase_id, "user_id": user_id, "requested_at": at}
        try:
            await self.coll.insert_one(doc)
        except DuplicateKeyError:  # asked twice at once: the first one's record
            return await self.coll.find_one({"_id": erase_id}) or doc
        return doc

    async def answered(self, answer: UserErased) -> None:
        """One service's answer (answers of one user come in order: one partition, one writer)."""
        await self.coll.update_one(
            {"_id": answer.erase_id},
            {
                "$set": {
                    f"services.{answer.service}": {
                        "erased_at": answer.erased_at,
                        "documents_deleted": answer.documents_deleted,
                    }
                }
            },
        )

    async def get(self, erase_id: str) -> Doc | None:
        return await self.coll.find_one({"_id": erase_id})


def erasure_view(doc: Doc) -> dict[str, Any]:
    answers = {name: value for name, value in (doc.get("services") or {}).items() if name in ERASING_SERVICES}
    return {
        "erase_id": doc["_id"],
        "user_id": doc["user_id"],
        "requested_at": doc["requested_at"],
        "state": "done" if all(name in answers for name in ERASING_SERVICES) else "in_progress",
        "services": {name: answers.get(name) for name in ERASING_SERVICES},
    }


class Erasures:
    def __init__(
        self,
        registry: ErasureRegistry,
        entitlements: EntitlementsRepository,
        vault: KeyVault,
        publisher: EventPublisher,
    ) -> None:
        self.registry = registry
        self.entitlements = entitlements
        self.vault = vault
        self.publisher = publisher

    async def request(self, user_id: str, correlation_id: str) -> Doc:
        now = datetime.now(UTC)
        doc = await self.registry.requested(erase_id_of(user_id), user_id, now)
        # the key first: from this moment on, nothing of the user in the event log opens again
        await self.vault.destroy(user_id)
        request = UserErasureRequested(user_id=user_id, erase_id=doc["_id"], requested_at=now)
        event = CloudEvent.new(
            service=SERVICE,
            name="user.erasure_requested",
            data=request.model_dump(mode="json"),
            user_id=user_id,
            correlation_id=correlation_id,
            subject=user_id,
        )
        await self.publisher.publish(ENTITLEMENTS, user_id, event)
        return doc

    async def erase_own(self, user_id: str) -> int:
        """The user's rights and their history (the erasure's own record stays)."""
        deleted = (await self.entitlements.current.delete_many({"_id": user_id})).deleted_count
        deleted += (await self.entitlements.history.delete_many({"user_id": user_id})).deleted_count
        return deleted

    async def on_answers(self, batch: list[Incoming]) -> None:
        for incoming in batch:
            if isinstance(incoming.data, UserErased):
                await self.registry.answered(incoming.data)


def wire_erasures(runtime: Runtime, repository: EntitlementsRepository) -> Erasures:
    erasures = Erasures(ErasureRegistry(runtime.db), repository, runtime.sealer.vault, runtime.publisher)
    subscribe_erasures(runtime, erasures.erase_own)
    TopicConsumer(
        runtime.broker,
        SERVICE,
        ENTITLEMENTS,
        {"user.erased": UserErased},
        erasures.on_answers,
        sealer=runtime.sealer,
    ).subscribe(erasures_group(runtime) + "-answers")
    return erasures
