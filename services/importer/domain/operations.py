"""Operations as the importer stores and shows them, what the user may change of one, and searching them:
pure rules, no I/O.

An operation is shown as the contract's `Operation` (what the events carry and the API answers); a
`StoredOperation` adds what the importer keeps beside it. A bank line's operation comes from the line
and where it came from (`BankOrigin`), a manual one from what the user typed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from services.importer.domain.identities import line_ref
from services.importer.domain.lines import Line
from shared.contract.payloads import Operation
from shared.money import format_amount
from shared.text import all_words_prefix


@dataclass(frozen=True)
class StoredOperation:
    """An operation as the app shows it (its categorisation included) and what is kept beside it."""

    operation: Operation
    user_id: str
    aggregator_account_id: str | None = None
    reconciled_by: str | None = None  # the line (`line_ref`) that reconciles a manual operation
    edits: int = 0  # how many changes the user made to a manual operation
    # the categorisation sheet it was filed in when first stored (None: stored before sheets and months)
    filed: str | None = None

    @property
    def id(self) -> str:
        return self.operation.id

    @property
    def account_id(self) -> str:
        return self.operation.account_id


@dataclass(frozen=True)
class BankOrigin:
    """Where one aggregator account's lines come from: whose they are and in which currency; `rev` is
    the dedup-state revision the writes make (the fencing token of the account's writers: a write never
    replaces what a later revision wrote, see `BankWrite`)."""

    user_id: str
    currency: str
    akey: str
    aggregator_account_id: str
    rev: int = 0

    def operation(self, line: Line, shown: Operation | None = None) -> Operation:
        """The operation a line holds, with the categorisation of `shown` (the operation as it was)."""
        assert line.op_id is not None
        return Operation(
            id=line.op_id,
            account_id=line.account_id,
            date=line.date,
            amount=str(line.amount),
            currency=self.currency,
            memo=line.memo,
            label=line.label,
            status="pending" if line.pending else "booked",
            source="bank",
            reconciled=False,
            payee=shown.payee if shown else None,
            category=shown.category if shown else None,
            categorized_by=shown.categorized_by if shown else None,
            aggregator_transaction_id=line.txid,
            transfer=shown.transfer if shown else None,
        )

    def stored(self, line: Line) -> StoredOperation:
        return StoredOperation(self.operation(line), self.user_id, self.aggregator_account_id)


@dataclass(frozen=True)
class BankWrite:
    """What the fenced writes of changed and deleted bank operations found.

    `superseded`: operations a later revision of the account's state wrote (or kept) meanwhile: this
    writer decided on an old state (a replica that lost its partition while paused) and must decide
    again before it announces anything. `missing`: changed operations that are not there (deleted with
    their account meanwhile, or never written): created again only while the state has not moved."""

    superseded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LineMatch:
    """What a manual operation takes of the bank line that reconciles it."""

    ref: str  # `line_ref` of the line
    txid: str
    memo: str
    status: str  # the line's: the operation backs the bank's balance once its line is booked


def match_of(akey: str, line: Line) -> LineMatch:
    return LineMatch(line_ref(akey, line.txid), line.txid, line.memo, line.status)


def reconciled(manual: StoredOperation, match: LineMatch) -> StoredOperation:
    """A manual operation as it is once reconciled with a line."""
    operation = manual.operation.model_copy(
        update={"reconciled": True, "aggregator_transaction_id": match.txid, "memo": match.memo}
    )
    return StoredOperation(
        operation, manual.user_id, manual.aggregator_account_id, match.ref, manual.edits, manual.filed
    )


def released(manual: StoredOperation) -> StoredOperation:
    """A manual operation as it is once no bank line reconciles it."""
    operation = manual.operation.model_copy(
        update={"reconciled": False, "aggregator_transaction_id": None, "memo": ""}
    )
    return StoredOperation(
        operation, manual.user_id, manual.aggregator_account_id, None, manual.edits, manual.filed
    )


def manual_operation(
    op_id: str, user_id: str, account_id: str, *, date: dt.date, amount: Decimal, currency: str, label: str
) -> StoredOperation:
    """An operation the user adds to one of their accounts."""
    operation = Operation(
        id=op_id,
        account_id=account_id,
        date=date,
        amount=format_amount(amount),
        currency=currency,
        memo="",
        label=label,
        status="booked",
        source="manual",
        reconciled=False,
        aggregator_transaction_id=None,
    )
    return StoredOperation(operation, user_id)


@dataclass(frozen=True, slots=True)
class ManualEdit:
    """What changes of a manual operation (None: stays), and its edit number once changed."""

    date: dt.date | None = None
    amount: Decimal | None = None
    currency: str | None = None
    label: str | None = None
    memo: str = ""  # the operation's (its search keys are those of the memo and the new label)
    edits: int = 0

    @property
    def empty(self) -> bool:
        return self.date is None and self.amount is None and self.currency is None and self.label is None

    @property
    def moves(self) -> bool:
        """Whether it touches the date or the amount (what matched a bank line)."""
        return self.date is not None or self.amount is not None


def manual_edit(
    op: StoredOperation,
    *,
    date: dt.date | None,
    amount: Decimal | None,
    currency: str | None,
    label: str | None,
) -> ManualEdit:
    """What a request changes of a manual operation: what it gives that differs from what is stored."""
    shown = op.operation
    return ManualEdit(
        date=date if date is not None and date != shown.date else None,
        amount=amount if amount is not None and format_amount(amount) != shown.amount else None,
        currency=currency if currency is not None and currency != shown.currency else None,
        label=label if label is not None and label != shown.label else None,
        memo=shown.memo,
        edits=op.edits + 1,
    )


def edited(op: StoredOperation, edit: ManualEdit) -> StoredOperation:
    """The manual operation once `edit` is stored."""
    if edit.empty:
        return op
    update: dict[str, object] = {}
    if edit.date is not None:
        update["date"] = edit.date
    if edit.amount is not None:
        update["amount"] = format_amount(edit.amount)
    if edit.currency is not None:
        update["currency"] = edit.currency
    if edit.label is not None:
        update["label"] = edit.label
    return StoredOperation(
        op.operation.model_copy(update=update),
        op.user_id,
        op.aggregator_account_id,
        op.reconciled_by,
        edit.edits,
        op.filed,
    )


@dataclass(frozen=True)
class OperationPage:
    """Operations newest first, and where the next page starts (None: the last page)."""

    items: list[Operation] = field(default_factory=list)
    next_after: tuple[str, str] | None = None


# ---- what the user may do to an operation ----------------------------------------------------------------


def refusal_of_change(source: str, reconciled: bool, *, moves: bool) -> str | None:
    """Why the user may not change an operation (a problem `code`), or None. A bank operation is the
    bank's to change. A manual operation reconciled with a bank line keeps the date and amount that
    matched it (`moves`: the change touches them, or deletes it) until the user undoes the match; its
    label stays the user's to edit."""
    if source != "manual":
        return "bank_operation"
    if reconciled and moves:
        return "reconciled_operation"
    return None


