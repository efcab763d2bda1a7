"""The connection's accounts over their life: the bank's list followed (new, closed, balances)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shared.money import InvalidAmount, format_amount, to_amount


@dataclass(frozen=True)
class BankAccount:
    """An aggregator account as the connector keeps and shows it (the contract's connections API)."""

    aggregator_account_id: str
    name: str = ""
    iban: str | None = None
    number: str | None = None
    type: str = "unknown"
    balance: str | None = None
    coming: str | None = None
    currency: str = "EUR"
    # the user's choice (synced or not); new accounts wait to be chosen unless the aggregator syncs them
    selected: bool = False
    closed: bool = False


def _decimal_text(value: Any, currency: str | None) -> str | None:
    """A balance the bank gives, exact; one that is no exact amount of its currency (a float with more
    places than it has) is unknown (null), never rounded, and does not fail the refresh of the connection."""
    try:
        return format_amount(to_amount(value, currency)) if value is not None else None
    except InvalidAmount:
        return None


def bank_account_view(account: Mapping[str, Any]) -> BankAccount:
    """A Powens account (as the aggregator answers it) as the connector keeps and shows it."""
    currency = account.get("currency")
    code = currency.get("id") if isinstance(currency, dict) else currency
    return BankAccount(
        aggregator_account_id=str(account["id"]),
        name=account.get("name") or account.get("original_name") or "",
        iban=account.get("iban"),
        number=account.get("number"),
        type=account.get("type") or "unknown",
        balance=_decimal_text(account.get("balance"), code),
        coming=_decimal_text(account.get("coming"), code),
        currency=code or "EUR",
        selected=account.get("disabled") in (None, False) and not account.get("deleted"),
        closed=bool(account.get("deleted")),
    )


@dataclass(frozen=True)
class AccountsFollowed:
    """The connection's accounts after a read of the bank's list, and what that read revealed."""

    accounts: tuple[BankAccount, ...]
    discovered: tuple[BankAccount, ...] = ()
    closed: tuple[BankAccount, ...] = ()

    @property
    def revealed(self) -> bool:
        return bool(self.discovered or self.closed)


def follow_bank_accounts(
    known: Sequence[BankAccount], fetched: Sequence[BankAccount] | None
) -> AccountsFollowed:
    """Merges the bank's account list (Powens `all_accounts`, closed ones with `deleted` set) into the
    accounts the connector knows. A new account is discovered unselected unless the aggregator already
    syncs it; one the bank reports deleted, or no longer lists, is closed (never reopened by a stale
    read, never removed: its operations stay). `fetched` None means the answer had no account list.
    What a refresh changes of a known account is the bank's (name, numbers, type, balances, currency);
    the selection is the user's."""
    if fetched is None:
        return AccountsFollowed(tuple(known))
    seen = {view.aggregator_account_id: view for view in fetched}
    accounts: list[BankAccount] = []
    closed: list[BankAccount] = []
    for before in known:
        view = seen.pop(before.aggregator_account_id, None)
        account = before
        if view is not None:
            account = replace(
                before,
                name=view.name,
                iban=view.iban,
                number=view.number,
                type=view.type,
                balance=view.balance,
                coming=view.coming,
                currency=view.currency,
            )
        if not account.closed and (view is None or view.closed):
            account = replace(account, closed=True)
            closed.append(account)
        accounts.append(account)
    discovered = tuple(view for view in seen.values() if not view.closed)
    return AccountsFollowed((*accounts, *discovered), discovered, tuple(closed))


def accounts_linked(fetched: Sequence[BankAccount] | None) -> AccountsFollowed:
    """A connection linked now: every account the bank lists (not closed) is discovered."""
    accounts = follow_bank_accounts((), fetched or ()).accounts
    return AccountsFollowed(accounts, accounts)
