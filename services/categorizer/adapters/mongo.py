"""MongoDB storage of the categorizer: one rule-set document per user, and its projection of operations.

FerretDB (and this design) has no multi-document transactions, so everything a user's recognition
depends on (payees, their keywords, user categories) lives in ONE document with a `version`, written
with compare-and-set on that version. The same write marks a re-examination of past operations as
pending, which a crash cannot lose (a background scan picks it up), and keeps a snapshot of the
payees of every version since the last completed re-examination (`examined_version`): the
re-examination compares what those rules and today's rules say of each operation, so it never
writes per operation (the local engine does a few hundred single-document updates a second; an
`insert_many` of thousands of documents takes a fraction of a second).

The projection is what this service knows of each operation: memo, label, account, the rules version
it was categorised with (`seen_version`) and that result, and the user's manual choice when there is
one. It is kept in month sheets (`categorizer_sheets`, shared.sheets: one per user, account and month,
a few documents of entries) because the local engine pays per document: a batch of operation events
is one insert per month it touches, and a re-examination reads a user's 20,000 operations as a few
dozen documents (one document each read about 6,000 a second). Entries are never rewritten: each says
what one write set; they apply in the order written, except the user's choice and the rules' result,
which are ranked (`projection_state`). Every read is an equality on `_id` or on an indexed field
(FerretDB serves those from an index and scans the collection for `$in`: see shared.mongo.find_by_ids).

Across replicas (issue #16) nothing here rests on a lock of one process. FerretDB v1 applies an update
by reading the document and writing it back by `_id` (two writers filtering on one version both
"win" in 15 to 32 of 200 rounds of two clients at once; two rule changes of one user made at once on
two replicas lost one in 43 of 100 rounds with the compare-and-set alone), so every document that more
than one replica may write has one writer at a time by construction:
- a rule set is written with compare-and-set on its version (MongoDB's guard) by the holder of the
  user's `rules:<user>` lease only (shared.leases: an insert, or a take-over ticket after the lease
  ended), which the re-examination's bookkeeping (`reexamination_done`) takes too; the holder renews
  it right before it writes (`LeaseHold.keep`), so one that stalled past it stops (LeaseLost);
- the projection is append-only (inserts; a fold deletes only what it merged), and what the user
  chose, and the rules said, is ranked at read time, never decided by which write came last;
- a correction's number is claimed by an insert (`categorizer_choices`), so two corrections of one
  operation never share one;
- a user's transfer legs are written only by the holder of the user's `pairing:<user>` lease
  (renewed before each write, as above);
- a user's past operations are re-examined by the holder of `reexamine:<user>` only.
The locks of one process that remain only spare it from asking the store for a lease it is already
waiting for; correctness does not depend on them.

The documents stay here: the handlers and the ports speak the typed records of ports.py, which this
module turns into documents and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from pymongo import ASCENDING, DeleteOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.categorizer.domain.matching import Categorization
from services.categorizer.domain.rules import Payee, RuleSet, UserCategory
from services.categorizer.domain.transfers import TransferLeg
from services.categorizer.ports import (
    ConcurrentUpdate,
    LeaseLost,
    Projected,
    RulesStatus,
    Seen,
    StoredLeg,
    StoredRules,
    operation_key,
)
from shared.bulk import bulk_write_chunked
from shared.contract.payloads import TransferRef
from shared.leases import LeaseStore
from shared.mongo import find_by_ids
from shared.sheets import Additions, SheetAddition, Sheets, entries_by_item

Doc = dict[str, Any]
T = TypeVar("T")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# a correction looks this many numbers up for a free one (each a claim another correction made)
CHOICE_ATTEMPTS = 100
# the leases of a user's rule set, pairing and re-examination (see `CategorizerLeases`)
LEASE_KINDS = ("rules", "pairing", "reexamine")


class LeaseBusy(TimeoutError):
    """A lease stayed another holder's for longer than the caller would wait (a timeout: a consumer waits
    and tries its batch again, never dead-letters it for that)."""


class CategorizerLeases:
    """Per-user leases across replicas (`categorizer_leases`, take-over tickets in
    `categorizer_lease_takeovers`; see shared.leases), named `<kind>:<user>` (LEASE_KINDS)."""

    POLL_S = (0.01, 0.2)  # first and longest pause between two looks at a busy lease

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.store = LeaseStore(db["categorizer_leases"], db["categorizer_lease_takeovers"])

    async def create_indexes(self) -> None:
        await self.store.create_indexes()

    @contextlib.asynccontextmanager
    async def held(self, name: str, ttl: timedelta, wait_s: float) -> AsyncIterator[LeaseHold]:
        """Holds the lease `name` (waiting up to `wait_s` for it; LeaseBusy after), let go at the end."""
        holder = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        pause = self.POLL_S[0]
        while await self.store.take(name, holder, datetime.now(UTC), ttl) != holder:
            if loop.time() >= give_up:
                raise LeaseBusy(name)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.POLL_S[1])
        try:
            yield LeaseHold(self.store, name, holder, ttl)
        finally:
            await self.store.release(name, holder, datetime.now(UTC))

    @contextlib.asynccontextmanager
    async def held_all(
        self, names: Sequence[str], ttl: timedelta, wait_s: float
    ) -> AsyncIterator[list[LeaseHold]]:
        """`held` for several leases (in the order of `names`): all taken at once when they are free,
        else let go and taken one after the other in that order (two replicas wanting the same leases
        then never wait for each other in a circle)."""
        holder = uuid.uuid4().hex
        now = datetime.now(UTC)
        taken = await asyncio.gather(*(self.store.take(name, holder, now, ttl) for name in names))
        if all(got == holder for got in taken):
            try:
                yield [LeaseHold(self.store, name, holder, ttl) for name in names]
            finally:
                await self._release(names, holder)
            return
        await self._release([name for name, got in zip(names, taken, strict=True) if got == holder], holder)
        async with contextlib.AsyncExitStack() as stack:
            yield [await stack.enter_async_context(self.held(name, ttl, wait_s)) for name in names]

    async def _release(self, names: Sequence[str], holder: str) -> None:
        now = datetime.now(UTC)
        await asyncio.gather(*(self.store.release(name, holder, now) for name in names))

    @contextlib.asynccontextmanager
    async def if_free(self, name: str, ttl: timedelta) -> AsyncIterator[LeaseHold | None]:
        """Holds the lease `name` if nobody else does (None: another holder has it), let go at the end."""
        holder = uuid.uuid4().hex
        if await self.store.take(name, holder, datetime.now(UTC), ttl) != holder:
            yield None
            return
        try:
            yield LeaseHold(self.store, name, holder, ttl)
        finally:
            await self.store.release(name, holder, datetime.now(UTC))

    async def forget_user(self, user_id: str) -> int:
        """Deletes the user's leases and their tickets; returns how many documents went."""
        return sum([await self.store.forget(f"{kind}:{user_id}") for kind in LEASE_KINDS])


