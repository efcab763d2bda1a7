"""App accounts, links and what the bank says of its accounts, as records, and an account as the API and
the events show it: pure rules, no I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from services.importer.domain.balances import AccountBalance
from services.importer.domain.lines import ImportMode
from shared.contract.payloads import AccountDiscovered, AppAccount, Bank
from shared.money import InvalidAmount, format_amount, to_amount


@dataclass(frozen=True)
class Account:
    """An app account: one the importer created for a bank account, or one the user created (a manual
    account, a reconciliation account among them)."""

    id: str
    user_id: str
    name: str = ""
    currency: str = "EUR"
    bank_id: str | None = None
    iban: str | None = None
    aggregator_account_id: str | None = None
    deleted: bool = False
    generation: int = 1  # its life: a deleted account a sync fills again comes back as the next one
    announced: int = 0  # the generation `account.created` was announced for
    # its manual operations that reconcile mode may match: operation id -> amount
    manual: Mapping[str, Decimal] = field(default_factory=dict)
    # the months it has operations in (None: an account from before months were kept, read whole)
    months: tuple[str, ...] | None = ()
    sources: tuple[str, ...] = ()  # the aggregator accounts (`<user>:<account>`) whose lines came here
    balance: AccountBalance = field(default_factory=AccountBalance)


def account_view(account: Account, balance_cents: int | None = None) -> AppAccount:
    """An app account as the API shows it. `balance`: what the bank says of an account the importer
    created for a bank account, else the sum of its booked operations (a manual account, a reconciliation
    account among them). `bank_balance`, `computed_balance` and `balance_gap` are those of its latest
    balance check (null before the first one, and for an account no bank feeds)."""
    stored = account.balance
    balance = stored.bank_balance if account.aggregator_account_id is not None else None
    if balance is None:
        balance = format_amount(Decimal(balance_cents or 0) / 100)
    checked = stored.checked_at is not None
    return AppAccount(
        account_id=account.id,
        bank_id=account.bank_id,
        name=account.name,
        iban=account.iban,
        balance=balance,
        currency=account.currency,
        aggregator_account_id=account.aggregator_account_id,
        bank_balance=stored.bank_balance if checked else None,
        computed_balance=stored.computed_balance if checked else None,
        balance_gap=stored.balance_gap if checked else None,
    )


def manual_account(account_id: str, user_id: str, name: str, currency: str) -> Account:
    """An account the user creates."""
    return Account(account_id, user_id, name=name, currency=currency)


@dataclass(frozen=True)
class Link:
    """Where the lines of one aggregator account go (None: an account the importer creates), and how."""

    akey: str
    user_id: str
    aggregator_account_id: str
    target_account_id: str | None
    import_mode: ImportMode
    updated_at: dt.datetime | None = None


@dataclass(frozen=True)
class BankAccountDetails:
    """What the connector said of an aggregator account: the name, IBAN and balance the bank gives it."""

    akey: str
    user_id: str
    aggregator_account_id: str
    bank: Bank
    name: str | None
    iban: str | None
    balance: str | None
    currency: str | None
    type: str | None


def details_of(item: AccountDiscovered, akey: str) -> BankAccountDetails | None:
    """What an `account.discovered` says of its account (None: it names no aggregator account)."""
    account = item.account
    if not account.aggregator_account_id:
        return None
    try:
        balance = format_amount(to_amount(account.balance)) if account.balance else None
    except InvalidAmount:
        balance = None
    return BankAccountDetails(
        akey=akey,
        user_id=item.user_id,
        aggregator_account_id=account.aggregator_account_id,
        bank=item.bank,
        name=str(account.name or "") or None,
        iban=account.iban,
        balance=balance,
        currency=account.currency,
        type=account.type,
    )


def bank_account(
    account_id: str,
    akey: str,
    user_id: str,
    bank: Bank,
    aggregator_account_id: str,
    currency: str,
    details: BankAccountDetails | None,
) -> Account:
    """The account the importer creates for a bank account synced without a chosen target, named as the
    connector said (else after the bank and the account's id)."""
    return Account(
        account_id,
        user_id,
        name=(details.name if details else None) or f"{bank.name} {aggregator_account_id}",
        currency=currency,
        bank_id=bank.id,
        iban=details.iban if details else None,
        aggregator_account_id=aggregator_account_id,
        sources=(akey,),
        balance=AccountBalance(bank_balance=details.balance if details else None),
    )


@dataclass(frozen=True, slots=True)
class AccountNaming:
    """What an account the importer created takes of what the bank says (None: stays as it is)."""

    name: str | None = None
    iban: str | None = None
    bank_balance: str | None = None

    @property
    def empty(self) -> bool:
        return self.name is None and self.iban is None and self.bank_balance is None


def naming_of(created: Account, details: BankAccountDetails) -> AccountNaming:
    """The bank's name and IBAN, and its balance unless a sync's check (newer, and checked) gave one."""
    balance = created.balance
    return AccountNaming(
        name=details.name if details.name and details.name != created.name else None,
        iban=details.iban if details.iban and details.iban != created.iban else None,
        bank_balance=(
            details.balance
            if details.balance is not None
            and balance.bank_balance_at is None
            and details.balance != balance.bank_balance
            else None
        ),
    )
