"""The sandbox's records: what the store keeps and the views turn into Powens JSON."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass
class User:
    id: int
    token: str
    created: datetime


@dataclass
class Connection:
    id: int
    id_user: int
    id_connector: int
    created: datetime
    state: str | None = None  # Powens connection state (also given as `error`), None when fine
    error_message: str | None = None
    last_update: datetime | None = None  # last successful sync
    next_try: datetime | None = None
    active: bool = True
    last_push: datetime | None = None  # last CONNECTION_SYNCED webhook the receiver acknowledged with 200
    expire: datetime | None = None


@dataclass
class Account:
    id: int
    id_connection: int
    id_user: int
    kind: str  # Powens account type: checking, savings, card
    original_name: str
    name: str
    number: str
    iban: str | None
    opening_cents: int  # balance before the first booked line; balance = opening + booked lines
    created: datetime
    usage: str = "PRIV"
    disabled: datetime | None = None  # set: not synced, by the user's choice (new accounts start disabled)
    deleted: datetime | None = None  # set: vanished at the bank
    last_update: datetime | None = None
    display: bool = True
    bookmarked: bool = False


@dataclass
class Transaction:
    id: int
    id_account: int
    date: dt.date
    rdate: dt.date
    vdate: dt.date
    bdate: dt.date
    value_cents: int
    original_wording: str
    simplified_wording: str
    wording: str
    type: str
    coming: bool
    last_update: datetime
    date_scraped: datetime
    active: bool = True
    deleted: datetime | None = None
    card: str | None = None
    counterparty: dict[str, Any] | None = None
    original_value_cents: int | None = None
    original_currency: str | None = None
    commission_cents: int | None = None
    country: str | None = None
