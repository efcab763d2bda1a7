"""MongoDB helpers (PyMongo's async API): the client, ping, reading by ids, recognising "already there"."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

DUPLICATE_KEY = 11000
# up to this many ids are read one by one (concurrently); more as one read of their common scope
POINT_READS_UP_TO = 64


def make_client(url: str, *, server_selection_timeout_ms: int = 5000) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=server_selection_timeout_ms,
        connectTimeoutMS=server_selection_timeout_ms,
        appname="banksync",
    )


def is_duplicate_key_error(exc: BaseException) -> bool:
    """True when a write failed only because the document is already there (unique index)."""
    if isinstance(exc, DuplicateKeyError):
        return True
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])
        return bool(errors) and all(e.get("code") == DUPLICATE_KEY for e in errors)
    if isinstance(exc, PyMongoError):
        return getattr(exc, "code", None) == DUPLICATE_KEY
    return False


async def ping(client: AsyncMongoClient[dict[str, Any]]) -> None:
    await client.admin.command("ping")


async def find_by_ids(
    collection: AsyncCollection[dict[str, Any]],
    ids: Iterable[str],
    scope: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The documents with these `_id`s, by id; `scope` is an equality filter all of them match (one
    outside it may be missed).

    The local engine (FerretDB on PostgreSQL) serves an equality on an indexed field from an index but
    answers `{"_id": {"$in": ...}}` with a sequential scan of the whole collection. So a few ids are
    point reads, sent concurrently; more are one index-served read of their scope (an account, a
    user), kept by id: its cost is the scope's size, never the collection's. Without a scope, every id
    is a point read. On MongoDB each of these reads is an index lookup too.
    """
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    filter_scope = dict(scope or {})
    if len(wanted) > POINT_READS_UP_TO and filter_scope:
        keep = set(wanted)
        return {doc["_id"]: doc async for doc in collection.find(filter_scope) if doc["_id"] in keep}
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), POINT_READS_UP_TO):
        chunk = wanted[start : start + POINT_READS_UP_TO]
        docs = await asyncio.gather(*(collection.find_one({"_id": one}) for one in chunk))
        found.update((doc["_id"], doc) for doc in docs if doc is not None)
    return found