# ---- searching operations ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Searchable:
    """What a search looks at in an operation as the app shows it."""

    words: Sequence[str]  # `shared.text.words_of(memo, label)`
    cents: int
    status: str
    source: str
    reconciled: bool
    category: str | None
    payee_id: str | None


def in_category(category: str | None, wanted: str) -> bool:
    """`energie` holds `energie` and its children (`energie/electricite`), not `energies`."""
    return category is not None and (category == wanted or category.startswith(wanted + "/"))


@dataclass(frozen=True, slots=True)
class OperationQuery:
    """The filters of a listing or an export; every one given must hold (an empty query takes all).

    `words`: each must begin a word of the memo or the label (a whole word does), folded like them
    (`shared.text.words_of`: no case, no accents), so `ELEC` and `électricité` both find `Électricité`.
    Amount bounds are inclusive, in cents."""

    words: tuple[str, ...] = ()
    category: str | None = None
    payee_id: str | None = None
    min_cents: int | None = None
    max_cents: int | None = None
    status: str | None = None
    source: str | None = None
    reconciled: bool | None = None

    @property
    def needs_categorization(self) -> bool:
        """Whether it looks at the payee or the category (kept in the categorisation sheets)."""
        return self.category is not None or self.payee_id is not None

    @property
    def empty(self) -> bool:
        return self == OperationQuery()

    def takes_stored(self, op: Searchable) -> bool:
        """The filters on what the operation's own document says (its categorisation aside)."""
        if self.status is not None and op.status != self.status:
            return False
        if self.source is not None and op.source != self.source:
            return False
        if self.reconciled is not None and op.reconciled != self.reconciled:
            return False
        if self.min_cents is not None and op.cents < self.min_cents:
            return False
        if self.max_cents is not None and op.cents > self.max_cents:
            return False
        return all_words_prefix(self.words, op.words)

    def takes(self, op: Searchable) -> bool:
        if self.category is not None and not in_category(op.category, self.category):
            return False
        if self.payee_id is not None and op.payee_id != self.payee_id:
            return False
        return self.takes_stored(op)
