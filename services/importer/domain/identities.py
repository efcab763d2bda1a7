"""The ids the importer gives: deterministic where a replay or a retry must find them again."""

from __future__ import annotations

import time
import uuid

OPERATION_NAMESPACE = uuid.UUID("0c6d2f53-5d0e-4a8e-8f2e-6b1f3f1d7a10")
ACCOUNT_NAMESPACE = uuid.UUID("5b0b7f7e-8a4f-4d55-9f3e-2f1d0c9b8a71")


def operation_id(akey: str, txid: str, salt: str = "") -> str:
    """The operation a line gets the first time it shows (the same on every replay)."""
    return str(uuid.uuid5(OPERATION_NAMESPACE, f"{akey}\x1f{txid}\x1f{salt}"))


def line_ref(akey: str, txid: str) -> str:
    """Names a line across aggregator accounts (what a reconciled manual operation points to)."""
    return f"{akey}#{txid}"


def auto_account_id(akey: str) -> str:
    """The app account created for an aggregator account synced without a chosen target."""
    return str(uuid.uuid5(ACCOUNT_NAMESPACE, akey))


def time_ordered_id() -> str:
    """A UUID-shaped id that sorts by creation time (manual accounts and operations)."""
    millis = int(time.time() * 1000)
    return str(uuid.UUID(int=(millis << 80) | uuid.uuid4().int >> 48))
