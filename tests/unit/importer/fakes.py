"""The importer's ports in memory (services/importer/ports.py): dicts and lists, the same answers as the
MongoDB and Kafka adapters give (tests/unit/importer/test_handlers.py runs one body on both)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from services.importer.domain.accounts import Account, AccountNaming, BankAccountDetails, Link
from services.importer.domain.balances import AccountBalance, BalanceStored, amount_of, cents
from services.importer.domain.categorizations import categorization_rank, sheet_id
from services.importer.domain.events import Keyed
from services.importer.domain.lines import Line, ManualCandidate, StoredState
from services.importer.domain.operations import (
    BankOrigin,
    BankWrite,
    LineMatch,
    ManualEdit,
    OperationPage,
    OperationQuery,
    Searchable,
    StoredOperation,
    edited,
    reconciled,
    released,
)
from services.importer.ports import ReplayClaim, ReplayStatus
from shared.contract.payloads import Bank, CategorizedBy, OperationCategorized, ReplayRequested
from shared.money import format_amount
from shared.periods import month_of
from shared.text import words_of


class MemoryStates:
    """LineStates: one StoredState per aggregator account, compare-and-set on its revision."""

    def __init__(self) -> None:
        self.states: dict[str, StoredState] = {}

    async def load(self, akey: str) -> StoredState:
        found = self.states.get(akey)
        if found is None:
            return StoredState(akey)
        return StoredState(akey, found.user_id, found.rev, dict(found.lines), set(found.accounts))

    async def save(self, state: StoredState, user_id: str, lines: Iterable[Line], accounts: set[str]) -> bool:
        current = self.states.get(state.akey)
        if (current.rev if current else 0) != state.rev:
            return False
        kept = {line.txid: line for line in lines}
        self.states[state.akey] = StoredState(state.akey, user_id, state.rev + 1, kept, set(accounts))
        return True


class MemoryAccounts:
    """Accounts: app accounts, banks, links and what the connector said, in dicts."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.banks: dict[str, Bank] = {}
        self.links: dict[str, Link] = {}
        self.details: dict[str, BankAccountDetails] = {}

    async def get(self, account_id: str) -> Account | None:
        return self.accounts.get(account_id)

    async def list_accounts(self, user_id: str) -> list[Account]:
        return sorted(
            (a for a in self.accounts.values() if a.user_id == user_id and not a.deleted), key=lambda a: a.id
        )

    async def insert(self, account: Account) -> Account:
        return self.accounts.setdefault(account.id, replace(account, deleted=False, manual={}, months=()))

    async def revive(self, account: Account) -> Account:
        current = self.accounts[account.id]
        if current.deleted and current.generation == account.generation:
            self.accounts[account.id] = replace(
                current,
                deleted=False,
                generation=current.generation + 1,
                balance=AccountBalance(bank_balance=current.balance.bank_balance),
            )
        return self.accounts[account.id]

    async def mark_deleted(self, account_id: str) -> bool:
        current = self.accounts.get(account_id)
        if current is None or current.deleted:
            return False
        self.accounts[account_id] = replace(
            current,
            deleted=True,
            manual={},
            months=(),
            balance=AccountBalance(bank_balance=current.balance.bank_balance),
        )
        return True

    async def store_balance(self, account: Account, rev: int, stored: BalanceStored) -> bool:
        current = self.accounts.get(account.id)
        if current is None or current.generation != account.generation or current.balance.rev != rev:
            return False
        latest, state, check = stored.latest, stored.state, stored.check
        assert latest.balance_cents is not None
        coming = latest.coming_cents
        self.accounts[account.id] = replace(
            current,
            balance=AccountBalance(
                bank_balance=format_amount(amount_of(latest.balance_cents)),
                bank_coming=format_amount(amount_of(coming)) if coming is not None else None,
                bank_balance_at=latest.at,
                checked_at=stored.at if check else None,
                computed_balance=format_amount(amount_of(check.computed_cents)) if check else None,
                balance_gap=format_amount(amount_of(check.gap_cents)) if check else None,
                opening_cents=(
                    state.opening_cents if state.opening_cents is not None else current.balance.opening_cents
                ),
                sync_run_id=latest.sync,
                rev=state.rev,
                lines_rev=stored.lines_rev,
                alarm=state.alarm,
            ),
        )
        return True

    async def count_balance_gaps(self) -> int:
        return sum(1 for a in self.accounts.values() if a.balance.alarm)

    def _change(self, account_id: str, **changes: object) -> None:
        current = self.accounts.get(account_id)
        if current is not None:
            self.accounts[account_id] = replace(current, **changes)  # type: ignore[arg-type]

    async def add_months(self, account_id: str, months: Iterable[str]) -> None:
        current = self.accounts.get(account_id)
        if current is not None and current.months is not None:
            self._change(account_id, months=tuple(sorted({*current.months, *months})))

    async def mark_announced(self, account_id: str, generation: int) -> None:
        self._change(account_id, announced=generation)

    async def add_sources(self, account_id: str, akeys: Iterable[str]) -> None:
        current = self.accounts.get(account_id)
        if current is not None:
            self._change(
                account_id, sources=(*current.sources, *(k for k in akeys if k not in current.sources))
            )

    async def add_manual(self, account_id: str, op_id: str, date: dt.date, amount: Decimal) -> None:
        current = self.accounts.get(account_id)
        if current is not None:
            self._change(account_id, manual={**current.manual, op_id: amount})

    async def remove_manual(self, account_id: str, op_id: str) -> None:
        current = self.accounts.get(account_id)
        if current is not None:
            self._change(account_id, manual={k: v for k, v in current.manual.items() if k != op_id})

    async def rename(self, account_id: str, naming: AccountNaming) -> None:
        current = self.accounts.get(account_id)
        if current is None:
            return
        balance = current.balance
        if naming.bank_balance is not None:
            balance = replace(balance, bank_balance=naming.bank_balance)
        self.accounts[account_id] = replace(
            current, name=naming.name or current.name, iban=naming.iban or current.iban, balance=balance
        )

    async def put_details(self, details: BankAccountDetails) -> None:
        self.details[details.akey] = details

    async def get_details(self, akey: str) -> BankAccountDetails | None:
        return self.details.get(akey)

    async def ensure_bank(self, user_id: str, bank_id: str, name: str) -> None:
        self.banks.setdefault(f"{user_id}:{bank_id}", Bank(id=bank_id, name=name))

    async def list_banks(self, user_id: str) -> list[Bank]:
        return [bank for key, bank in sorted(self.banks.items()) if key.startswith(f"{user_id}:")]

    async def get_link(self, akey: str) -> Link | None:
        return self.links.get(akey)

    async def put_link(self, link: Link) -> None:
        self.links[link.akey] = link

    async def list_links(self, user_id: str) -> list[Link]:
        return [link for _, link in sorted(self.links.items()) if link.user_id == user_id]


