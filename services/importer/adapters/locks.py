"""One writer at a time per key in this process (the Locks port).

Nothing across replicas rests on these locks. Between replicas, an aggregator account has one writer
because its records are on one partition and a partition has one owner (shared.consumer.HandOver waits
for the batch in hand before the partition moves); a replica that wakes after its partition moved is
refused by the fencing of the writes (`src_rev`, see adapters/mongo.py); the ops' replay runs on the
partition's owner. What the locks still do is keep this process from sending two updates of one
document at once, which FerretDB v1 (read, change in Go, write back) could merge into one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyLocks:
    """One holder at a time per key in this process; several keys are taken in order (no deadlock).

    Per aggregator account: one writer of its dedup state (consumer, replay, deletion). Per operation:
    one writer of its document (a manual operation the lines of two aggregator accounts may reconcile),
    because FerretDB v1 rewrites a whole document on update and can lose one of two concurrent updates
    of it. (Categorisations are not written on the operations: see `handlers.categorizations`.)
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, *keys: str) -> AsyncIterator[None]:
        ordered = sorted(set(keys))
        for key in ordered:
            self._holders[key] = self._holders.get(key, 0) + 1
        acquired: list[str] = []
        try:
            for key in ordered:
                await self._locks.setdefault(key, asyncio.Lock()).acquire()
                acquired.append(key)
            yield
        finally:
            for key in acquired:
                self._locks[key].release()
            for key in ordered:
                self._holders[key] -= 1
                if self._holders[key] == 0:
                    del self._holders[key]
                    self._locks.pop(key, None)