class LeaseHold:
    """A lease held (ports.Hold)."""

    def __init__(self, store: LeaseStore, name: str, holder: str, ttl: timedelta) -> None:
        self.store, self.name, self.holder, self.ttl = store, name, holder, ttl

    async def keep(self) -> None:
        if await self.store.renew(self.name, self.holder, datetime.now(UTC), self.ttl) != self.holder:
            raise LeaseLost(self.name)


def payees_doc(payees: Iterable[Payee]) -> list[Doc]:
    return [
        {"id": p.id, "name": p.name, "category": p.category, "keywords": list(p.keywords)} for p in payees
    ]


def payees_of(docs: Iterable[Doc]) -> tuple[Payee, ...]:
    return tuple(Payee(p["id"], p["name"], p["category"], tuple(p.get("keywords") or ())) for p in docs)


def stored_rules_of(doc: Doc | None, user_id: str) -> StoredRules:
    """A user's rule-set document (None: the user has none yet) as a record."""
    if doc is None:
        return StoredRules(RuleSet(user_id))
    ruleset = RuleSet(
        user_id=user_id,
        version=int(doc["version"]),
        payees=payees_of(doc["payees"]),
        categories=tuple(UserCategory(c["id"], c["label"]) for c in doc.get("categories") or ()),
    )
    snapshots = {int(s["version"]): payees_of(s["payees"]) for s in doc.get("snapshots") or ()}
    snapshots[ruleset.version] = ruleset.payees
    return StoredRules(ruleset, int(doc.get("examined_version", 0)), snapshots)


def snapshots_doc(stored: StoredRules, since: int) -> list[Doc]:
    """The snapshots kept from `since` on (`StoredRules.kept`), as stored."""
    return [{"version": v, "payees": payees_doc(p)} for v, p in stored.kept(since).items()]


