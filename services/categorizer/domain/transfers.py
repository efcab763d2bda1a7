"""Transfers between the user's own accounts: which wordings are a transfer's, which legs pair up, and
what an operation is shown as (the user's choice, else a transfer's category, else the rules')."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from services.categorizer.domain.matching import Categorization, memo_text
from services.categorizer.domain.normalise import NOT_WORD, analyse
from shared.contract.payloads import Operation
from shared.text import fold

TRANSFER_CATEGORY = "epargne"
TRANSFER_WINDOW_DAYS = 3
# what a leg of a transfer is categorised as, unless the user chose (a built-in rule: no payee)
TRANSFER_RESULT = Categorization(category=TRANSFER_CATEGORY, source="global")
# a direct debit or a deposit that feeds savings (`PRLV EPARGNE LOGEMENT`, `VERSEMENT LIVRET A`)
_SAVINGS_LEADS = frozenset(("PRLV", "PRELEVEMENT", "PRELEV", "VERSEMENT"))
_SAVINGS_WORDS = frozenset(("EPARGNE", "LIVRET", "LDD", "LDDS", "LEP", "PEL", "CEL"))


def is_transfer_memo(memo: str, label: str = "") -> bool:
    """Whether an operation's wording says money moved by transfer: the bank's transfer prefixes
    (`VIR`, `VIR SEPA`, `VIR INST`, `VIREMENT EN VOTRE FAVEUR`, `VIR SEPA RECU /DE`, ... see
    `_LEADING_NOISE`), or a direct debit or a deposit into savings (`PRLV EPARGNE ...`,
    `VERSEMENT LIVRET A`)."""
    text = memo_text(memo, label)
    if analyse(text).transfer:
        return True
    words = NOT_WORD.sub(" ", fold(text)).split()
    return bool(words) and words[0] in _SAVINGS_LEADS and not _SAVINGS_WORDS.isdisjoint(words)


@dataclass(frozen=True)
class TransferLeg:
    """An operation that may be one leg of a transfer: its wording is a transfer's (`is_transfer_memo`)."""

    operation_id: str
    account_id: str
    currency: str
    cents: int  # signed: a debit is negative
    date: dt.date


def match_transfers(legs: Iterable[TransferLeg], window_days: int = TRANSFER_WINDOW_DAYS) -> dict[str, str]:
    """Operation id → the other leg's, for every pair of legs that make a transfer between two of the
    user's accounts: opposite amounts in the same currency, two different accounts, dates at most
    `window_days` apart. Each leg has at most one other. Where legs compete, the pairs are taken closest
    dates first, then by the lowest operation ids (the debit's, then the credit's): the answer depends
    only on the set of legs, never on the order they came in, so every replay gives the same pairs."""
    groups: dict[tuple[str, int], tuple[list[TransferLeg], list[TransferLeg]]] = {}
    for leg in legs:
        if leg.cents == 0:
            continue
        debits, credits = groups.setdefault((leg.currency, abs(leg.cents)), ([], []))
        (debits if leg.cents < 0 else credits).append(leg)
    paired: dict[str, str] = {}
    for debits, credits in groups.values():
        if not debits or not credits:
            continue
        pairs = sorted(
            (abs((d.date - c.date).days), d.operation_id, c.operation_id)
            for d in debits
            for c in credits
            if d.account_id != c.account_id and abs((d.date - c.date).days) <= window_days
        )
        for _, debit, credit in pairs:
            if debit not in paired and credit not in paired:
                paired[debit] = credit
                paired[credit] = debit
    return paired


def shown(result: Categorization, manual: Categorization | None, transfer: bool) -> Categorization:
    """What an operation is categorised as: the user's choice, else a transfer's category, else the rules'."""
    if manual is not None:
        return manual
    return TRANSFER_RESULT if transfer else result


def transfer_leg(op: Operation) -> TransferLeg | None:
    """The operation as a possible leg of a transfer, when its wording is a transfer's."""
    if not is_transfer_memo(op.memo, op.label):
        return None
    try:
        cents = int((Decimal(op.amount) * 100).to_integral_value())
    except InvalidOperation:
        return None
    return TransferLeg(op.id, op.account_id, op.currency, cents, op.date)
