"""MongoDB helpers (PyMongo's async API): the client, ping, and recognising "already there"."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

DUPLICATE_KEY = 11000


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