def result_doc(result: Categorization) -> Doc:
    return {
        "payee_id": result.payee_id,
        "payee_name": result.payee_name,
        "category": result.category,
        "source": result.source,
        "keyword": result.keyword,
    }


def result_of(doc: Doc | None) -> Categorization | None:
    if doc is None:
        return None
    return Categorization(
        doc.get("payee_id"), doc.get("payee_name"), doc.get("category"), doc.get("source"), doc.get("keyword")
    )


def legacy_projected(doc: Doc) -> Projected:
    """An operation of the projection kept one document each (before the sheets)."""
    return Projected(
        user_id=doc["user_id"],
        operation_id=doc["operation_id"],
        account_id=doc["account_id"],
        memo=doc.get("memo") or "",
        label=doc.get("label") or "",
        seen_version=int(doc.get("seen_version", 0)),
        result=result_of(doc.get("result")),
        manual=result_of(doc.get("manual")),
        month=doc.get("month"),
    )


class RuleSetRepository:
    """`categorizer_rulesets`: one document per user (`_id`), written with compare-and-set on its version
    by the holder of the user's `rules:` lease only (see the module's docstring)."""

    ATTEMPTS = 10
    # a write of the rules holds the lease for milliseconds; one left by a crash is taken over when it
    # ends, so a change waits a little longer than that at most
    RULES_LEASE = timedelta(seconds=10)
    RULES_WAIT_S = 15.0
    # renewed as the re-examination announces (every ANNOUNCE_EVERY operations, about a second)
    REEXAMINATION_LEASE = timedelta(seconds=30)

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.rulesets: AsyncCollection[Doc] = db["categorizer_rulesets"]
        self.leases = CategorizerLeases(db)
        # this process's writers of one user's rules wait here rather than poll the store's lease
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    async def create_indexes(self) -> None:
        await self.rulesets.create_index([("retro_pending", ASCENDING)])
        await self.leases.create_indexes()

    @contextlib.asynccontextmanager
    async def _writing(self, user_id: str) -> AsyncIterator[LeaseHold]:
        """The only writer of the user's rule set while held (the `rules:` lease); a writer renews it
        (`keep`) right before it writes, so one that stalled past it learns so (LeaseLost) instead."""
        async with self._lock(user_id):
            try:
                async with self.leases.held(f"rules:{user_id}", self.RULES_LEASE, self.RULES_WAIT_S) as hold:
                    yield hold
            except LeaseBusy:
                raise ConcurrentUpdate(user_id) from None

    def reexamining(self, user_id: str) -> contextlib.AbstractAsyncContextManager[LeaseHold | None]:
        return self.leases.if_free(f"reexamine:{user_id}", self.REEXAMINATION_LEASE)

    async def stored(self, user_id: str) -> StoredRules:
        return stored_rules_of(await self.rulesets.find_one({"_id": user_id}), user_id)

    async def get(self, user_id: str) -> RuleSet:
        return (await self.stored(user_id)).ruleset

    async def versions(self, user_ids: Iterable[str]) -> dict[str, int]:
        """The current version of each user's rules (0 for a user without any)."""
        wanted = list(set(user_ids))
        found = await find_by_ids(self.rulesets, wanted)
        return {user: int(found[user]["version"]) if user in found else 0 for user in wanted}

    async def update(
        self,
        user_id: str,
        command: Callable[[RuleSet], tuple[RuleSet, T]],
        at: datetime,
        correlation_id: str,
        *,
        reexamine: bool,
    ) -> tuple[RuleSet, T]:
        """Reads, applies `command`, saves with compare-and-set (MongoDB's guard); again when another
        writer got there first. The `rules:` lease makes it the only writer meanwhile, which is what
        holds on the local engine."""
        async with self._writing(user_id) as hold:
            for _ in range(self.ATTEMPTS):
                current = await self.stored(user_id)
                after, answer = command(current.ruleset)
                await hold.keep()
                if await self.save(current, after, at, correlation_id, reexamine=reexamine):
                    return after, answer
        raise ConcurrentUpdate(user_id)

    async def save(
        self, before: StoredRules, after: RuleSet, at: datetime, correlation_id: str, *, reexamine: bool
    ) -> bool:
        """Compare-and-set on the version; False when another writer got there first."""
        state: Doc = {
            "version": after.version,
            "payees": payees_doc(after.payees),
            "categories": [{"id": c.id, "label": c.label} for c in after.categories],
            "snapshots": [
                *snapshots_doc(before, since=before.examined_version),
                {"version": before.ruleset.version, "payees": payees_doc(before.ruleset.payees)},
            ],
            "updated_at": at,
            "correlation_id": correlation_id,
        }
        if reexamine:
            state |= {"retro_pending": True, "retro_requested_at": at}
        if before.ruleset.version == 0:
            try:
                await self.rulesets.insert_one(
                    {"_id": after.user_id, "examined_version": 0, "retro_pending": reexamine, **state}
                )
            except DuplicateKeyError:
                return False
            return True
        result = await self.rulesets.update_one(
            {"_id": after.user_id, "version": before.ruleset.version}, {"$set": state}
        )
        return result.matched_count == 1

    async def reexamination_done(self, user_id: str, version: int) -> None:
        """Records that past operations now reflect `version` (never going back), clears the pending
        flag unless the rules changed again meanwhile, and drops the snapshots no longer needed."""
        async with self._writing(user_id) as hold:
            await self.rulesets.update_one(
                {"_id": user_id, "examined_version": {"$lt": version}},
                {"$set": {"examined_version": version}},
            )
            doc = await self.rulesets.find_one({"_id": user_id})
            if doc is None:
                return
            stored = stored_rules_of(doc, user_id)
            since = max(stored.examined_version, version)
            await hold.keep()
            # guarded by the version: a change saved meanwhile keeps its own snapshots and pending flag
            await self.rulesets.update_one(
                {"_id": user_id, "version": stored.ruleset.version},
                {
                    "$set": {
                        "snapshots": snapshots_doc(stored, since=since),
                        "retro_pending": stored.ruleset.version > since,
                    }
                },
            )

    async def pending_since(self, before: datetime, limit: int = 100) -> list[str]:
        cursor = self.rulesets.find(
            {"retro_pending": True, "retro_requested_at": {"$lt": before}}, {"_id": 1}
        ).limit(limit)
        return [doc["_id"] async for doc in cursor]

    async def status(self, user_id: str) -> RulesStatus:
        doc = await self.rulesets.find_one({"_id": user_id}, {"version": 1, "retro_pending": 1})
        if doc is None:
            return RulesStatus(rules_version=0, reexamination_pending=False)
        return RulesStatus(
            rules_version=int(doc["version"]), reexamination_pending=bool(doc.get("retro_pending"))
        )

    async def correlation_id(self, user_id: str) -> str | None:
        doc = await self.rulesets.find_one({"_id": user_id}, {"correlation_id": 1})
        return None if doc is None else doc.get("correlation_id")


