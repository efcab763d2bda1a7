"""Bulk writes in small commands, a few at a time: what FerretDB v1 can take.

FerretDB v1.24 keeps each update or delete statement's query open, on a pooled PostgreSQL connection,
until the whole command ends (measured: one `bulk_write` of 500 updates by `_id` held all 120
connections of its pool and waited for ever, blocking every client). So a command carries at most
`DEFAULT_CHUNK` statements, and a process sends at most `CONCURRENT_COMMANDS` such commands at once:
a process never needs more than `DEFAULT_CHUNK × CONCURRENT_COMMANDS` (150) of the engine's pooled
connections, and the local stack's five processes stay below its pool (`FERRETDB_POOL_MAX_CONNS`,
deploy/local/lib.sh). On MongoDB the same commands cost little more than one big one.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.results import BulkWriteResult

DEFAULT_CHUNK = 50
CONCURRENT_COMMANDS = 3
Write = InsertOne[Any] | UpdateOne | UpdateMany | ReplaceOne[Any] | DeleteOne

_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _command_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _limits.get(loop)
    if slots is None:
        slots = _limits[loop] = asyncio.Semaphore(CONCURRENT_COMMANDS)
    return slots


async def bulk_write_chunked(
    collection: AsyncCollection[Any],
    writes: Sequence[Write],
    *,
    chunk: int = DEFAULT_CHUNK,
    ordered: bool = False,
) -> int:
    """Sends `writes` in commands of at most `chunk` statements, in order; returns how many matched,
    were upserted, inserted or deleted. `ordered` also stops at the first failed statement."""
    touched = 0
    for start in range(0, len(writes), chunk):
        result: BulkWriteResult
        async with _command_slots():
            result = await collection.bulk_write(list(writes[start : start + chunk]), ordered=ordered)
        touched += result.matched_count + result.upserted_count + result.inserted_count + result.deleted_count
    return touched
