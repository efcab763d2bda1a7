"""Leases that hold across replicas, on MongoDB and on the local engine (FerretDB v1).

A lease is one document, `_id` = its name, naming its holder and when it ends (`expires_at`).
MongoDB applies a filtered update or delete atomically, so a guard in the filter (the holder, the
expiry) is enough there. FerretDB v1 is not: it reads the documents the filter matches, then writes
each back (or deletes it) by `_id` alone. Two replicas taking over one expired lease with a filtered
update both "win" (measured: in 73 of 200 rounds of two clients at once), and a slow guarded delete
can remove the lease a faster contender has just inserted under the same `_id`. Inserts with a unique
`_id` are atomic on both. So every change of a lease has exactly one possible writer:

- a free lease is taken by inserting its document: of two contenders one gets a duplicate key;
- a live lease is changed (renewed, let go) only by its holder, with the holder in the filter, while
  more than `margin` of it is left: nobody else writes it then;
- a lease that has ended, or ends within `margin`, is replaced (taken over; renewed or let go by its
  holder) only by the writer that first inserts its take-over ticket, whose `_id` names that lease
  instance (name, holder, expiry): one ticket per instance, so one writer, whose write then carries
  the whole instance in its filter (which is what MongoDB needs). The others wait for that write to
  land and read the new holder. A ticket whose writer died before writing (the instance is still
  there `stale` after the ticket) gives way to the next generation of the instance's ticket.

What stays open on the local engine: a holder that finds more than `margin` left, then stalls inside
the engine between its read and its write for longer than that while a successor takes the lease over
(or a ticket's winner that stalls longer than `stale` before its write); clock skew between replicas
larger than `margin` counts as such a stall. Tickets (a few bytes, one per take-over: after a crash, a
stall, or a run that waited past its lease in a queue) go at their lease's next take-over once older
than `stale`, and with their lease's owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shared.mongo import is_duplicate_key_error

Doc = dict[str, Any]
# a lease is looked at again this many times when others keep changing it under us, the n-th time after
# a pause of FIRST_PAUSE_S * 2**n (the winner of a take-over ticket writing the new holder meanwhile)
ATTEMPTS = 7
FIRST_PAUSE_S = 0.005
# generations of an instance's take-over ticket tried when the earlier ones' writers died before writing
TICKET_GENERATIONS = 5


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class LeaseStore:
    """Leases in `leases` (`_id` = name, `holder_field`, `claimed_at`, `expires_at`, and the caller's
    own fields) and their take-over tickets in `tickets` (`_id` = the instance replaced, `lease` = its
    name)."""

    def __init__(
        self,
        leases: AsyncCollection[Doc],
        tickets: AsyncCollection[Doc],
        *,
        holder_field: str = "holder",
        margin: timedelta = timedelta(seconds=5),
        stale: timedelta = timedelta(seconds=30),
    ) -> None:
        self.leases = leases
        self.tickets = tickets
        self.holder_field = holder_field
        self.margin = margin
        self.stale = stale

    async def create_indexes(self) -> None:
        await self.tickets.create_index([("lease", ASCENDING)], name="by_lease")

    def _document(self, holder: str, now: datetime, ttl: timedelta, fields: Mapping[str, Any]) -> Doc:
        return {self.holder_field: holder, "claimed_at": now, "expires_at": now + ttl, **fields}

    async def take(
        self, name: str, holder: str, now: datetime, ttl: timedelta, fields: Mapping[str, Any] | None = None
    ) -> str:
        """`holder` takes the lease unless another holds it live; when `holder` has it already, it starts
        again. Returns the holder after: `holder` when it has the lease."""
        doc = self._document(holder, now, ttl, fields or {})
        try:
            await self.leases.insert_one({"_id": name, **doc})
            return holder
        except DuplicateKeyError:
            pass
        return await self._settle(name, holder, now, doc)

    async def take_many(
        self,
        wanted: Mapping[str, str],
        now: datetime,
        ttl: timedelta,
        fields: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        """`take` for many leases (name → holder) in one insert; those held already are looked at one by
        one. Returns each lease's holder after."""
        if not wanted:
            return {}
        docs = {name: self._document(holder, now, ttl, fields or {}) for name, holder in wanted.items()}
        names = list(docs)
        taken: set[str] = set()
        try:
            await self.leases.insert_many([{"_id": name, **docs[name]} for name in names], ordered=False)
        except BulkWriteError as exc:
            if not is_duplicate_key_error(exc):
                raise
            taken = {names[e["index"]] for e in exc.details.get("writeErrors", [])}
        holders = {name: holder for name, holder in wanted.items() if name not in taken}
        for name in taken:
            holders[name] = await self._settle(name, wanted[name], now, docs[name])
        return holders

    async def renew(
        self, name: str, holder: str, now: datetime, ttl: timedelta, fields: Mapping[str, Any] | None = None
    ) -> str:
        """The holder's lease starts again (taken anew if it was let go, or taken over if it ended);
        returns the holder after: another one when `holder` lost it."""
        return await self._settle(name, holder, now, self._document(holder, now, ttl, fields or {}))

    async def release(self, name: str, holder: str, now: datetime) -> None:
        """Lets the lease go if `holder` still has it."""
        found = await self.leases.find_one({"_id": name})
        if found is None or found[self.holder_field] != holder:
            return
        if found["expires_at"] - now > self.margin:
            await self.leases.delete_one({"_id": name, self.holder_field: holder})
            return
        # ending: a successor may be taking it over right now; the ticket says which of us writes
        await self._replace(found, None, now)

    async def _settle(self, name: str, holder: str, now: datetime, doc: Doc) -> str:
        """Gives the lease to `doc` when it is free, `holder`'s or ended; else returns who has it."""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(FIRST_PAUSE_S * 2**attempt)
            found = await self.leases.find_one({"_id": name})
            if found is None:
                try:
                    await self.leases.insert_one({"_id": name, **doc})
                    return holder
                except DuplicateKeyError:
                    continue
            current = str(found[self.holder_field])
            left = found["expires_at"] - now
            if current != holder and left > timedelta(0):
                return current
            if current == holder and left > self.margin:
                renewed = await self.leases.update_one(
                    {"_id": name, self.holder_field: holder}, {"$set": doc}
                )
                if renewed.matched_count == 1:
                    return holder
                continue
            if await self._replace(found, doc, now):
                return holder
        found = await self.leases.find_one({"_id": name})
        return holder if found is None else str(found[self.holder_field])

    async def _replace(self, found: Doc, doc: Doc | None, now: datetime) -> bool:
        """Replaces the lease instance `found` by `doc` (None: deletes it) when this writer is the first to
        insert its ticket. True when it did."""
        instance = f"{found['_id']}|{found[self.holder_field]}|{_millis(found['expires_at'])}"
        for generation in range(TICKET_GENERATIONS):
            ticket = f"{instance}|{generation}"
            try:
                await self.tickets.insert_one({"_id": ticket, "lease": found["_id"], "at": now})
                break
            except DuplicateKeyError:
                other = await self.tickets.find_one({"_id": ticket})
                if other is None or now - other["at"] < self.stale:
                    return False  # its winner is writing: this one waits and reads what it wrote
        else:
            return False
        guard = {
            "_id": found["_id"],
            self.holder_field: found[self.holder_field],
            "expires_at": found["expires_at"],
        }
        if doc is None:
            replaced = (await self.leases.delete_one(guard)).deleted_count == 1
        else:
            replaced = (await self.leases.update_one(guard, {"$set": doc})).matched_count == 1
        # the lease's tickets older than `stale` guard nothing any more (their instances are gone, or
        # their winners are taken for dead): each lease keeps the few of its last minute
        await self.tickets.delete_many({"lease": found["_id"], "at": {"$lt": now - self.stale}})
        return replaced

    async def forget(self, name: str) -> int:
        """Deletes the lease and its tickets (erasing their owner); returns how many documents went."""
        deleted = (await self.leases.delete_many({"_id": name})).deleted_count
        return deleted + (await self.tickets.delete_many({"lease": name})).deleted_count