def seen_entry(seen: Seen, at: datetime) -> Doc:
    """An operation's entry in its projection sheet (what it sets; the rest stays as it was). A manual
    choice it restates carries the choice number it was read with, which ranks it (`projection_state`)."""
    found: Doc = {"memo": seen.memo, "label": seen.label, "at": at}
    if seen.seen_version is not None and seen.result is not None:
        found |= {"seen_version": seen.seen_version, "result": result_doc(seen.result)}
    if seen.manual is not None:
        found |= {"manual": result_doc(seen.manual), "choice": seen.choice}
    return found


NO_MONTH = "-"  # the sheet of operations projected before months were kept


def projection_sheet(user_id: str, account_id: str, month: str | None) -> str:
    return f"{user_id}:{account_id}:{month or NO_MONTH}"


def month_of_sheet(sheet: str) -> str | None:
    month = sheet.rsplit(":", 1)[1]
    return None if month == NO_MONTH else month


def _choice_of(entry: Doc) -> int:
    return int(entry.get("choice") or 0)


def projection_state(entries: Iterable[Doc]) -> Doc | None:
    """What an operation's entries leave, applied in the order they were written (`at`): each sets
    the fields it has; a deletion (`gone`) forgets what came before. Two things are ranked instead,
    as the importer ranks the categorisations it shows: the user's choice (`manual`, `choice`) is the
    entry's with the highest choice number, and the rules' result (`seen_version`, `result`) the one of
    the newest rules version; the later among equals. So a write that read the operation before a
    correction (another replica, a writer that lost its partition, a clock behind) never brings back
    an older choice, whenever it lands. The state names an operation only with a memo (`projected_of`)."""
    ordered = sorted(entries, key=lambda entry: entry["at"])
    state: Doc = {}
    chosen: Doc | None = None
    ruled: Doc | None = None
    for entry in ordered:
        if entry.get("gone"):
            state, chosen, ruled = {"gone": True, "at": entry["at"]}, None, None
            continue
        state = {**({} if state.get("gone") else state), **entry}
        if ("manual" in entry or "choice" in entry) and (
            chosen is None or _choice_of(entry) >= _choice_of(chosen)
        ):
            chosen = entry
        if "seen_version" in entry and (ruled is None or entry["seen_version"] >= ruled["seen_version"]):
            ruled = entry
    for kept, fields in ((chosen, ("manual", "choice")), (ruled, ("seen_version", "result"))):
        if kept is not None:
            state |= {field: kept[field] for field in fields if field in kept}
    return state or None


