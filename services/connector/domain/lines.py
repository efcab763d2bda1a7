"""The bank's lines: what makes one new or changed (change detection, deterministic event ids)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from shared.jsonutil import dumps_canonical

# A line as the aggregator gives it (Powens' fields): the connector reads its id and fingerprint and
# passes it on whole; the importer validates it (a bad line goes to its DLQ, it does not stop a sync).
BankLine = Mapping[str, Any]
Line = TypeVar("Line", bound=BankLine)

# Fields whose change means the bank says something new about a line; `last_update` and scrape
# dates are bookkeeping and do not make a line new.
FINGERPRINT_FIELDS = (
    "id",
    "id_account",
    "date",
    "rdate",
    "vdate",
    "value",
    "original_wording",
    "simplified_wording",
    "wording",
    "type",
    "coming",
    "active",
    "deleted",
)


def line_id(transaction: BankLine) -> str:
    return str(transaction["id"])


def fingerprint(transaction: BankLine) -> str:
    """Same line, same version, same fingerprint: the basis of change detection and event ids."""
    relevant = {field: transaction.get(field) for field in FINGERPRINT_FIELDS}
    return hashlib.sha256(dumps_canonical(relevant)).hexdigest()[:24]


def changed_lines(transactions: Sequence[Line], known: Mapping[str, str]) -> list[tuple[Line, str]]:
    """The lines that are new or different from what was published before, with their fingerprints."""
    out: list[tuple[Line, str]] = []
    for transaction in transactions:
        print_ = fingerprint(transaction)
        if known.get(line_id(transaction)) != print_:
            out.append((transaction, print_))
    return out
