"""Records to Powens JSON. Amounts are Powens numbers (JSON floats) made from integer cents, so they carry
exactly two decimals at most (1234 cents -> 12.34); dates are ISO dates; timestamps UTC ISO with seconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sandbox.clock import format_ts
from sandbox.models import Account, Connection, Transaction, User

CURRENCIES: dict[str, dict[str, Any]] = {
    "EUR": {"id": "EUR", "symbol": "€", "prefix": False, "crypto": False, "precision": 2, "name": "Euro"},
    "USD": {"id": "USD", "symbol": "$", "prefix": True, "crypto": False, "precision": 2, "name": "US Dollar"},
    "GBP": {
        "id": "GBP",
        "symbol": "£",
        "prefix": True,
        "crypto": False,
        "precision": 2,
        "name": "Pound Sterling",
    },
}


def currency(code: str) -> dict[str, Any]:
    known = CURRENCIES.get(code)
    if known is not None:
        return dict(known)
    return {"id": code, "symbol": code, "prefix": False, "crypto": False, "precision": 2, "name": code}


def money(cents: int | None) -> float | None:
    """Integer cents to the JSON number Powens sends (12.34). Exact to the cent after a str/Decimal parse."""
    return None if cents is None else cents / 100


def ts(moment: datetime | None) -> str | None:
    return None if moment is None else format_ts(moment)


def transaction_json(tx: Transaction) -> dict[str, Any]:
    return {
        "id": tx.id,
        "id_account": tx.id_account,
        "webid": None,
        "application_date": tx.date.isoformat(),
        "date": tx.date.isoformat(),
        "datetime": None,
        "rdate": tx.rdate.isoformat(),
        "rdatetime": None,
        "vdate": tx.vdate.isoformat(),
        "vdatetime": None,
        "bdate": tx.bdate.isoformat(),
        "bdatetime": None,
        "value": money(tx.value_cents),
        "gross_value": money(tx.value_cents),
        "original_value": money(tx.original_value_cents),
        "original_gross_value": money(tx.original_value_cents),
        "original_currency": currency(tx.original_currency) if tx.original_currency else None,
        "commission": money(tx.commission_cents),
        "commission_currency": currency("EUR") if tx.commission_cents is not None else None,
        "type": tx.type,
        "original_wording": tx.original_wording,
        "simplified_wording": tx.simplified_wording,
        "stemmed_wording": tx.simplified_wording,
        "wording": tx.wording,
        "id_category": None,
        "coming": tx.coming,
        "active": tx.active,
        "deleted": ts(tx.deleted),
        "last_update": ts(tx.last_update),
        "date_scraped": ts(tx.date_scraped),
        "card": tx.card,
        "counterparty": dict(tx.counterparty) if tx.counterparty else None,
        "country": tx.country,
        "comment": None,
        "id_cluster": None,
        "documents_count": 0,
    }


def account_json(account: Account, balance_cents: int, coming_cents: int) -> dict[str, Any]:
    return {
        "id": account.id,
        "id_connection": account.id_connection,
        "id_user": account.id_user,
        "id_source": account.id_connection,
        "id_parent": None,
        "original_name": account.original_name,
        "name": account.name,
        "number": account.number,
        "webid": account.number,
        "iban": account.iban,
        "balance": money(balance_cents),
        "coming": money(coming_cents),
        "currency": currency("EUR"),
        "type": account.kind,
        "id_type": {"checking": 2, "savings": 3, "card": 6}.get(account.kind, 0),
        "usage": account.usage,
        "display": account.display,
        "bookmarked": account.bookmarked,
        "disabled": ts(account.disabled),
        "deleted": ts(account.deleted),
        "last_update": ts(account.last_update),
        "created": ts(account.created),
        "loan": None,
        "error": None,
    }


def connection_json(connection: Connection, connector_uuid: str) -> dict[str, Any]:
    return {
        "id": connection.id,
        "id_user": connection.id_user,
        "id_connector": connection.id_connector,
        "id_bank": connection.id_connector,
        "id_provider": connection.id_connector,
        "connector_uuid": connector_uuid,
        "state": connection.state,
        "error": connection.state,
        "error_message": connection.error_message,
        "last_update": ts(connection.last_update),
        "created": ts(connection.created),
        "active": connection.active,
        "last_push": ts(connection.last_push),
        "expire": ts(connection.expire),
        "next_try": ts(connection.next_try),
        "fields": [],
    }


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "signin": format_ts(user.created), "platform": "sandbox"}


def error_json(code: str, description: str, message: str | None = None) -> dict[str, Any]:
    """Powens error body: a stable `code`, a technical `description`, an optional end-user `message`."""
    body: dict[str, Any] = {"code": code, "description": description}
    if message is not None:
        body["message"] = message
    return body
