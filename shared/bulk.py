"""Bulk writes in small commands: what FerretDB v1 (SQLite) can take.

FerretDB v1 keeps each update statement's query open until the whole `update` command ends, one
SQLite connection each: an unordered `bulk_write` of more than about 100 updates of existing
documents exhausts the connection pool and deadlocks that database for every client. Sending the
writes in commands of at most `chunk` statements avoids it, on MongoDB too at little cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

DEFAULT_CHUNK = 50
Write = InsertOne[Any] | UpdateOne | ReplaceOne[Any] | DeleteOne


async def bulk_write_chunked(
    collection: AsyncCollection[Any],
    writes: Sequence[Write],
    *,
    chunk: int = DEFAULT_CHUNK,
    ordered: bool = False,
) -> int:
    """Sends `writes` in commands of at most `chunk` statements; returns how many matched or were upserted."""
    touched = 0
    for start in range(0, len(writes), chunk):
        result = await collection.bulk_write(list(writes[start : start + chunk]), ordered=ordered)
        touched += result.matched_count + result.upserted_count
    return touched
