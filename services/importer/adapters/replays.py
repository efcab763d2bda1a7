"""Replays: their status documents in MongoDB, and their requests on the raw topic.

`replays`: one document per replay request (`_id` = replay id), so that any replica answers
`GET /v1/ops/replays/{id}`. The API inserts it (`requested`); the importer that owns the account's
partition claims it (`running`, with a fresh `run` token and its `runner`), writes its progress and its
end with `run` in the filter: a run that another one took over from (its partition moved while it read)
matches nothing and stops. Every filter is an equality on `_id` (and `run`), which FerretDB serves from
the `_id` index; erasing a user reads `user_id` (index `by_user`).

FerretDB v1 applies an update by reading the document and writing it back, so the `run` guard is not
atomic there: an update of the run that is being taken over can land after the takeover and restore its
token, which only makes the newer run stop at its next progress write instead of the older one. MongoDB
evaluates the filter and the update atomically.

The request goes out as a plain CloudEvent: it names the user and the account (as the key and the
attributes do in clear anyway) and no bank data, so it is not sealed and stays readable after an erasure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, cast

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.importer.ports import ReplayClaim, ReplayState, ReplayStatus
from shared.contract.envelope import CloudEvent, account_key, deterministic_event_id
from shared.contract.payloads import ReplayRequested
from shared.contract.topics import TRANSACTIONS_RAW
from shared.kafka import EventPublisher

Doc = dict[str, Any]
COLLECTION = "replays"
SERVICE = "importer"
# a claim that meets a concurrent write (the API's insert) reads again, this many times at most
CLAIM_ATTEMPTS = 3


def status_document(status: ReplayStatus) -> Doc:
    return {
        "_id": status.replay_id,
        "user_id": status.user_id,
        "aggregator_account_id": status.aggregator_account_id,
        "since": status.since.isoformat() if status.since else None,
        "status": status.state,
        "requested_at": status.requested_at,
        "started_at": status.started_at,
        "finished_at": status.finished_at,
        "processed": status.processed,
        "total": status.total,
        "result": dict(status.result) if status.result is not None else None,
        "error": status.error,
        "runner": status.runner,
        "run": None,
        "attempts": status.attempts,
        "partition": status.partition,
        "offset": status.offset,
    }


def replay_status(doc: Mapping[str, Any]) -> ReplayStatus:
    since = doc.get("since")
    return ReplayStatus(
        replay_id=str(doc["_id"]),
        user_id=str(doc["user_id"]),
        aggregator_account_id=str(doc["aggregator_account_id"]),
        since=dt.date.fromisoformat(since) if since else None,
        state=cast(ReplayState, doc.get("status", "requested")),
        requested_at=doc.get("requested_at"),
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        processed=int(doc.get("processed") or 0),
        total=doc.get("total"),
        result=doc.get("result"),
        error=doc.get("error"),
        runner=doc.get("runner"),
        attempts=int(doc.get("attempts") or 0),
        partition=doc.get("partition"),
        offset=doc.get("offset"),
    )


class MongoReplayStatuses:
    """ReplayStatuses on the `replays` collection."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.coll: AsyncCollection[Doc] = db[COLLECTION]

    async def create_indexes(self) -> None:
        await self.coll.create_index([("user_id", ASCENDING)], name="by_user")

    async def requested(self, status: ReplayStatus) -> bool:
        try:
            await self.coll.insert_one(status_document(status))
        except DuplicateKeyError:
            return False
        return True

    async def get(self, replay_id: str) -> ReplayStatus | None:
        doc = await self.coll.find_one({"_id": replay_id})
        return None if doc is None else replay_status(doc)

    async def claim(self, request: ReplayRequested, claim: ReplayClaim) -> ReplayStatus | None:
        running: Doc = {
            "status": "running",
            "run": claim.run,
            "runner": claim.runner,
            "started_at": claim.at,
            "finished_at": None,
            "processed": 0,
            "total": None,
            "result": None,
            "error": None,
            "partition": claim.partition,
            "offset": claim.offset,
        }
        for _ in range(CLAIM_ATTEMPTS):
            doc = await self.coll.find_one({"_id": request.replay_id})
            if doc is None:
                # published without its status (the API could not write it, or another tool sent it)
                created = ReplayStatus(
                    request.replay_id,
                    request.user_id,
                    request.aggregator_account_id,
                    request.since,
                    requested_at=request.requested_at,
                )
                try:
                    await self.coll.insert_one({**status_document(created), **running, "attempts": 1})
                except DuplicateKeyError:
                    continue
                return replay_status({**status_document(created), **running, "attempts": 1})
            if doc.get("status") == "succeeded":
                return None
            # as it was read: a write between the read and this one makes it match nothing, and read again
            guard = {"_id": request.replay_id, "status": doc.get("status"), "run": doc.get("run")}
            updated = await self.coll.update_one(guard, {"$set": running, "$inc": {"attempts": 1}})
            if updated.matched_count:
                attempts = int(doc.get("attempts") or 0) + 1
                return replay_status({**doc, **running, "attempts": attempts})
        raise RuntimeError(f"replay {request.replay_id}: its status kept changing while it was claimed")

    async def progress(self, replay_id: str, run: str, processed: int, total: int | None) -> bool:
        updated = await self.coll.update_one(
            {"_id": replay_id, "run": run}, {"$set": {"processed": processed, "total": total}}
        )
        return updated.matched_count > 0

    async def finish(self, replay_id: str, run: str | None, outcome: ReplayStatus) -> bool:
        updated = await self.coll.update_one(
            {"_id": replay_id, "run": run},
            {
                "$set": {
                    "status": outcome.state,
                    "finished_at": outcome.finished_at,
                    "processed": outcome.processed,
                    "total": outcome.total,
                    "result": dict(outcome.result) if outcome.result is not None else None,
                    "error": outcome.error,
                }
            },
        )
        return updated.matched_count > 0

    async def erase_user(self, user_id: str) -> int:
        return (await self.coll.delete_many({"user_id": user_id})).deleted_count


def request_event(request: ReplayRequested, correlation_id: str) -> CloudEvent:
    return CloudEvent.new(
        service=SERVICE,
        name="replay.requested",
        data=request.model_dump(mode="json"),
        user_id=request.user_id,
        correlation_id=correlation_id,
        subject=request.replay_id,
        event_id=deterministic_event_id("replay.requested", request.replay_id),
        time=request.requested_at,
    )


class KafkaReplayRequests:
    """ReplayRequests: `replay.requested` on the raw topic, keyed by the account, never sealed (the
    publisher it is given has no sealer)."""

    def __init__(self, publisher: EventPublisher) -> None:
        if publisher.sealer is not None:
            raise ValueError("replay requests are not sealed: give a publisher without a sealer")
        self.publisher = publisher

    async def publish(self, request: ReplayRequested, correlation_id: str) -> None:
        key = account_key(request.user_id, request.aggregator_account_id)
        await self.publisher.publish(TRANSACTIONS_RAW, key, request_event(request, correlation_id))