@dataclass
class _Stored:
    op: StoredOperation
    bank_status: str | None = None
    refused: set[str] = field(default_factory=set)
    src_rev: int = 0


@dataclass(frozen=True)
class _Entry:
    at: dt.datetime
    item: OperationCategorized


class MemoryOperations:
    """Operations (and, with `sheets`, the categorisations filed for them), in a dict."""

    def __init__(self, sheets: MemoryCategorizations) -> None:
        self.stored: dict[str, _Stored] = {}
        self.sheets = sheets
        sheets.operations = self

    def _shown(self, stored: _Stored) -> StoredOperation:
        op = stored.op
        month = month_of(op.operation.date)
        names = {op.filed or sheet_id(op.account_id, month), sheet_id(op.account_id, month)}
        entries = sorted(
            (e for name in names for e in self.sheets.entries.get(name, ()) if e.item.operation_id == op.id),
            key=lambda e: e.at,
        )
        best: OperationCategorized | None = None
        rank = (
            0,
            0,
            -1,
        )  # an operation's own, never categorised (see adapters.mongo.CATEGORIZATION_DEFAULTS)
        for entry in (e for e in entries if e.item.user_id == op.user_id):
            item = entry.item
            mine = categorization_rank(item.source, item.rules_version, item.choice_version)
            if mine >= rank:
                best, rank = item, mine
        if best is None:
            return op
        by = (
            CategorizedBy(
                source=best.source, payee_id=best.payee.id if best.payee else None, keyword=best.keyword
            )
            if best.source is not None
            else None
        )
        shown = op.operation.model_copy(
            update={
                "payee": best.payee,
                "category": best.category,
                "categorized_by": by,
                "transfer": best.transfer,
            }
        )
        return replace(op, operation=shown)

    async def shown(self, op_id: str) -> StoredOperation | None:
        stored = self.stored.get(op_id)
        return None if stored is None else self._shown(stored)

    async def shown_many(self, ids: Iterable[str]) -> dict[str, StoredOperation]:
        return {op_id: self._shown(self.stored[op_id]) for op_id in set(ids) if op_id in self.stored}

    async def manual_candidates(self, account_id: str, ids: Iterable[str]) -> dict[str, ManualCandidate]:
        found: dict[str, ManualCandidate] = {}
        for op_id in ids:
            stored = self.stored.get(op_id)
            if stored is None or stored.op.operation.source != "manual" or stored.op.account_id != account_id:
                continue
            shown = stored.op.operation
            found[op_id] = ManualCandidate(
                op_id, shown.date, Decimal(shown.amount), stored.op.reconciled_by, frozenset(stored.refused)
            )
        return found

    def _filed(self, op: StoredOperation) -> StoredOperation:
        return replace(op, filed=sheet_id(op.account_id, month_of(op.operation.date)))

    async def insert_bank(self, origin: BankOrigin, lines: Sequence[Line]) -> None:
        for line in lines:
            assert line.op_id is not None
            if line.op_id not in self.stored:
                self.stored[line.op_id] = _Stored(self._filed(origin.stored(line)), src_rev=origin.rev)

    async def write_bank(
        self,
        origin: BankOrigin,
        updated: Sequence[Line],
        before: Mapping[str, StoredOperation],
        deleted: Sequence[str],
    ) -> BankWrite:
        superseded: list[str] = []
        missing: list[str] = []
        for line in updated:
            assert line.op_id is not None
            current = self.stored.get(line.op_id)
            bank = origin.operation(line).model_dump(
                exclude={"payee", "category", "categorized_by", "transfer"}
            )
            if current is None:
                missing.append(line.op_id)
            elif current.src_rev < origin.rev:
                current.op = replace(current.op, operation=current.op.operation.model_copy(update=bank))
                current.src_rev = origin.rev
            elif current.src_rev > origin.rev or current.op.operation.model_dump(include=set(bank)) != bank:
                superseded.append(line.op_id)
        for op_id in deleted:
            gone = self.stored.get(op_id)
            if gone is not None and gone.src_rev >= origin.rev:
                superseded.append(op_id)
            else:
                self.stored.pop(op_id, None)
        return BankWrite(tuple(superseded), tuple(missing))

    def _match(self, manual_id: str, match: LineMatch) -> None:
        stored = self.stored[manual_id]
        stored.op = reconciled(stored.op, match)
        stored.bank_status = match.status

    async def reconcile(self, manual_id: str, match: LineMatch, label: str) -> bool:
        stored = self.stored.get(manual_id)
        if stored is None or stored.op.reconciled_by not in (None, match.ref):
            return False
        self._match(manual_id, match)
        return True

    async def rereconcile(self, manual_id: str, match: LineMatch, label: str) -> None:
        if manual_id in self.stored:
            self._match(manual_id, match)

    async def release(self, manual_id: str, ref: str, label: str) -> bool:
        stored = self.stored.get(manual_id)
        if stored is None or stored.op.reconciled_by != ref:
            return False
        stored.op, stored.bank_status = released(stored.op), None
        return True

    async def refuse_line(self, op_id: str, ref: str) -> None:
        if op_id in self.stored:
            self.stored[op_id].refused.add(ref)

    async def insert_manual(self, op: StoredOperation) -> bool:
        if op.id in self.stored:
            return False
        self.stored[op.id] = _Stored(self._filed(op))
        return True

    async def edit_manual(self, op_id: str, edit: ManualEdit, *, unreconciled: bool) -> bool:
        stored = self.stored.get(op_id)
        if stored is None or stored.op.operation.source != "manual":
            return False
        if unreconciled and stored.op.reconciled_by is not None:
            return False
        stored.op = edited(stored.op, edit)
        return True

    async def delete_manual(self, op_id: str) -> bool:
        stored = self.stored.get(op_id)
        if stored is None or stored.op.operation.source != "manual" or stored.op.reconciled_by is not None:
            return False
        del self.stored[op_id]
        return True

    async def delete_account(self, account_id: str) -> int:
        gone = [op_id for op_id, s in self.stored.items() if s.op.account_id == account_id]
        for op_id in gone:
            del self.stored[op_id]
        for name in [n for n in self.sheets.entries if n.rsplit(":", 1)[0] == account_id]:
            del self.sheets.entries[name]
        return len(gone)

    async def search(
        self,
        user_id: str,
        accounts: Sequence[Account],
        query: OperationQuery,
        *,
        date_from: dt.date | None,
        date_to: dt.date | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> OperationPage:
        ids = {account.id for account in accounts}
        taken = []
        for stored in self.stored.values():
            op = self._shown(stored)
            shown = op.operation
            if op.user_id != user_id or shown.account_id not in ids:
                continue
            if (date_from and shown.date < date_from) or (date_to and shown.date > date_to):
                continue
            if after is not None and (shown.date.isoformat(), shown.id) >= after:
                continue
            searchable = Searchable(
                words=words_of(shown.memo, shown.label),
                cents=cents(Decimal(shown.amount)),
                status=shown.status,
                source=shown.source,
                reconciled=shown.reconciled,
                category=shown.category,
                payee_id=shown.payee.id if shown.payee else None,
            )
            if query.takes(searchable):
                taken.append(shown)
        taken.sort(key=lambda op: (op.date.isoformat(), op.id), reverse=True)
        more = len(taken) > limit
        items = taken[:limit]
        return OperationPage(items, (items[-1].date.isoformat(), items[-1].id) if more and items else None)

    async def balances(self, user_id: str) -> dict[str, int]:
        totals: dict[str, int] = {}
        for stored in self.stored.values():
            shown = stored.op.operation
            if stored.op.user_id == user_id and shown.status == "booked":
                totals[shown.account_id] = totals.get(shown.account_id, 0) + cents(Decimal(shown.amount))
        return totals

    async def booked_cents(self, account_id: str) -> int:
        total = 0
        for stored in self.stored.values():
            shown = stored.op.operation
            if shown.account_id != account_id or shown.status != "booked":
                continue
            if shown.source == "bank" or (shown.reconciled and stored.bank_status != "pending"):
                total += cents(Decimal(shown.amount))
        return total


class MemoryCategorizations:
    """CategorizationFiling: each sheet a list of entries, in the order filed."""

    def __init__(self) -> None:
        self.entries: dict[str, list[_Entry]] = {}
        self.operations: MemoryOperations | None = None

    async def filed_in(self, user_id: str, account_id: str, op_ids: Sequence[str]) -> dict[str, str]:
        assert self.operations is not None
        found: dict[str, str] = {}
        for op_id in op_ids:
            stored = self.operations.stored.get(op_id)
            if stored is not None and stored.op.user_id == user_id and stored.op.account_id == account_id:
                found[op_id] = stored.op.filed or sheet_id(account_id, month_of(stored.op.operation.date))
        return found

    async def file(
        self, items: Sequence[OperationCategorized], sheets: Mapping[str, str], at: dt.datetime
    ) -> int:
        filed = 0
        for item in items:
            name = sheets.get(item.operation_id)
            if name is not None:
                self.entries.setdefault(name, []).append(_Entry(at, item))
                filed += 1
        return filed


class MemoryAnnouncements:
    """Announcements: what was published, in order."""

    def __init__(self) -> None:
        self.published: list[Keyed] = []

    async def publish(self, events: Sequence[Keyed]) -> None:
        self.published.extend(events)


class MemoryReplayStatuses:
    """ReplayStatuses: one ReplayStatus per replay id, with the run that holds it."""

    def __init__(self) -> None:
        self.statuses: dict[str, ReplayStatus] = {}
        self.runs: dict[str, str | None] = {}

    async def requested(self, status: ReplayStatus) -> bool:
        if status.replay_id in self.statuses:
            return False
        self.statuses[status.replay_id] = status
        self.runs[status.replay_id] = None
        return True

    async def get(self, replay_id: str) -> ReplayStatus | None:
        return self.statuses.get(replay_id)

    async def claim(self, request: ReplayRequested, claim: ReplayClaim) -> ReplayStatus | None:
        found = self.statuses.get(request.replay_id) or ReplayStatus(
            request.replay_id,
            request.user_id,
            request.aggregator_account_id,
            request.since,
            requested_at=request.requested_at,
        )
        if found.state == "succeeded":
            return None
        claimed = replace(
            found,
            state="running",
            runner=claim.runner,
            started_at=claim.at,
            finished_at=None,
            processed=0,
            total=None,
            result=None,
            error=None,
            partition=claim.partition,
            offset=claim.offset,
            attempts=found.attempts + 1,
        )
        self.statuses[request.replay_id] = claimed
        self.runs[request.replay_id] = claim.run
        return claimed

    async def progress(self, replay_id: str, run: str, processed: int, total: int | None) -> bool:
        if replay_id not in self.statuses or self.runs.get(replay_id) != run:
            return False
        self.statuses[replay_id] = replace(self.statuses[replay_id], processed=processed, total=total)
        return True

    async def finish(self, replay_id: str, run: str | None, outcome: ReplayStatus) -> bool:
        if replay_id not in self.statuses or self.runs.get(replay_id) != run:
            return False
        self.statuses[replay_id] = replace(
            self.statuses[replay_id],
            state=outcome.state,
            finished_at=outcome.finished_at,
            processed=outcome.processed,
            total=outcome.total,
            result=outcome.result,
            error=outcome.error,
        )
        return True

    async def erase_user(self, user_id: str) -> int:
        gone = [k for k, status in self.statuses.items() if status.user_id == user_id]
        for replay_id in gone:
            del self.statuses[replay_id]
            del self.runs[replay_id]
        return len(gone)


class MemoryReplayRequests:
    """ReplayRequests: what was published, with its correlation id; `fail` makes the next publish fail."""

    def __init__(self) -> None:
        self.published: list[tuple[ReplayRequested, str]] = []
        self.fail: Exception | None = None

    async def publish(self, request: ReplayRequested, correlation_id: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.published.append((request, correlation_id))
