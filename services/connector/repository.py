"""The connector's own collections in MongoDB (no other service writes them).

- aggregator_users: the aggregator user and its encrypted permanent token, per app user
- activations: single-use webview states
- connections: linked banks with their aggregator accounts and which ones sync
- account_sync: per aggregator account, the cursor, the status and the last run
- seen_transactions: the fingerprint last published for each aggregator line (change detection)
- active_runs: at most one running sync per connection (a second request joins it)
- entitlement_projection: the rights read from banksync.entitlements.v1 (or asked over HTTP)
- nightly_runs: one nightly run per night across replicas
- webhook_signatures: digests of the webhook signatures accepted lately (a replay is refused), by minute
"""

from __future__ import annotations

import contextlib
import math
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shared.bulk import bulk_write_chunked
from shared.mongo import find_by_ids, is_duplicate_key_error

Doc = dict[str, Any]
# webhook signatures are kept by the minute they were accepted: pruning deletes whole minutes by equality
# (FerretDB has no TTL index and pushes no range down to an index)
SIGNATURE_MINUTE_S = 60
# minutes pruned one by one at most; a longer quiet spell (or a fresh process) prunes with one range
SIGNATURE_PRUNE_STEPS = 30


def signature_minute(moment: datetime) -> int:
    return int(moment.timestamp()) // SIGNATURE_MINUTE_S


def connection_key(user_id: str, connection_id: str) -> str:
    """Connections are keyed per user: aggregator ids are the aggregator's, not a global truth here."""
    return f"{user_id}:{connection_id}"


def account_sync_id(user_id: str, aggregator_account_id: str) -> str:
    return f"{user_id}:{aggregator_account_id}"


