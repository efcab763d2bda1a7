"""The connector's own collections in MongoDB (no other service writes them): the documents, their
queries and indexes, and the typed records (services/connector/domain) they are read into and written from.

- aggregator_users: the aggregator user and its encrypted permanent token, per app user
- activations: single-use webview states
- connections: linked banks with their aggregator accounts and which ones sync
- account_sync: per aggregator account, the cursor, the status and the last run (written by the run that
  holds the connection's lease)
- account_notes: per aggregator account, what the importer's events said of it (its app account, a
  re-import asked by the account's deletion in the app, the last balance check), written by the consumer
  of those events only: one writer per document, since FerretDB v1 can lose one of two updates of a
  document made at once (a sync's outcome and a balance note did, with two replicas)
- seen_transactions: the fingerprint last published for each aggregator line (change detection)
- active_runs: at most one running sync per connection (a second request joins it), a lease
  (shared.leases); active_run_takeovers: the tickets of the leases taken over after they ended
- entitlement_projection: the rights read from banksync.entitlements.v1 (or asked over HTTP)
- nightly_runs: one nightly run per night across replicas
- webhook_signatures: digests of the webhook signatures accepted lately (a replay is refused), by minute
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from services.connector.domain.accounts import BankAccount
from services.connector.domain.connections import Activation, AggregatorUser, Connection, connection_key
from services.connector.domain.failures import SyncError, SyncState
from services.connector.domain.nightly import LiveConnection
from services.connector.domain.rights import Rights
from services.connector.domain.states import AccountSyncState, BalanceCheck, ImporterNote, LastRun
from services.connector.domain.sync_run import AccountOutcome
from shared.bulk import bulk_write_chunked
from shared.contract.payloads import Bank
from shared.leases import LeaseStore
from shared.mongo import find_by_ids, is_duplicate_key_error

Doc = dict[str, Any]
# webhook signatures are kept by the minute they were accepted: pruning deletes whole minutes by equality
# (FerretDB has no TTL index and pushes no range down to an index)
SIGNATURE_MINUTE_S = 60
# minutes pruned one by one at most; a longer quiet spell (or a fresh process) prunes with one range
SIGNATURE_PRUNE_STEPS = 30


def signature_minute(moment: datetime) -> int:
    return int(moment.timestamp()) // SIGNATURE_MINUTE_S


def account_sync_id(user_id: str, aggregator_account_id: str) -> str:
    return f"{user_id}:{aggregator_account_id}"


class ConnectorRepository:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.users: AsyncCollection[Doc] = db["aggregator_users"]
        self.activations: AsyncCollection[Doc] = db["activations"]
        self.connections: AsyncCollection[Doc] = db["connections"]
        self.account_sync: AsyncCollection[Doc] = db["account_sync"]
        self.account_notes: AsyncCollection[Doc] = db["account_notes"]
        self.seen: AsyncCollection[Doc] = db["seen_transactions"]
        self.active_runs: AsyncCollection[Doc] = db["active_runs"]
        self.run_leases = LeaseStore(self.active_runs, db["active_run_takeovers"], holder_field="run_id")
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
        await self.account_notes.create_index([("user_id", ASCENDING)])
        await self.seen.create_index([("account", ASCENDING)])
        await self.active_runs.create_index([("night", ASCENDING)])
        await self.run_leases.create_indexes()
        # `_id` (unique) is the signature's digest; `minute` serves the pruning
        await self.webhook_signatures.create_index([("minute", ASCENDING)], name="by_minute")

    # aggregator users -------------------------------------------------------------------------
    async def aggregator_user(self, user_id: str) -> AggregatorUser | None:
        found = await self.users.find_one({"_id": user_id})
        return _aggregator_user(found) if found is not None else None

    async def save_aggregator_user(self, user: AggregatorUser, now: datetime) -> AggregatorUser:
        """First writer wins, so two concurrent activations share one aggregator user."""
        with contextlib.suppress(DuplicateKeyError):
            await self.users.insert_one(
                {"_id": user.user_id, "token_enc": user.token_enc, "id_user": user.id_user, "created_at": now}
            )
        found = await self.users.find_one({"_id": user.user_id})
        assert found is not None
        return _aggregator_user(found)

    # activations ------------------------------------------------------------------------------
    async def record_activation(self, nonce: str, user_id: str, now: datetime) -> None:
        await self.activations.insert_one(
            {"_id": nonce, "user_id": user_id, "created_at": now, "used": False}
        )

    async def activation(self, nonce: str) -> Activation | None:
        found = await self.activations.find_one({"_id": nonce})
        if found is None:
            return None
        return Activation(str(found["_id"]), str(found.get("user_id", "")), bool(found.get("used")))

    async def use_activation(self, nonce: str, user_id: str, now: datetime) -> bool:
        """Uses the state up; False when another attempt did. The arbiter is the insert of a marker (the
        local engine lets two concurrent filtered updates both match); the flag is for readers."""
        try:
            await self.activations.insert_one({"_id": f"{nonce}:used", "user_id": user_id, "created_at": now})
        except DuplicateKeyError:
            return False
        result = await self.activations.update_one(
            {"_id": nonce, "user_id": user_id, "used": False}, {"$set": {"used": True, "used_at": now}}
        )
        return result.matched_count == 1

    # connections ------------------------------------------------------------------------------
    async def save_connection(self, conn: Connection) -> None:
        """The link's fields, whole (a connection linked again keeps what the runs wrote beside them)."""
        doc = connection_document(conn)
        await self.connections.update_one({"_id": doc["_id"]}, {"$set": doc}, upsert=True)

    async def update_connection(self, conn: Connection, fields: frozenset[str]) -> None:
        changes = {field: _connection_field(conn, field) for field in sorted(fields)}
        await self.connections.update_one({"_id": conn.key}, {"$set": changes})

    async def connection(self, user_id: str, connection_id: str) -> Connection | None:
        found = await self.connections.find_one({"_id": connection_key(user_id, connection_id)})
        return _connection(found) if found is not None else None

    async def connection_for_webhook(self, aggregator_user_id: str, connection_id: str) -> Connection | None:
        """A webhook names the aggregator's user and connection; find whose it is."""
        owners = await self.users.find({"id_user": aggregator_user_id}).sort("created_at", -1).to_list()
        for owner in owners:
            found = await self.connection(owner["_id"], connection_id)
            if found is not None:
                return found
        return None

    async def user_connections(self, user_id: str, *, include_removed: bool = False) -> list[Connection]:
        return [_connection(doc) for doc in await self._user_connections(user_id, include_removed)]

    async def _user_connections(self, user_id: str, include_removed: bool = False) -> list[Doc]:
        query: Doc = {"user_id": user_id}
        if not include_removed:
            query["removed"] = False
        return await self.connections.find(query).sort("_id", ASCENDING).to_list()

    async def set_paused(self, user_id: str, paused: bool) -> list[str]:
        """Pauses or resumes all of a user's live connections; returns the ids that changed."""
        changed = [
            doc["_id"] for doc in await self._user_connections(user_id) if bool(doc.get("paused")) != paused
        ]
        await bulk_write_chunked(
            self.connections, [UpdateOne({"_id": key}, {"$set": {"paused": paused}}) for key in changed]
        )
        return [key.rsplit(":", 1)[1] for key in changed]

    async def live_connections(self) -> list[LiveConnection]:
        """Every connection not removed, of every user, as `_id`, `user_id`, `paused` and `state` (the
        nightly run reads them all, once)."""
        # only what the night needs of each: 10,000 whole documents (accounts and all) are tens of MB
        found = await self.connections.find(
            {"removed": False}, {"user_id": 1, "paused": 1, "state": 1}
        ).to_list()
        return [
            LiveConnection(str(d["_id"]), str(d["user_id"]), bool(d.get("paused")), d.get("state"))
            for d in found
        ]

    # per-account sync state ---------------------------------------------------------------------
    async def account_states(self, user_id: str) -> list[AccountSyncState]:
        found = await self.account_sync.find({"user_id": user_id}).sort("_id", ASCENDING).to_list()
        notes = {doc["_id"]: doc for doc in await self.account_notes.find({"user_id": user_id}).to_list()}
        return [_account_state(doc, notes.get(doc["_id"])) for doc in found]

    async def mark_syncing(
        self, user_id: str, connection_id: str, account_ids: Sequence[str], run_id: str, started_at: datetime
    ) -> None:
        fields: Doc = {
            "connection_id": connection_id,
            "state": SyncState.SYNCING.value,
            "current_run": run_id,
            "run_started_at": started_at,
        }
        await self._set_account_states(user_id, dict.fromkeys(account_ids, fields))

    async def mark_closed(self, user_id: str, connection_id: str, account_ids: Sequence[str]) -> None:
        fields: Doc = {"connection_id": connection_id, "state": SyncState.CLOSED.value}
        await self._set_account_states(user_id, dict.fromkeys(account_ids, fields))

    async def record_outcomes(self, user_id: str, outcomes: Sequence[AccountOutcome]) -> None:
        await self._set_account_states(
            user_id,
            {o.aggregator_account_id: _outcome_fields(o) for o in outcomes},
            clear_reimport={o.aggregator_account_id: o.reimported for o in outcomes if o.reimported},
        )

    async def _set_account_states(
        self, user_id: str, fields: dict[str, Doc], *, clear_reimport: dict[str, str] | None = None
    ) -> None:
        """Each account's own fields (aggregator account id → fields) on several accounts of one user,
        in one command; `clear_reimport` (account → mark): the re-import marks a sync honoured, recorded as
        done (`reimported`; a newer deletion's mark differs from it, so it is still asked)."""
        honoured = clear_reimport or {}
        requests: list[UpdateOne] = [
            UpdateOne(
                {"_id": account_sync_id(user_id, account_id)},
                {
                    "$set": {
                        "user_id": user_id,
                        "aggregator_account_id": account_id,
                        **own,
                        **({"reimported": honoured[account_id]} if account_id in honoured else {}),
                    }
                },
                upsert=True,
            )
            for account_id, own in fields.items()
        ]
        await bulk_write_chunked(self.account_sync, requests)

    async def note_importer_facts(self, notes: Sequence[ImporterNote]) -> None:
        """What the importer's events say of accounts of any users (deleted in the app, balance checked),
        in one command. Shown only with an account this connector syncs (`account_states`)."""
        await bulk_write_chunked(
            self.account_notes,
            [
                UpdateOne(
                    {"_id": account_sync_id(note.user_id, note.aggregator_account_id)},
                    {
                        "$set": {
                            "user_id": note.user_id,
                            "aggregator_account_id": note.aggregator_account_id,
                            **_note_fields(note),
                        }
                    },
                    upsert=True,
                )
                for note in notes
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
    # A lease per connection (shared.leases: inserts and take-over tickets, so that two replicas never
    # both win a connection, on MongoDB or on the local engine); the holder is the run id.
    async def claim_runs(
        self, wanted: dict[str, str], now: datetime, lease: timedelta, *, night: str | None = None
    ) -> dict[str, str]:
        """`claim_run` for many connections (connection → run id) in one insert; the connections whose
        run is already there are looked at one by one (taken over when ended). Returns each
        connection's holder. `night` tags the claims of a nightly run: those still there when its
        window closes are late."""
        return await self.run_leases.take_many(wanted, now, lease, {"night": night} if night else None)

    async def claim_run(self, connection_id: str, run_id: str, now: datetime, lease: timedelta) -> str:
        """Makes `run_id`, a new run, the connection's active run unless another is live; returns the
        holder."""
        return await self.run_leases.take(connection_id, run_id, now, lease)

    async def renew_run(self, connection_id: str, run_id: str, now: datetime, lease: timedelta) -> str:
        """For a run claimed when it was requested, and while it reads: its lease starts again (taken
        anew when it was let go or has ended and nobody else took it); returns the holder."""
        return await self.run_leases.renew(connection_id, run_id, now, lease)

    async def active_run(self, connection_id: str, now: datetime) -> str | None:
        doc = await self.active_runs.find_one({"_id": connection_id, "expires_at": {"$gte": now}})
        return str(doc["run_id"]) if doc else None

    async def release_run(self, connection_id: str, run_id: str, now: datetime) -> None:
        await self.run_leases.release(connection_id, run_id, now)

    async def unfinished_night(self, night: str) -> int:
        """Connections of that night's run still claimed: their sync is queued or running."""
        return await self.active_runs.count_documents({"night": night})

    # entitlements projection ----------------------------------------------------------------------
    async def projected_rights(self, user_id: str) -> Rights | None:
        found = await self.projection.find_one({"_id": user_id})
        return _rights(found) if found is not None else None

    async def all_projected_rights(self) -> dict[str, bool]:
        """Every user's projected `allowed` (the nightly run reads them all, once)."""
        return {
            str(doc["_id"]): bool(doc.get("allowed"))
            async for doc in self.projection.find({}, {"allowed": 1})
        }

    async def project_rights(self, user_id: str, rights: Rights) -> bool:
        """Stores rights unless a newer version is already there; True when stored."""
        document = _rights_document(rights)
        with contextlib.suppress(DuplicateKeyError):
            await self.projection.insert_one({"_id": user_id, **document})
            return True
        result = await self.projection.update_one(
            {"_id": user_id, "version": {"$lt": rights.version}}, {"$set": document}
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

    # erasure --------------------------------------------------------------------------------------
    async def erase_user(self, user_id: str) -> int:
        """Deletes every document of the user, each collection reached through an index; returns how
        many."""
        mine = {"user_id": user_id}
        connections = await self.connections.find(mine, {"_id": 1}).to_list()
        accounts = await self.account_sync.find(mine, {"_id": 1}).to_list()
        deleted = 0
        # one account, one connection at a time: FerretDB answers an `$in` with a scan of the collection
        for account in accounts:
            deleted += (await self.seen.delete_many({"account": account["_id"]})).deleted_count
        for connection in connections:
            deleted += await self.run_leases.forget(connection["_id"])
        for collection in (self.account_sync, self.account_notes, self.connections, self.activations):
            deleted += (await collection.delete_many(mine)).deleted_count
        for collection in (self.projection, self.users):
            deleted += (await collection.delete_many({"_id": user_id})).deleted_count
        return deleted


# --- documents ↔ records -----------------------------------------------------------------------------

# what linking a connection writes (save_connection); the runs write `refreshed_update`, a removal
# `removed_at`
LINK_FIELDS = (
    "connection_id",
    "user_id",
    "bank",
    "state",
    "error",
    "accounts",
    "removed",
    "paused",
    "linked_at",
)


def _aggregator_user(doc: Doc) -> AggregatorUser:
    return AggregatorUser(str(doc["_id"]), str(doc["token_enc"]), str(doc.get("id_user", "")))


def _error_document(error: SyncError | None) -> Doc | None:
    return None if error is None else {"code": error.code, "message": error.message, "action": error.action}


def _error(doc: Any) -> SyncError | None:
    if not doc:
        return None
    return SyncError(str(doc.get("code", "")), str(doc.get("message") or ""), str(doc.get("action") or ""))


def _account(doc: Doc) -> BankAccount:
    return BankAccount(
        aggregator_account_id=str(doc["aggregator_account_id"]),
        name=doc.get("name") or "",
        iban=doc.get("iban"),
        number=doc.get("number"),
        type=doc.get("type") or "unknown",
        balance=doc.get("balance"),
        coming=doc.get("coming"),
        currency=doc.get("currency") or "EUR",
        selected=bool(doc.get("selected")),
        closed=bool(doc.get("closed")),
    )


def _connection_field(conn: Connection, field: str) -> Any:
    """A Connection field as its document keeps it."""
    value = getattr(conn, field)
    if field == "bank":
        return {"id": conn.bank.id, "name": conn.bank.name}
    if field == "state":
        return conn.state.value if conn.state else None
    if field == "error":
        return _error_document(conn.error)
    if field == "accounts":
        return [dataclasses.asdict(account) for account in conn.accounts]
    return value


def _connection(doc: Doc) -> Connection:
    state = doc.get("state")
    refreshed = doc.get("refreshed_update")
    return Connection(
        user_id=str(doc["user_id"]),
        connection_id=str(doc["connection_id"]),
        bank=Bank.model_validate(doc["bank"]),
        accounts=tuple(_account(a) for a in doc.get("accounts", [])),
        state=SyncState(state) if state else None,
        error=_error(doc.get("error")),
        paused=bool(doc.get("paused")),
        removed=bool(doc.get("removed")),
        linked_at=doc.get("linked_at"),
        removed_at=doc.get("removed_at"),
        refreshed_update=str(refreshed) if refreshed else None,
    )


def _account_state(doc: Doc, note: Doc | None) -> AccountSyncState:
    """The sync's own document with the importer's notes of the account (older documents kept those
    notes on the sync's document itself)."""
    noted = note if note is not None else doc
    state = doc.get("state")
    last_run = doc.get("last_run")
    balance = noted.get("balance")
    reimport = noted.get("reimport")
    if reimport is not None and reimport == doc.get("reimported"):
        reimport = None  # a sync honoured that deletion's re-import already
    return AccountSyncState(
        user_id=str(doc["user_id"]),
        aggregator_account_id=str(doc["aggregator_account_id"]),
        connection_id=doc.get("connection_id"),
        state=SyncState(state) if state else None,
        cursor=doc.get("cursor"),
        last_success_at=doc.get("last_success_at"),
        last_run=LastRun(
            str(last_run["sync_run_id"]),
            last_run["started_at"],
            last_run.get("finished_at"),
            int(last_run.get("transactions", 0)),
        )
        if last_run
        else None,
        error=_error(doc.get("error")),
        reimport=str(reimport) if reimport else None,
        account_id=noted.get("account_id"),
        balance=BalanceCheck(
            balance.get("bank_balance"),
            balance.get("computed_balance"),
            balance.get("balance_gap"),
            balance.get("sync_run_id"),
            balance.get("checked_at"),
        )
        if balance
        else None,
    )


def _outcome_fields(outcome: AccountOutcome) -> Doc:
    """A success moves the cursor and the last success; a failure never does."""
    run = outcome.last_run
    fields: Doc = {"connection_id": outcome.connection_id}
    if outcome.cursor is not None:
        fields["cursor"] = outcome.cursor
    fields["state"] = outcome.state.value
    if outcome.cursor is not None:
        fields["last_success_at"] = run.finished_at
    fields["last_run"] = {
        "sync_run_id": run.sync_run_id,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "transactions": run.transactions,
    }
    fields["error"] = _error_document(outcome.error)
    return fields


def _note_fields(note: ImporterNote) -> Doc:
    fields: Doc = {} if note.reimport is None else {"reimport": note.reimport}
    fields["account_id"] = note.account_id
    fields["balance"] = (
        None
        if note.balance is None
        else {
            "bank_balance": note.balance.bank_balance,
            "computed_balance": note.balance.computed_balance,
            "balance_gap": note.balance.balance_gap,
            "sync_run_id": note.balance.sync_run_id,
            "checked_at": note.balance.checked_at,
        }
    )
    return fields


def _rights_document(rights: Rights) -> Doc:
    return {
        "allowed": rights.allowed,
        "code": rights.code,
        "reason": rights.reason,
        "version": rights.version,
        "plan": rights.plan,
    }


def _rights(doc: Doc) -> Rights:
    return Rights(
        allowed=bool(doc["allowed"]),
        code=str(doc.get("code") or ""),
        reason=doc.get("reason"),
        version=int(doc.get("version", 0)),
        plan=doc.get("plan"),
    )


def connection_document(conn: Connection) -> Doc:
    """The document of a connection as linking writes it (benchmarks seed the store with these)."""
    return {"_id": conn.key, **{field: _connection_field(conn, field) for field in LINK_FIELDS}}
