"""The bank's balance checked against the operations the app holds: pure rules, no I/O.

After the lines of an account's successful sync, the connector says what the bank's balance is
(`account.synced`: booked lines only). The app account the lines go to keeps an opening balance, fixed
at its first check as the bank's balance minus what it then holds: `computed` = opening + the booked
operations the bank backs (bank lines, manual operations reconciled with a booked bank line), and
`gap` = bank - computed. Every booked line the bank counts and the app holds moves both sides alike,
so the gap stays zero; a line the bank counts and the app never got (or one it holds and the bank
dropped) shows as a gap of exactly that amount.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Generic, TypeVar

# aggregator account types whose balance is not their opening plus their booked lines, so never checked:
# a deferred debit card's is what its next debit takes (its pending lines), a loan's the capital still
# due, an investment's a valuation
UNCHECKED_TYPES = frozenset(
    {
        "card",
        "loan",
        "market",
        "pea",
        "pee",
        "perco",
        "perp",
        "article83",
        "rsp",
        "madelin",
        "lifeinsurance",
        "capitalisation",
        "crowdlending",
        "real_estate",
    }
)

R = TypeVar("R")


def balance_is_checked(account_type: str | None) -> bool:
    """Whether the bank's balance of an account of this type is its opening plus its booked lines (an
    account of no known type is checked)."""
    return (account_type or "").strip().lower() not in UNCHECKED_TYPES


def in_key_order(items: Iterable[R], key: Callable[[R], str]) -> dict[str, list[R]]:
    """The items grouped by `key`, each group in the order the items came (the order of one partition)."""
    groups: dict[str, list[R]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


@dataclass(frozen=True)
class Segment(Generic[R]):
    """A run of lines, then the balances that follow them (either may be empty)."""

    lines: list[R] = field(default_factory=list)
    balances: list[R] = field(default_factory=list)


def segments(items: Iterable[R], is_balance: Callable[[R], bool]) -> list[Segment[R]]:
    """One key's records cut before each line that follows a balance. Applying the segments in order,
    each one's lines then its balances, applies every balance after every line that came before it and
    before every line that came after it (a backlog or a replay: lines of sync 1, balance 1, lines of
    sync 2, balance 2)."""
    cut: list[Segment[R]] = []
    for item in items:
        balance = is_balance(item)
        if not cut or (not balance and cut[-1].balances):
            cut.append(Segment())
        (cut[-1].balances if balance else cut[-1].lines).append(item)
    return cut


def amount_of(cents: int) -> Decimal:
    """Cents as an amount with two places (`-2500` -> `Decimal("-25.00")`)."""
    return Decimal(cents).scaleb(-2)


@dataclass(frozen=True, slots=True)
class BankBalance:
    """What one `account.synced` says of an account when its sync ended."""

    sync: str
    at: dt.datetime  # when the connector said it: a report older than one applied is stale
    balance_cents: int | None  # booked lines only; None when the aggregator gave none
    coming_cents: int | None = None  # the sum of the pending lines
    checked: bool = True  # False: an account whose balance is not its booked lines (balance_is_checked)


@dataclass(frozen=True, slots=True)
class BalanceState:
    """What an app account keeps of its balance checks (in this generation of the account)."""

    rev: int = 0  # how many times checks were stored; 0: never
    opening_cents: int | None = None
    at: dt.datetime | None = None  # when the latest report applied was made
    alarm: bool = False  # whether the latest check found a gap


@dataclass(frozen=True, slots=True)
class BalanceCheck:
    """One report checked against the operations the app holds."""

    report: BankBalance
    bank_cents: int
    booked_cents: int
    opening_cents: int
    first: bool  # the opening balance was fixed by this check

    @property
    def computed_cents(self) -> int:
        return self.opening_cents + self.booked_cents

    @property
    def gap_cents(self) -> int:
        return self.bank_cents - self.computed_cents

    @property
    def alarm(self) -> bool:
        return self.gap_cents != 0


def due(state: BalanceState, reports: Iterable[BankBalance]) -> list[BankBalance]:
    """The reports to check, in order: those with a balance, none older than one applied before it (a
    redelivery or a replay of older syncs restates what later ones replaced; the latest one again is
    checked again, with the same outcome)."""
    latest = state.at
    wanted: list[BankBalance] = []
    for report in reports:
        if report.balance_cents is None or (latest is not None and report.at < latest):
            continue
        wanted.append(report)
        latest = report.at
    return wanted


def check_balances(
    state: BalanceState, booked_cents: int, reports: Iterable[BankBalance]
) -> tuple[BalanceState, list[BalanceCheck]]:
    """Checks the due reports against `booked_cents` (what the app holds of the account's booked
    operations, the bank's side); returns the state after them and each check. The first check of an
    account fixes its opening balance: the bank's balance minus what the app then holds. A report of an
    account that is not checked (`BankBalance.checked`) is none."""
    checks: list[BalanceCheck] = []
    for report in due(state, reports):
        assert report.balance_cents is not None
        if not report.checked:
            state = BalanceState(state.rev, state.opening_cents, report.at, False)
            continue
        first = state.opening_cents is None
        opening = report.balance_cents - booked_cents if state.opening_cents is None else state.opening_cents
        check = BalanceCheck(report, report.balance_cents, booked_cents, opening, first)
        checks.append(check)
        state = BalanceState(state.rev, opening, report.at, check.alarm)
    return state, checks


def after_reports(
    state: BalanceState, booked_cents: int, reports: Iterable[BankBalance]
) -> tuple[BalanceState, BankBalance | None, list[BalanceCheck]]:
    """What the account stores after `reports`: its state (one more revision), the latest report it
    takes (None when none is due: nothing to store) and the checks made (`check_balances`)."""
    fresh = due(state, reports)
    if not fresh:
        return state, None, []
    after, checks = check_balances(state, booked_cents, fresh)
    return replace(after, rev=state.rev + 1), fresh[-1], checks


def cents(amount: Decimal) -> int:
    """An amount in cents (`Decimal("-25.00")` -> `-2500`)."""
    return int(amount * 100)


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """What an app account keeps of the bank's balance and of its latest check (in this generation of
    the account): `bank_balance` is also what the connector said of the account before any check."""

    bank_balance: str | None = None
    bank_coming: str | None = None
    bank_balance_at: dt.datetime | None = None  # when the latest report applied was made
    checked_at: dt.datetime | None = None  # None: the latest report was not checked (or none came)
    computed_balance: str | None = None
    balance_gap: str | None = None
    opening_cents: int | None = None
    sync_run_id: str | None = None
    rev: int = 0
    lines_rev: int | None = None  # the revision of the dedup state its latest check saw
    alarm: bool = False

    def state(self) -> BalanceState:
        return BalanceState(self.rev, self.opening_cents, self.bank_balance_at, self.alarm)


@dataclass(frozen=True, slots=True)
class BalanceStored:
    """What an account stores after balance reports (`after_reports`): its state, the latest report it
    takes, the check of that report (None when the account is not checked), when, and the revision of
    the dedup state the check saw."""

    state: BalanceState
    latest: BankBalance
    check: BalanceCheck | None
    at: dt.datetime
    lines_rev: int | None


def unchanged_since_check(
    balance: AccountBalance, reports: Sequence[BankBalance], lines_rev: int | None
) -> bool:
    """Whether the account's last check still holds for these reports: it was a check (an opening is
    fixed), the dedup state of its lines is the revision it checked, and every report gives the same
    balance. Only the import path changes the bank-backed operations of an account, and it moves that
    revision; a deletion of the account starts a new generation, without an opening."""
    stored = balance.bank_balance
    if lines_rev is None or balance.checked_at is None or stored is None:
        return False
    if balance.opening_cents is None or balance.lines_rev != lines_rev:
        return False
    return all(report.checked and report.balance_cents == cents(Decimal(stored)) for report in reports)