class ConnectorRepository:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.users: AsyncCollection[Doc] = db["aggregator_users"]
        self.activations: AsyncCollection[Doc] = db["activations"]
        self.connections: AsyncCollection[Doc] = db["connections"]
        self.account_sync: AsyncCollection[Doc] = db["account_sync"]
        self.seen: AsyncCollection[Doc] = db["seen_transactions"]
        self.active_runs: AsyncCollection[Doc] = db["active_runs"]
        self.projection: AsyncCollection[Doc] = db["entitlement_projection"]
        self.nightly_runs: AsyncCollection[Doc] = db["nightly_runs"]
        self.webhook_signatures: AsyncCollection[Doc] = db["webhook_signatures"]
        # minutes of webhook signatures before this one are pruned already (by this process)
        self._signatures_pruned_below: int | None = None

    async def create_indexes(self) -> None:
        await self.connections.create_index([("user_id", ASCENDING)])
        # an erasure finds a user's activations by user
        await self.activations.create_index([("user_id", ASCENDING)], name="by_user")
        await self.users.create_index([("id_user", ASCENDING)])
        await self.account_sync.create_index([("user_id", ASCENDING)])
        await self.seen.create_index([("account", ASCENDING)])
        await self.active_runs.create_index([("night", ASCENDING)])
        # `_id` (unique) is the signature's digest; `minute` serves the pruning
        await self.webhook_signatures.create_index([("minute", ASCENDING)], name="by_minute")

    # aggregator users -------------------------------------------------------------------------
    async def aggregator_user(self, user_id: str) -> Doc | None:
        return await self.users.find_one({"_id": user_id})

    async def save_aggregator_user(self, user_id: str, token_enc: str, id_user: str, now: datetime) -> Doc:
        """First writer wins, so two concurrent activations share one aggregator user."""
        with contextlib.suppress(DuplicateKeyError):
            await self.users.insert_one(
                {"_id": user_id, "token_enc": token_enc, "id_user": id_user, "created_at": now}
            )
        found = await self.users.find_one({"_id": user_id})
        assert found is not None
        return found

    # activations ------------------------------------------------------------------------------
    async def record_activation(self, nonce: str, user_id: str, now: datetime) -> None:
        await self.activations.insert_one(
            {"_id": nonce, "user_id": user_id, "created_at": now, "used": False}
        )

    async def activation(self, nonce: str) -> Doc | None:
        return await self.activations.find_one({"_id": nonce})

    async def use_activation(self, nonce: str, user_id: str, now: datetime) -> bool:
        result = await self.activations.update_one(
            {"_id": nonce, "user_id": user_id, "used": False}, {"$set": {"used": True, "used_at": now}}
        )
        return result.modified_count == 1

    # connections ------------------------------------------------------------------------------
    async def upsert_connection(self, doc: Doc) -> None:
        await self.connections.update_one({"_id": doc["_id"]}, {"$set": doc}, upsert=True)

    async def connection(self, user_id: str, connection_id: str) -> Doc | None:
        return await self.connections.find_one({"_id": connection_key(user_id, connection_id)})

    async def connection_for_webhook(self, aggregator_user_id: str, connection_id: str) -> Doc | None:
        """A webhook names the aggregator's user and connection; find whose it is."""
        owners = await self.users.find({"id_user": aggregator_user_id}).sort("created_at", -1).to_list()
        for owner in owners:
            found = await self.connection(owner["_id"], connection_id)
            if found is not None:
                return found
        return None

    async def user_connections(self, user_id: str, *, include_removed: bool = False) -> list[Doc]:
        query: Doc = {"user_id": user_id}
        if not include_removed:
            query["removed"] = False
        return await self.connections.find(query).sort("_id", ASCENDING).to_list()

    async def set_connection_fields(self, connection_id: str, fields: Doc) -> None:
        await self.connections.update_one({"_id": connection_id}, {"$set": fields})

    async def set_paused(self, user_id: str, paused: bool) -> list[str]:
        """Pauses or resumes all of a user's live connections; returns the ids that changed."""
        changed = [
            doc["_id"] for doc in await self.user_connections(user_id) if bool(doc.get("paused")) != paused
        ]
        await bulk_write_chunked(
            self.connections, [UpdateOne({"_id": key}, {"$set": {"paused": paused}}) for key in changed]
        )
        return [key.rsplit(":", 1)[1] for key in changed]

    async def live_connections(self) -> list[Doc]:
        """Every connection not removed, of every user, as `_id`, `user_id` and `paused` (the nightly run
        reads them all, once)."""
        # only what the night needs of each: 10,000 whole documents (accounts and all) are tens of MB
        return await self.connections.find(
            {"removed": False}, {"user_id": 1, "paused": 1, "state": 1}
        ).to_list()

    # per-account sync state ---------------------------------------------------------------------
    async def account_states(self, user_id: str) -> list[Doc]:
        return await self.account_sync.find({"user_id": user_id}).sort("_id", ASCENDING).to_list()

    async def update_account_states(
        self, user_id: str, aggregator_account_ids: list[str], fields: Doc
    ) -> None:
        """The same fields on several accounts of one user, in one command."""
        await self.set_account_states(user_id, dict.fromkeys(aggregator_account_ids, fields))

    async def set_account_states(
        self, user_id: str, fields: dict[str, Doc], *, clear_reimport: dict[str, str] | None = None
    ) -> None:
        """Each account's own fields (aggregator account id → fields) on several accounts of one user,
        in one command; `clear_reimport` (account → mark) lifts the re-import marks a sync honoured,
        each only if no newer deletion has replaced it meanwhile."""
        requests: list[UpdateOne] = [
            UpdateOne(
                {"_id": account_sync_id(user_id, account_id)},
                {"$set": {"user_id": user_id, "aggregator_account_id": account_id, **own}},
                upsert=True,
            )
            for account_id, own in fields.items()
        ]
        requests += [
            UpdateOne(
                {"_id": account_sync_id(user_id, account_id), "reimport": mark}, {"$unset": {"reimport": ""}}
            )
            for account_id, mark in (clear_reimport or {}).items()
        ]
        await bulk_write_chunked(self.account_sync, requests)

    async def set_states_of_many(self, fields: dict[tuple[str, str], Doc]) -> None:
        """Fields of accounts of any users ((user, aggregator account) → fields), in one command: what
        the importer's events say of them (deleted in the app, balance checked). Only accounts this
        connector has synced: events about other deployments' users create nothing."""
        await bulk_write_chunked(
            self.account_sync,
            [
                UpdateOne({"_id": account_sync_id(user_id, account_id)}, {"$set": own})
                for (user_id, account_id), own in fields.items()
            ],
        )

    # change detection ---------------------------------------------------------------------------
    async def known_fingerprints(self, account: str, transaction_ids: list[str]) -> dict[str, str]:
        """The fingerprints last published for these lines of one aggregator account."""
        ids = [f"{account}:{tid}" for tid in transaction_ids]
        found = await find_by_ids(self.seen, ids, {"account": account})
        return {key.rsplit(":", 1)[1]: doc["fp"] for key, doc in found.items()}

    async def remember_fingerprints(self, account: str, prints: dict[str, str], known: set[str]) -> None:
        """New lines are inserted in bulk, changed ones updated: upserts are slow on FerretDB, and the
        caller already knows which lines it had seen."""
        fresh = [
            {"_id": f"{account}:{tid}", "account": account, "fp": fp}
            for tid, fp in prints.items()
            if tid not in known
        ]
        updates = [
            UpdateOne({"_id": f"{account}:{tid}"}, {"$set": {"fp": fp}})
            for tid, fp in prints.items()
            if tid in known
        ]
        if fresh:
            try:
                await self.seen.insert_many(fresh, ordered=False)
            except BulkWriteError as exc:
                if not is_duplicate_key_error(exc):
                    raise
                # a retried page: those lines are there already; bring their fingerprints up to date
                updates += [UpdateOne({"_id": d["_id"]}, {"$set": {"fp": d["fp"]}}) for d in fresh]
        if updates:
            await bulk_write_chunked(self.seen, updates)

    # one sync at a time per connection -------------------------------------------------------------
    async def claim_runs(
        self, wanted: dict[str, str], now: datetime, lease: timedelta, *, night: str | None = None
    ) -> dict[str, str]:
        """`claim_run` for many connections (connection → run id) in one insert; the connections whose
        run is already there are taken over one by one when expired. Returns each connection's holder.
        `night` tags the claims of a nightly run: those still there when its window closes are late."""
        if not wanted:
            return {}
        tag = {"night": night} if night else {}
        docs = [
            {"_id": conn, "run_id": run_id, "claimed_at": now, "expires_at": now + lease, **tag}
            for conn, run_id in wanted.items()
        ]
        taken: set[str] = set()
        try:
            await self.active_runs.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if not is_duplicate_key_error(exc):
                raise
            taken = {docs[e["index"]]["_id"] for e in exc.details.get("writeErrors", [])}
        holders = {conn: run_id for conn, run_id in wanted.items() if conn not in taken}
        for conn in taken:
            doc = {"run_id": wanted[conn], "claimed_at": now, "expires_at": now + lease, **tag}
            taken_over = await self._take_run(conn, doc, now)
            holders[conn] = wanted[conn] if taken_over else await self._run_holder(conn, wanted[conn])
        return holders

    async def claim_run(self, connection_id: str, run_id: str, now: datetime, lease: timedelta) -> str:
        """Makes `run_id`, a new run, the connection's active run unless another is live; returns the
        holder."""
        doc = {"run_id": run_id, "claimed_at": now, "expires_at": now + lease}
        with contextlib.suppress(DuplicateKeyError):
            await self.active_runs.insert_one({"_id": connection_id, **doc})
            return run_id
        if await self._take_run(connection_id, doc, now):
            return run_id
        return await self._run_holder(connection_id, run_id)

    async def renew_run(self, connection_id: str, run_id: str, now: datetime, lease: timedelta) -> str:
        """`claim_run` for a run claimed when it was requested: one write when it still holds the
        connection (its lease starts again) or the lease has expired; returns the holder."""
        doc = {"run_id": run_id, "claimed_at": now, "expires_at": now + lease}
        if await self._take_run(connection_id, doc, now):
            return run_id
        with contextlib.suppress(DuplicateKeyError):
            await self.active_runs.insert_one({"_id": connection_id, **doc})
            return run_id
        return await self._run_holder(connection_id, run_id)

    async def _take_run(self, connection_id: str, doc: Doc, now: datetime) -> bool:
        """Gives the connection to `doc`'s run if that run holds it already or the lease has expired."""
        taken = await self.active_runs.update_one(
            {"_id": connection_id, "$or": [{"run_id": doc["run_id"]}, {"expires_at": {"$lt": now}}]},
            {"$set": doc},
        )
        return taken.matched_count == 1

    async def _run_holder(self, connection_id: str, run_id: str) -> str:
        current = await self.active_runs.find_one({"_id": connection_id})
        return str(current["run_id"]) if current else run_id

    async def active_run(self, connection_id: str, now: datetime) -> str | None:
        doc = await self.active_runs.find_one({"_id": connection_id, "expires_at": {"$gte": now}})
        return str(doc["run_id"]) if doc else None

    async def extend_run(self, connection_id: str, run_id: str, until: datetime) -> None:
        await self.active_runs.update_one(
            {"_id": connection_id, "run_id": run_id}, {"$set": {"expires_at": until}}
        )

    async def release_run(self, connection_id: str, run_id: str) -> None:
        await self.active_runs.delete_one({"_id": connection_id, "run_id": run_id})

    async def unfinished_night(self, night: str) -> int:
        """Connections of that night's run still claimed: their sync is queued or running."""
        return await self.active_runs.count_documents({"night": night})

    # entitlements projection ----------------------------------------------------------------------
    async def projected_rights(self, user_id: str) -> Doc | None:
        return await self.projection.find_one({"_id": user_id})

    async def all_projected_rights(self) -> dict[str, Doc]:
        """Every user's projected `allowed` (the nightly run reads them all, once)."""
        return {str(doc["_id"]): doc async for doc in self.projection.find({}, {"allowed": 1})}

    async def project_rights(self, user_id: str, rights: Doc) -> bool:
        """Stores rights unless a newer version is already there; True when stored."""
        version = int(rights["version"])
        with contextlib.suppress(DuplicateKeyError):
            await self.projection.insert_one({"_id": user_id, **rights})
            return True
        result = await self.projection.update_one(
            {"_id": user_id, "version": {"$lt": version}}, {"$set": rights}
        )
        return result.modified_count == 1

    # webhook signatures ---------------------------------------------------------------------------
    async def remember_webhook_signature(self, digest: str, now: datetime, keep: timedelta) -> bool:
        """Records an accepted webhook signature; False when it was there already (a replay). The unique
        `_id` makes it hold across replicas. Signatures older than `keep` are pruned here, by whole
        minutes: one equality delete per minute that went by (usually none), by the indexed `minute`."""
        minute = signature_minute(now)
        try:
            await self.webhook_signatures.insert_one({"_id": digest, "at": now, "minute": minute})
        except DuplicateKeyError:
            return False
        await self._prune_webhook_signatures(minute - math.ceil(keep.total_seconds() / SIGNATURE_MINUTE_S))
        return True

    async def _prune_webhook_signatures(self, keep_from: int) -> None:
        pruned = self._signatures_pruned_below
        if pruned is not None and pruned >= keep_from:
            return
        if pruned is None or keep_from - pruned > SIGNATURE_PRUNE_STEPS:
            # a fresh process, or a long quiet spell: what is left is little, one range reads it all
            await self.webhook_signatures.delete_many({"minute": {"$lt": keep_from}})
        else:
            for minute in range(pruned, keep_from):
                await self.webhook_signatures.delete_many({"minute": minute})
        self._signatures_pruned_below = keep_from

    # nightly --------------------------------------------------------------------------------------
    async def claim_nightly(self, run_key: str, now: datetime) -> bool:
        try:
            await self.nightly_runs.insert_one({"_id": run_key, "started_at": now})
        except DuplicateKeyError:
            return False
        return True
