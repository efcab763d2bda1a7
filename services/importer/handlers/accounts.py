"""What the API asks: accounts, links, banks, a user's operations, and the manual operations the user
adds, changes, deletes or unreconciles."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal

from services.importer.domain.accounts import Account, Link, account_view, manual_account
from services.importer.domain.events import account_deleted_event, operation_event
from services.importer.domain.identities import time_ordered_id
from services.importer.domain.lines import AccountLines, ImportMode, Line
from services.importer.domain.operations import (
    OperationPage,
    OperationQuery,
    StoredOperation,
    edited,
    manual_edit,
    manual_operation,
    refusal_of_change,
    released,
)
from services.importer.handlers.intake import CONFLICT_RETRIES, Conflict, Importer, OperationRefused
from shared.contract.envelope import account_key, deterministic_event_id
from shared.contract.payloads import AppAccount, Bank, Operation
from shared.logging import get_logger
from shared.money import parse_amount
from shared.periods import month_of

log = get_logger(__name__)


class UnknownAccount(Exception):
    pass


class CurrencyMismatch(Exception):
    pass


class UnknownOperation(Exception):
    pass


def _without_refs(line: Line, gone: set[str]) -> Line:
    return replace(
        line,
        claimed_by=None if line.claimed_by in gone else line.claimed_by,
        claims=None if line.claims in gone else line.claims,
    )


def _refuse(op: StoredOperation, *, moves: bool, reconciled: bool | None = None) -> None:
    shown = op.operation
    code = refusal_of_change(
        shown.source, shown.reconciled if reconciled is None else reconciled, moves=moves
    )
    if code == "bank_operation":
        raise OperationRefused(code, "A bank operation is the bank's: only a manual one can change.")
    if code is not None:
        raise OperationRefused(
            code,
            "This manual operation is reconciled with a bank line: undo the match "
            "(DELETE .../reconciliation) before changing its date or amount, or deleting it.",
        )


class AccountService:
    """The API's requests, on the import path's stores, locks and announcements (`importer`)."""

    def __init__(self, importer: Importer) -> None:
        self.importer = importer
        self.accounts = importer.accounts
        self.operations = importer.operations
        self.announcements = importer.announcements

    async def own_account(self, user_id: str, account_id: str) -> Account:
        account = await self.accounts.get(account_id)
        if account is None or account.user_id != user_id or account.deleted:
            raise UnknownAccount(account_id)
        return account

    async def list_accounts(self, user_id: str) -> list[AppAccount]:
        accounts = await self.accounts.list_accounts(user_id)
        balances = await self.operations.balances(user_id) if accounts else {}
        return [account_view(account, balances.get(account.id, 0)) for account in accounts]

    async def list_banks(self, user_id: str) -> list[Bank]:
        return await self.accounts.list_banks(user_id)

    async def list_links(self, user_id: str) -> list[Link]:
        return await self.accounts.list_links(user_id)

    async def create_account(self, user_id: str, name: str, currency: str, correlation_id: str) -> AppAccount:
        account = manual_account(time_ordered_id(), user_id, name, currency)
        await self.accounts.insert(account)
        await self.importer.announce_account(account, correlation_id)
        return account_view(account, 0)

    async def delete_account(self, user_id: str, account_id: str, correlation_id: str) -> None:
        """Deletes the account and its operations; links stay, so a replay or a sync brings it back."""
        account = await self.accounts.get(account_id)
        if account is None or account.user_id != user_id:
            raise UnknownAccount(account_id)
        sources = sorted(set(account.sources))
        async with self.importer.locks.hold(*sources):
            await self.accounts.mark_deleted(account_id)
            for akey in sources:
                await self._forget_lines(akey, account_id)
            removed = await self.operations.delete_account(account_id)
        if account.balance.alarm:
            await self.importer.recount_gaps()  # a deleted account is in alarm no more
        await self.announcements.publish([account_deleted_event(account, removed, correlation_id)])
        log.info("account_deleted", account_id=account_id, operations=removed, sources=sources)

    async def _forget_lines(self, akey: str, account_id: str) -> None:
        """Drops the lines that went to this account from the dedup state, so they import again."""
        states = self.importer.states
        for _ in range(CONFLICT_RETRIES):
            stored = await states.load(akey)
            if stored.rev == 0:
                return
            gone = {t for t, line in stored.lines.items() if line.account_id == account_id}
            if not gone:
                return
            kept = AccountLines(
                {t: _without_refs(line, gone) for t, line in stored.lines.items() if t not in gone}
            )
            if await states.save(stored, stored.user_id, kept.lines.values(), stored.accounts - {account_id}):
                return
        raise Conflict(akey)

    async def put_link(
        self, user_id: str, aggregator_account_id: str, target_account_id: str | None, mode: ImportMode
    ) -> Link:
        if target_account_id is not None:
            await self.own_account(user_id, target_account_id)
        elif mode is ImportMode.RECONCILE:
            raise UnknownAccount("reconcile mode needs a target account")
        link = Link(
            akey=account_key(user_id, aggregator_account_id),
            user_id=user_id,
            aggregator_account_id=aggregator_account_id,
            target_account_id=target_account_id,
            import_mode=mode,
            updated_at=dt.datetime.now(dt.UTC),
        )
        await self.accounts.put_link(link)
        return link

    async def add_manual_operation(
        self,
        user_id: str,
        account_id: str,
        *,
        date: dt.date,
        amount: Decimal,
        currency: str,
        label: str,
        correlation_id: str,
        idempotency_key: str | None,
    ) -> tuple[Operation, bool]:
        """Adds a manual operation and announces `operation.created`; returns it, and whether it is new
        (with an `idempotency_key` already used: the operation it created)."""
        account = await self.own_account(user_id, account_id)
        if currency != account.currency:
            raise CurrencyMismatch(f"the account is in {account.currency}, not {currency}")
        op_id = (
            deterministic_event_id("manual-operation", user_id, account_id, idempotency_key)
            if idempotency_key
            else time_ordered_id()
        )
        existing = await self.operations.shown(op_id)
        if existing is not None:
            return existing.operation, False
        op = manual_operation(
            op_id, user_id, account_id, date=date, amount=amount, currency=currency, label=label
        )
        # the candidate first: a manual operation reconcile mode cannot see would be a silent miss
        await self.accounts.add_manual(account_id, op_id, date, amount)
        await self.accounts.add_months(account_id, [month_of(date)])
        if not await self.operations.insert_manual(op):
            found = await self.operations.shown(op_id)
            assert found is not None
            return found.operation, False
        created = operation_event(
            "operation.created",
            user_id,
            op.operation,
            correlation_id=correlation_id,
            event_id=deterministic_event_id("operation.created", op_id),
        )
        await self.announcements.publish([created])
        return op.operation, True

    # operations: searching, and what the user changes

    async def search_operations(
        self,
        user_id: str,
        account_id: str | None,
        query: OperationQuery,
        *,
        date_from: dt.date | None,
        date_to: dt.date | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> OperationPage:
        """A page of one account's operations (`account_id`), or of every account of the user (None)."""
        if account_id is not None:
            accounts = [await self.own_account(user_id, account_id)]
        else:
            accounts = await self.accounts.list_accounts(user_id)
        return await self.operations.search(
            user_id, accounts, query, date_from=date_from, date_to=date_to, after=after, limit=limit
        )

    async def operations_of(
        self,
        account: Account,
        query: OperationQuery,
        *,
        date_from: dt.date | None,
        date_to: dt.date | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> OperationPage:
        """A page of the operations of an account already read (`own_account`): the export's pages."""
        return await self.operations.search(
            account.user_id, [account], query, date_from=date_from, date_to=date_to, after=after, limit=limit
        )

    async def own_operation(self, user_id: str, account_id: str, op_id: str) -> StoredOperation:
        """The operation of this user's account, as the app shows it."""
        await self.own_account(user_id, account_id)
        op = await self.operations.shown(op_id)
        if op is None or op.user_id != user_id or op.account_id != account_id:
            raise UnknownOperation(op_id)
        return op

    async def edit_manual_operation(
        self,
        user_id: str,
        account_id: str,
        op_id: str,
        *,
        date: dt.date | None,
        amount_text: str | None,
        currency: str | None,
        label: str | None,
        correlation_id: str,
    ) -> Operation:
        """Changes what is given of a manual operation; announces `operation.updated` (a request that
        changes nothing announces its latest state again, under the same event id). The amount is a
        client's decimal string, exact in the currency given, else in the account's (`InvalidAmount`)."""
        account = await self.own_account(user_id, account_id)
        amount = None if amount_text is None else parse_amount(amount_text, currency or account.currency)
        if currency is not None and currency != account.currency:
            raise CurrencyMismatch(f"the account is in {account.currency}, not {currency}")
        # the import path's locks: the account's document (the store may rewrite it whole on an update)
        async with self.importer.locks.hold(*account.sources), self.importer.op_locks.hold(op_id):
            op = await self.own_operation(user_id, account_id, op_id)
            edit = manual_edit(op, date=date, amount=amount, currency=currency, label=label)
            _refuse(op, moves=edit.moves)
            if not edit.empty:
                if edit.moves:  # the candidate first: reconcile mode must see what the operation now is
                    new = edited(op, edit).operation
                    new_amount = edit.amount if edit.amount is not None else Decimal(new.amount)
                    await self.accounts.add_manual(account_id, op_id, new.date, new_amount)
                    await self.accounts.add_months(account_id, [month_of(new.date)])
                if not await self.operations.edit_manual(op_id, edit, unreconciled=edit.moves):
                    _refuse(op, moves=edit.moves, reconciled=True)  # a bank line reconciled it meanwhile
                op = edited(op, edit)
        updated = operation_event(
            "operation.updated",
            user_id,
            op.operation,
            correlation_id=correlation_id,
            event_id=deterministic_event_id(
                "operation.updated", op_id, "edit", str(op.edits), str(account.generation)
            ),
        )
        await self.announcements.publish([updated])
        return op.operation

    async def delete_manual_operation(
        self, user_id: str, account_id: str, op_id: str, correlation_id: str
    ) -> None:
        """Deletes a manual operation and announces `operation.deleted`."""
        account = await self.own_account(user_id, account_id)
        async with self.importer.locks.hold(*account.sources), self.importer.op_locks.hold(op_id):
            op = await self.own_operation(user_id, account_id, op_id)
            _refuse(op, moves=True)
            if not await self.operations.delete_manual(op_id):
                _refuse(op, moves=True, reconciled=True)  # a bank line reconciled it meanwhile
            await self.accounts.remove_manual(account_id, op_id)
        deleted = operation_event(
            "operation.deleted",
            user_id,
            op.operation,
            correlation_id=correlation_id,
            event_id=deterministic_event_id("operation.deleted", op_id, str(account.generation)),
        )
        await self.announcements.publish([deleted])
        log.info("manual_operation_deleted", user_id=user_id, account_id=account_id, operation_id=op_id)

    async def undo_reconciliation(
        self, user_id: str, account_id: str, op_id: str, correlation_id: str
    ) -> tuple[Operation, Operation | None]:
        """Undoes the match of a reconciled manual operation (see Importer.undo_reconciliation); returns
        it as it now is, and the bank line's own operation."""
        account = await self.own_account(user_id, account_id)
        op = await self.own_operation(user_id, account_id, op_id)
        ref = op.reconciled_by
        if op.operation.source != "manual" or not op.operation.reconciled or ref is None:
            raise OperationRefused(
                "not_reconciled", f"Operation {op_id!r} is not reconciled with a bank line."
            )
        bank = await self.importer.undo_reconciliation(account, op_id, ref, correlation_id)
        manual = await self.operations.shown(op_id)
        return (manual or released(op)).operation, bank.operation if bank else None