def projected_of(user_id: str, operation_id: str, part: Doc, state: Doc | None) -> Projected | None:
    """The operation a state of the sheet document `part` describes (None: deleted or never seen)."""
    if state is None or state.get("gone") or "memo" not in state:
        return None
    return Projected(
        user_id=user_id,
        operation_id=operation_id,
        account_id=str(part["account_id"]),
        memo=state.get("memo") or "",
        label=state.get("label") or "",
        seen_version=int(state.get("seen_version", 0)),
        result=result_of(state.get("result")),
        manual=result_of(state.get("manual")),
        month=month_of_sheet(str(part["sheet"])),
        choice=int(state.get("choice", 0)),
    )


class ProjectionSheets(Sheets):
    """`categorizer_sheets` (see shared.sheets): one sheet per user, account and month; an entry is what
    one write said of an operation, and what a sheet holds is `projection_state` of its entries."""

    INDEXES = (("by_user", "user_id"),)

    def merge(self, entries: list[Doc]) -> Doc | None:
        return projection_state(entries)


class OperationsRepository:
    """The projection: what this service knows of each operation (memo, label, account and month, the
    rules version it was categorised with and that result, the user's manual choice), kept in month
    sheets (`ProjectionSheets`): a batch of operation events is one insert per sheet it touches, and a
    re-examination reads a user's thousands of operations as a few dozen documents. The operations
    of an account are written by the consumer of its partition, corrections (any replica) and the
    pairing of transfers (the replica of the other leg's partition) add entries too: nothing is
    rewritten, and what counts is ranked at read time (`projection_state`), so concurrent writers, on
    one replica or several, lose nothing. Choice numbers are claimed in `categorizer_choices`
    (`_id` = user, operation and number: one insert)."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.sheets = ProjectionSheets(db["categorizer_sheets"])
        # where operations were kept, one document each, before the sheets (`adopt_legacy` moves them)
        self.legacy: AsyncCollection[Doc] = db["categorizer_operations"]
        self.choices: AsyncCollection[Doc] = db["categorizer_choices"]
        self._last_stamp = EPOCH
        # Not what keeps the projection right (inserts, ranked at read time): it only keeps this process
        # from folding one sheet twice at once (wasted work, and its entries twice until the next fold).
        self._writing = asyncio.Lock()

    def _stamp(self, at: datetime) -> datetime:
        """`at` as stored (milliseconds), after every earlier write of this process: the entries of one
        operation apply in the order they were written."""
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        self._last_stamp = max(at, self._last_stamp + timedelta(milliseconds=1))
        return self._last_stamp

    async def create_indexes(self) -> None:
        await self.sheets.create_indexes()
        # what is left of the older projection: an erasure finds it by user
        await self.legacy.create_index([("user_id", ASCENDING)], name="by_user")
        # an erasure and a deleted account find their choice numbers
        await self.choices.create_index([("user_id", ASCENDING), ("account_id", ASCENDING)], name="by_user")

    async def adopt_legacy(self, batch: int = 5_000) -> int:
        """Moves the operations kept one document each (before the sheets) into the sheets, a batch at
        a time (appended first, deleted after: a crash in between leaves entries twice, which merge).
        Returns how many moved. Run at start-up; a store that never had them reads one empty batch."""
        moved = 0
        while docs := await self.legacy.find({}).limit(batch).to_list():
            additions = Additions()
            for doc in docs:
                op = legacy_projected(doc)
                sid = projection_sheet(op.user_id, op.account_id, op.month)
                seen = Seen(
                    op.user_id,
                    op.operation_id,
                    op.account_id,
                    op.memo,
                    op.label,
                    op.seen_version,
                    op.result or Categorization(),
                    op.manual,
                )
                additions.entries(sid, op.user_id, op.account_id)[op.operation_id] = seen_entry(
                    seen, doc.get("seen_at") or EPOCH
                )
            await self.sheets.append(additions.all())
            await bulk_write_chunked(self.legacy, [DeleteOne({"_id": doc["_id"]}) for doc in docs])
            moved += len(docs)
        return moved

    async def get(self, user_id: str, operation_id: str) -> Projected | None:
        """One operation of the user, by id (the HTTP routes: it reads the user's sheets)."""
        return (await self._of_user(user_id)).get(operation_id)

    async def get_many(self, operations: Iterable[tuple[str, str, str, str | None]]) -> dict[str, Projected]:
        """(user, account, operation, month) → the projected operation, by key; one read per sheet."""
        wanted = {
            operation_key(user_id, op_id): (user_id, op_id, projection_sheet(user_id, account_id, month))
            for user_id, account_id, op_id, month in operations
        }
        sheets = await self.sheets.read({sid for _, _, sid in wanted.values()})
        found: dict[str, Projected] = {}
        for key, (user_id, op_id, sid) in wanted.items():
            parts = [part for part in sheets.get(sid, ()) if op_id in part["ops"]]
            if not parts:
                continue
            state = projection_state(part["ops"][op_id] for part in parts)
            if (projected := projected_of(user_id, op_id, parts[0], state)) is not None:
                found[key] = projected
        return found

    async def write_seen(self, seen: Sequence[Seen], at: datetime) -> None:
        """One entry per operation (what the batch says of it, in order) in its month's sheet."""
        async with self._writing:
            at = self._stamp(at)
            additions = Additions()
            for item in seen:
                sid = projection_sheet(item.user_id, item.account_id, item.month)
                entries = additions.entries(sid, item.user_id, item.account_id)
                entries[item.operation_id] = {**entries.get(item.operation_id, {}), **seen_entry(item, at)}
            await self.sheets.append(additions.all())

    async def set_seen_version(self, items: Sequence[tuple[Seen, int, Categorization]], at: datetime) -> None:
        """(operation, version, result): after a rule change raced with a categorisation."""
        async with self._writing:
            at = self._stamp(at)
            additions = Additions()
            for item, version, result in items:
                sid = projection_sheet(item.user_id, item.account_id, item.month)
                additions.entries(sid, item.user_id, item.account_id)[item.operation_id] = {
                    "seen_version": version,
                    "result": result_doc(result),
                    "at": at,
                }
            await self.sheets.append(additions.all())

    async def next_choice(self, op: Projected, at: datetime) -> int:
        """The next choice number above `op.choice` that no other correction has claimed: claimed here
        with an insert (which the local engine applies atomically, as MongoDB does)."""
        number = op.choice + 1
        for _ in range(CHOICE_ATTEMPTS):
            try:
                await self.choices.insert_one(
                    {
                        "_id": f"{op.user_id}:{op.operation_id}:{number}",
                        "user_id": op.user_id,
                        "account_id": op.account_id,
                        "at": at,
                    }
                )
                return number
            except DuplicateKeyError:
                number += 1
        raise ConcurrentUpdate(f"{op.user_id}:{op.operation_id}")

    async def set_choice(
        self,
        op: Projected,
        manual: Categorization | None,
        choice: int,
        at: datetime,
        seen: tuple[int, Categorization] | None = None,
    ) -> None:
        """The user's choice for an operation (`manual`), or none any more (None: the rules apply again,
        and `seen` is the rules version and result then published), numbered `choice`."""
        sid = projection_sheet(op.user_id, op.account_id, op.month)
        async with self._writing:
            entry: Doc = {
                "manual": None if manual is None else result_doc(manual),
                "choice": choice,
                "at": self._stamp(at),
            }
            if seen is not None:
                entry |= {"seen_version": seen[0], "result": result_doc(seen[1])}
            addition = SheetAddition(sid, op.user_id, op.account_id, {op.operation_id: entry})
            await self.sheets.append([addition])

    async def set_results(self, items: Sequence[tuple[Projected, int, Categorization]], at: datetime) -> None:
        """(operation, version, result) just published for operations outside a batch (a transfer's
        other leg linked or unlinked): what a re-examination compares with."""
        async with self._writing:
            at = self._stamp(at)
            additions = Additions()
            for op, version, result in items:
                sid = projection_sheet(op.user_id, op.account_id, op.month)
                additions.entries(sid, op.user_id, op.account_id)[op.operation_id] = {
                    "seen_version": version,
                    "result": result_doc(result),
                    "at": at,
                }
            await self.sheets.append(additions.all())

    async def of_user(self, user_id: str) -> AsyncIterator[Projected]:
        """The user's operations (their stored result too; a re-examination recomputes it)."""
        for projected in (await self._of_user(user_id)).values():
            yield projected

    async def _of_user(self, user_id: str) -> dict[str, Projected]:
        """Operation id → the user's operation, from all the user's sheets; one that moved to another
        month (its date changed) is where it was written last."""
        parts = await self.sheets.find({"user_id": user_id})
        by_sheet: dict[str, list[Doc]] = {}
        for part in parts:
            by_sheet.setdefault(str(part["sheet"]), []).append(part)
        latest: dict[str, tuple[datetime, Projected | None]] = {}
        for own in by_sheet.values():
            for op_id, entries in entries_by_item(own).items():
                state = projection_state(entries)
                if state is None:
                    continue
                earlier = latest.get(op_id)
                if earlier is None or state["at"] > earlier[0]:
                    latest[op_id] = (state["at"], projected_of(user_id, op_id, own[0], state))
        return {op_id: projected for op_id, (_, projected) in latest.items() if projected is not None}

    async def delete(
        self, user_id: str, account_id: str, month: str | None, operation_ids: Sequence[str], at: datetime
    ) -> None:
        sid = projection_sheet(user_id, account_id, month)
        at = self._stamp(at)
        gone = {op_id: {"gone": True, "at": at} for op_id in operation_ids}
        await self.sheets.append([SheetAddition(sid, user_id, account_id, gone)])

    async def delete_account(self, user_id: str, account_id: str) -> int:
        """Returns how many sheet documents went (the account's choice numbers go too)."""
        result = await self.sheets.coll.delete_many({"user_id": user_id, "account_id": account_id})
        await self.choices.delete_many({"user_id": user_id, "account_id": account_id})
        return result.deleted_count


def stored_leg_of(doc: Doc) -> StoredLeg:
    partner = doc.get("partner")
    return StoredLeg(
        user_id=doc["user_id"],
        leg=TransferLeg(
            operation_id=doc["operation_id"],
            account_id=doc["account_id"],
            currency=doc["currency"],
            cents=int(doc["cents"]),
            date=date.fromisoformat(doc["date"]),
        ),
        month=doc["month"],
        partner=TransferRef.model_validate(partner) if partner else None,
    )


def leg_id(user_id: str, operation_id: str) -> str:
    return f"{user_id}:{operation_id}"


class TransferRepository:
    """`categorizer_transfers`: one small document per operation whose wording is a transfer's
    (`_id` = `<user>:<operation>`), with its account, currency, signed cents, date and month, and the
    other leg it is linked to (`partner`). A user's documents are read at once by `user_id` (an index):
    transfers are a few a month, so the read is small and its cost is the user's, never the
    collection's. The pairing (`domain.transfers.match_transfers`) is a function of the user's legs.
    The two legs of a transfer are two accounts, so two partitions, often two replicas: every write of
    a user's legs (the batch's own, the links) is made while holding the user's `pairing:` lease, so
    one replica at a time reads, pairs, announces and writes them, and the next one reads what it
    wrote (on the local engine two writers of one leg document would lose one's change)."""

    # a pairing holds it for a batch's read, publish and write (well under a second), renewing it before
    # each write; one left by a crash (SIGKILL) holds the user's batches up until it ends
    PAIRING_LEASE = timedelta(seconds=15)
    PAIRING_WAIT_S = 60.0

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.coll: AsyncCollection[Doc] = db["categorizer_transfers"]
        self.leases = CategorizerLeases(db)
        # this process's pairings of one user wait here rather than poll the store's lease
        self._locks: dict[str, asyncio.Lock] = {}
        # the `pairing:` lease this process holds for each user being paired (its writes renew it first)
        self._holds: dict[str, LeaseHold] = {}

    async def _fence(self, user_ids: Iterable[str]) -> None:
        """Renews the pairing leases of the users about to be written: LeaseLost when this process stalled
        past one and another replica pairs that user now (it must not write what it decided before)."""
        for user_id in set(user_ids):
            hold = self._holds.get(user_id)
            if hold is not None:
                await hold.keep()

    @contextlib.asynccontextmanager
    async def pairing(self, user_ids: Sequence[str]) -> AsyncIterator[None]:
        """Held while the users' legs are paired (read, pair, publish, write): each user's `pairing:`
        lease, all at once when free, else in the order of the users' ids (`CategorizerLeases.held_all`);
        LeaseBusy when one stays another's for PAIRING_WAIT_S (the consumer waits and tries again)."""
        users = sorted(set(user_ids))
        async with contextlib.AsyncExitStack() as held:
            for user_id in users:
                lock = self._locks.get(user_id)
                if lock is None:
                    lock = self._locks[user_id] = asyncio.Lock()
                await held.enter_async_context(lock)
            holds = await held.enter_async_context(
                self.leases.held_all(
                    [f"pairing:{user_id}" for user_id in users], self.PAIRING_LEASE, self.PAIRING_WAIT_S
                )
            )
            self._holds.update(zip(users, holds, strict=True))
            try:
                yield
            finally:
                for user_id in users:
                    self._holds.pop(user_id, None)

    async def create_indexes(self) -> None:
        await self.coll.create_index([("user_id", ASCENDING), ("account_id", ASCENDING)], name="by_user")
        await self.leases.create_indexes()

    async def put(self, legs: Sequence[tuple[str, TransferLeg, str]], at: datetime) -> None:
        """(user, leg, month): stored or updated (the link they had stays)."""
        await self._fence(user_id for user_id, _, _ in legs)
        await bulk_write_chunked(
            self.coll,
            [
                UpdateOne(
                    {"_id": leg_id(user_id, leg.operation_id)},
                    {
                        "$set": {
                            "user_id": user_id,
                            "operation_id": leg.operation_id,
                            "account_id": leg.account_id,
                            "currency": leg.currency,
                            "cents": leg.cents,
                            "date": leg.date.isoformat(),
                            "month": month,
                            "updated_at": at,
                        },
                        "$setOnInsert": {"partner": None},
                    },
                    upsert=True,
                )
                for user_id, leg, month in legs
            ],
        )

    async def of_user(self, user_id: str) -> dict[str, StoredLeg]:
        """Operation id → the user's leg."""
        return {doc["operation_id"]: stored_leg_of(doc) async for doc in self.coll.find({"user_id": user_id})}

    async def get(self, user_id: str, operation_id: str) -> StoredLeg | None:
        doc = await self.coll.find_one({"_id": leg_id(user_id, operation_id)})
        return None if doc is None else stored_leg_of(doc)

    async def write(
        self, user_id: str, links: dict[str, TransferRef | None], gone: Iterable[str], at: datetime
    ) -> None:
        """Sets the links that changed (operation id → the other leg, or None) and forgets legs that went."""
        await self._fence([user_id])
        writes: list[UpdateOne | DeleteOne] = [
            UpdateOne(
                {"_id": leg_id(user_id, op_id)},
                {"$set": {"partner": None if ref is None else ref.model_dump(), "updated_at": at}},
            )
            for op_id, ref in links.items()
        ]
        writes += [DeleteOne({"_id": leg_id(user_id, op_id)}) for op_id in gone]
        await bulk_write_chunked(self.coll, writes)

    async def delete_account(self, user_id: str, account_id: str) -> int:
        result = await self.coll.delete_many({"user_id": user_id, "account_id": account_id})
        return result.deleted_count


async def drop_all(db: AsyncDatabase[Doc]) -> None:
    """Tests and benchmarks only."""
    names = (
        "categorizer_rulesets",
        "categorizer_sheets",
        "categorizer_operations",
        "categorizer_transfers",
        "categorizer_choices",
        "categorizer_leases",
        "categorizer_lease_takeovers",
    )
    for name in names:
        with contextlib.suppress(Exception):
            await db.drop_collection(name)


class CategorizerEraser:
    """Erasing a user from the categorizer's collections (see shared.erasure): rules, payees, projection,
    transfer legs."""

    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        self.rulesets = RuleSetRepository(db)
        self.operations = OperationsRepository(db)
        self.transfers = TransferRepository(db)
        self.leases = CategorizerLeases(db)

    async def erase_user(self, user_id: str) -> int:
        """Deletes every document of the user; returns how many."""
        mine = {"user_id": user_id}
        deleted = (await self.rulesets.rulesets.delete_many({"_id": user_id})).deleted_count
        deleted += (await self.operations.sheets.coll.delete_many(mine)).deleted_count
        deleted += (await self.operations.legacy.delete_many(mine)).deleted_count
        deleted += (await self.operations.choices.delete_many(mine)).deleted_count
        deleted += (await self.transfers.coll.delete_many(mine)).deleted_count  # transfer legs (by_user)
        deleted += await self.leases.forget_user(user_id)
        return deleted
