"""What raw bank lines and balances do, and undoing a reconciliation: load, decide, store, announce.

The import path, for one aggregator account at a time (its lines are ordered on one partition):
1. load the account's dedup state (one document) and resolve where its lines go (link, account);
2. decide with `domain.lines.apply`: which operations appear, change, go, which manual ones are reconciled;
3. write the operations (new ones in one bulk insert, changed ones by id), then announce the events
   (deterministic ids), then store the new state with a compare-and-set on its revision.
A crash anywhere before step 3 ends leaves the state as it was: the batch is read again, decided the
same way, and its writes and events are repeated with the same ids. A concurrent writer (a replay
in another process) makes the compare-and-set fail: the batch is decided again on the newer state.

After the lines of a successful sync, the raw topic carries the bank's balance (`account.synced`). A
batch is taken per aggregator account in its order, cut into runs of lines and the balances after them
(`domain.balances.segments`): each run of lines is imported, then its balances are checked against the
app account the lines go to (`domain.balances.after_reports`: one aggregation of its booked operations,
one compare-and-set of the account, one announcement of `account.balance_checked`), so a balance always
meets exactly the lines that came before it. A gap that is not zero is an alarm: a warning, the gauge
`banksync_balance_gap_accounts` (recounted when an account goes in or out of alarm) and the event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import Gauge

from services.importer.domain.accounts import Account, bank_account
from services.importer.domain.balances import (
    BalanceCheck,
    BalanceStored,
    after_reports,
    amount_of,
    due,
    in_key_order,
    segments,
    unchanged_since_check,
)
from services.importer.domain.events import (
    Announcer,
    account_created_event,
    balance_checked_event,
)
from services.importer.domain.identities import auto_account_id, line_ref
from services.importer.domain.intake import (
    FORGET_AFTER,
    ImportResult,
    ImportStats,
    RawBalance,
    RawLine,
    RawRecord,
    causes,
    is_balance,
    observation_of,
    problem_with,
)
from services.importer.domain.lines import (
    Changes,
    ImportMode,
    Line,
    ManualCandidate,
    Observation,
    Target,
    apply,
)
from services.importer.domain.operations import (
    BankOrigin,
    StoredOperation,
    match_of,
    reconciled,
    released,
)
from services.importer.ports import Accounts, Announcements, LineStates, Locks, Operations
from shared.contract.envelope import account_key
from shared.logging import get_logger
from shared.money import format_amount
from shared.periods import month_of

log = get_logger(__name__)

CONFLICT_RETRIES = 8

BALANCE_GAP_ACCOUNTS = Gauge(
    "banksync_balance_gap_accounts",
    "App accounts whose latest balance check found a gap between the bank's balance and the computed one",
)


class UnknownTarget(Exception):
    """The link names an app account that does not exist (or is another user's)."""


class Conflict(Exception):
    """Another writer changed the same account meanwhile: decide again on the newer state."""


class OperationRefused(Exception):
    """A change the user may not make; `code` is what the API answers (409)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def log_imported(
    akey: str, user_id: str, lines: Sequence[RawLine], changes: Changes, correlation: Mapping[str, str]
) -> None:
    """One log line per sync run in the batch: a batch may join the tail of one sync and the head of
    the next, and `grep <correlation id>` must find each of them."""
    runs = Counter(raw.event.correlationid for raw in lines)
    imported = Counter(correlation.get(line.txid) for line in changes.imported)
    updated = Counter(correlation.get(line.txid) for line in changes.updated)
    updated.update(correlation.get(line.txid) for _, line in changes.rereconciled + changes.unreconciled)
    deleted = Counter(correlation.get(line.txid) for _, line in changes.deleted)
    reconciled_ = Counter(correlation.get(line.txid) for _, line in changes.reconciled)
    for correlation_id, count in runs.items():
        log.info(
            "lines_imported",
            akey=akey,
            user_id=user_id,
            correlation_id=correlation_id,
            lines=count,
            imported=imported[correlation_id],
            updated=updated[correlation_id],
            deleted=deleted[correlation_id],
            reconciled=reconciled_[correlation_id],
        )


class Importer:
    """The one import path, for the consumer, the replay and the ops command alike.

    `locks`: one writer of an aggregator account's dedup state at a time (consumer, replay, deletion);
    `op_locks`: one writer of an operation at a time (a manual operation the lines of two aggregator
    accounts may reconcile)."""

    def __init__(
        self,
        states: LineStates,
        operations: Operations,
        accounts: Accounts,
        announcements: Announcements,
        *,
        locks: Locks,
        op_locks: Locks,
        concurrency: int = 8,
        today: Callable[[], dt.date] = lambda: dt.datetime.now(dt.UTC).date(),
    ) -> None:
        self.states = states
        self.operations = operations
        self.accounts = accounts
        self.announcements = announcements
        self.locks = locks
        self.op_locks = op_locks
        self.today = today
        self._semaphore = asyncio.Semaphore(concurrency)

    # -- batches

    async def import_records(self, records: Sequence[RawRecord]) -> ImportResult:
        """Imports lines and checks balances of any accounts: the records of one account in their order
        (see `import_key`), accounts concurrently."""
        result = ImportResult()
        valid: list[RawRecord] = []
        for raw in records:
            problem = problem_with(raw)
            if problem is not None:
                result.rejected.append((raw, problem))
            else:
                valid.append(raw)
        groups = in_key_order(valid, lambda raw: raw.akey)

        async def one(akey: str, group: list[RawRecord]) -> ImportStats:
            async with self._semaphore:
                return await self.import_key(akey, group)

        outcomes = await asyncio.gather(*(one(k, g) for k, g in groups.items()), return_exceptions=True)
        failure: BaseException | None = None
        for (_akey, group), outcome in zip(groups.items(), outcomes, strict=True):
            if isinstance(outcome, UnknownTarget):
                result.rejected += [(raw, f"unknown account: {outcome}") for raw in group]
            elif isinstance(outcome, BaseException):
                failure = failure or outcome
            else:
                result.stats.add(outcome)
        if failure is not None:
            raise failure
        return result

    async def import_key(self, akey: str, records: Sequence[RawRecord]) -> ImportStats:
        """One aggregator account's records in their order: each run of lines, then the balances that
        follow it, so that each balance meets exactly the lines that came before it."""
        stats = ImportStats()
        for segment in segments(records, is_balance):
            lines = [raw for raw in segment.lines if isinstance(raw, RawLine)]
            balances = [raw for raw in segment.balances if isinstance(raw, RawBalance)]
            if lines:
                stats.add(await self.import_account(akey, lines))
            if balances:
                stats.add(await self.check_balances(akey, balances))
        return stats

    async def import_account(self, akey: str, lines: Sequence[RawLine]) -> ImportStats:
        for _ in range(CONFLICT_RETRIES):
            try:
                async with self.locks.hold(akey):
                    return await self._import_once(akey, lines)
            except Conflict:
                log.info("import_conflict_retrying", akey=akey)
                await asyncio.sleep(0.05)
        raise Conflict(f"{akey}: too many concurrent writers")

    async def _import_once(self, akey: str, lines: Sequence[RawLine]) -> ImportStats:
        first = lines[0]
        stored = await self.states.load(akey)
        target, account = await self._target(first)
        observations = [observation_of(raw) for raw in lines]
        work = stored.account_lines()
        if target.mode is ImportMode.RECONCILE:
            work.manual = await self._manual_candidates(account, observations)
        after, changes = apply(work, observations, target)
        correlation = causes(observations, [raw.event.correlationid for raw in lines], after)
        after.forget(self.today() - FORGET_AFTER)
        stats = ImportStats(
            lines=len(lines),
            imported=len(changes.imported),
            updated=len(changes.updated) + len(changes.rereconciled) + len(changes.unreconciled),
            deleted=len(changes.deleted),
            reconciled=len(changes.reconciled),
        )
        if after.lines == stored.lines:
            stats.unchanged = len(lines)
            return stats  # a redelivery or a replay of what is known: nothing to do

        await self._store(first, target, account, changes, correlation, stored.rev + 1)
        accounts = set(stored.accounts) | {line.account_id for line in after.lines.values()}
        for account_id in sorted(accounts - stored.accounts):
            await self.accounts.add_sources(account_id, [akey])
        if not await self.states.save(stored, first.data.user_id, after.lines.values(), accounts):
            raise Conflict(akey)
        if not changes.empty:
            log_imported(akey, first.data.user_id, lines, changes, correlation)
        return stats

    # -- balances

    async def check_balances(self, akey: str, balances: Sequence[RawBalance]) -> ImportStats:
        """Checks consecutive `account.synced` of one aggregator account (no line between them)."""
        for _ in range(CONFLICT_RETRIES):
            try:
                async with self.locks.hold(akey):
                    return await self._check_once(balances)
            except Conflict:
                log.info("balance_conflict_retrying", akey=akey)
                await asyncio.sleep(0.05)
        raise Conflict(f"{akey}: too many concurrent writers")

    async def _check_once(self, balances: Sequence[RawBalance]) -> ImportStats:
        stats = ImportStats(balances=len(balances))
        reports = [raw.report() for raw in balances]
        if not any(report.balance_cents is not None for report in reports):
            return stats  # the aggregator gave no balance: nothing to check
        target, account = await self._target(balances[0])
        before = account.balance.state()
        fresh = due(before, reports)
        if not fresh:
            return stats  # older than what the account has: a redelivery or a replay of what is known
        checked = any(report.checked for report in fresh)  # else no aggregation: nothing to check
        lines_rev = (await self.states.load(target.akey)).rev if checked else None
        if checked and unchanged_since_check(account.balance, fresh, lines_rev):
            # the same bank balance and the same lines as at the last check: its outcome stands, and
            # the night does not re-add every account's operations when nothing moved
            return stats
        booked = await self.operations.booked_cents(target.account_id) if checked else 0
        after, latest, checks = after_reports(before, booked, fresh)
        assert latest is not None
        check = checks[-1] if checks and checks[-1].report is latest else None
        stored = BalanceStored(after, latest, check, dt.datetime.now(dt.UTC), lines_rev)
        if not await self.accounts.store_balance(account, before.rev, stored):
            raise Conflict(f"balance of {target.account_id}")
        by_sync = {raw.data.sync_run_id: raw for raw in balances}
        for done in checks:
            self._log_check(by_sync[done.report.sync], account, done)
        if after.alarm != before.alarm:
            await self.recount_gaps()  # in or out of alarm: the gauge says so before the event does
        if checks:
            events = [balance_checked_event(by_sync[c.report.sync], account, c) for c in checks]
            key = account_key(account.user_id, account.id)
            await self.announcements.publish([(key, event) for event in events])
        stats.checks = len(checks)
        return stats

    def _log_check(self, raw: RawBalance, account: Account, check: BalanceCheck) -> None:
        figures = {
            "user_id": raw.data.user_id,
            "account_id": account.id,
            "aggregator_account_id": raw.data.aggregator_account_id,
            "bank": raw.data.bank.id,
            "correlation_id": raw.event.correlationid,
            "bank_balance": format_amount(amount_of(check.bank_cents)),
            "computed": format_amount(amount_of(check.computed_cents)),
            "gap": format_amount(amount_of(check.gap_cents)),
        }
        if check.alarm:
            log.warning("balance_gap", **figures)
        else:
            log.info("balance_checked", first=check.first, **figures)

    async def recount_gaps(self) -> int:
        """Sets the gauge from the store (when an account goes in or out of alarm, and at start)."""
        count = await self.accounts.count_balance_gaps()
        BALANCE_GAP_ACCOUNTS.set(count)
        return count

    # -- where lines go

    async def _target(self, raw: RawRecord) -> tuple[Target, Account]:
        data = raw.data
        link = await self.accounts.get_link(raw.akey)
        chosen = link.target_account_id if link is not None else None
        account_id = chosen or auto_account_id(raw.akey)
        mode = link.import_mode if link is not None else ImportMode.CREATE
        account = await self.accounts.get(account_id)
        if account is None:
            if chosen is not None:
                raise UnknownTarget(f"the link of {data.aggregator_account_id} names account {chosen}")
            details = await self.accounts.get_details(raw.akey)
            account = await self.accounts.insert(
                bank_account(
                    account_id,
                    raw.akey,
                    data.user_id,
                    data.bank,
                    data.aggregator_account_id,
                    data.currency,
                    details,
                )
            )
        if account.user_id != data.user_id:
            raise UnknownTarget(f"account {account_id} is not {data.user_id}'s")
        if account.deleted:
            account = await self.accounts.revive(account)
        await self.accounts.ensure_bank(data.user_id, data.bank.id, data.bank.name)
        if account.announced < account.generation:
            await self.announce_account(account, raw.event.correlationid)
        return Target(raw.akey, account_id, mode), account

    async def announce_account(self, account: Account, correlation_id: str) -> None:
        await self.announcements.publish([account_created_event(account, correlation_id)])
        await self.accounts.mark_announced(account.id, account.generation)

    async def _manual_candidates(
        self, account: Account, observations: Sequence[Observation]
    ) -> dict[str, ManualCandidate]:
        amounts = {obs.amount for obs in observations if not obs.removed}
        wanted = [op_id for op_id, amount in account.manual.items() if amount in amounts]
        return await self.operations.manual_candidates(account.id, wanted)

    # -- storing and announcing what changed

    async def _store(
        self,
        raw: RawLine,
        target: Target,
        account: Account,
        changes: Changes,
        correlation: dict[str, str],
        rev: int,
    ) -> None:
        """Writes what changed to the operations, then announces it (the state, revision `rev`, is stored
        after). A write a later revision superseded means this decision was made on an old state: decide
        again (`Conflict`) rather than announce it."""
        data = raw.data
        origin = BankOrigin(data.user_id, data.currency, target.akey, data.aggregator_account_id, rev)
        updated_ids = [line.op_id for line in changes.updated if line.op_id]
        deleted_ids = [op_id for op_id, _ in changes.deleted]
        manual_ids = [m for m, _ in (*changes.reconciled, *changes.rereconciled, *changes.unreconciled)]
        existing = await self.operations.shown_many([*updated_ids, *deleted_ids, *manual_ids])

        months: dict[str, set[str]] = {}
        for line in (*changes.imported, *changes.updated):
            months.setdefault(line.account_id, set()).add(month_of(line.date))
        for account_id, wanted in months.items():
            known = set(account.months or ()) if account_id == account.id else set()
            if not wanted <= known:
                await self.accounts.add_months(account_id, wanted)
        await self.operations.insert_bank(origin, changes.imported)
        async with self.op_locks.hold(*updated_ids, *deleted_ids, *manual_ids):
            written = await self.operations.write_bank(origin, changes.updated, existing, deleted_ids)
            if written.superseded:
                raise Conflict(f"{target.akey}: operations written by a later revision: {written.superseded}")
            if written.missing:
                await self._recreate(
                    origin, [line for line in changes.updated if line.op_id in written.missing]
                )
            manual_after = await self._write_reconciliations(target.akey, changes, existing)

        generations = await self._generations(
            {account.id: account},
            {line.account_id for line in (*changes.imported, *changes.updated)}
            | {op.account_id for op in (*existing.values(), *manual_after.values())},
        )
        announcer = Announcer(data.user_id, correlation, raw.event.correlationid, generations)
        for line in changes.imported:
            announcer.add("operation.imported", origin.stored(line), line.txid)
        for line in changes.updated:
            assert line.op_id is not None
            before = existing.get(line.op_id)
            shown = origin.operation(line, before.operation if before else None)
            announcer.add(
                "operation.updated",
                StoredOperation(shown, data.user_id, origin.aggregator_account_id),
                line.txid,
                line.version,
            )
        for op_id, line in changes.deleted:
            gone = existing.get(op_id) or origin.stored(line)
            announcer.add("operation.deleted", gone, line.txid)
        for name, items in (
            ("operation.reconciled", changes.reconciled),
            ("operation.updated", changes.rereconciled),
            ("operation.updated", changes.unreconciled),
        ):
            for manual_id, line in items:
                manual = manual_after.get(manual_id)
                if manual is not None:  # else the manual operation went meanwhile (its account was deleted)
                    announcer.add(name, manual, line.txid, line_ref(target.akey, line.txid), line.version)
        await self.announcements.publish(announcer.events)

    async def _recreate(self, origin: BankOrigin, lines: Sequence[Line]) -> None:
        """Changed operations that are not there are written anew, unless the account's state has moved
        since this decision (their deletion was a later revision's: they stay deleted)."""
        if (await self.states.load(origin.akey)).rev != origin.rev - 1:
            raise Conflict(f"{origin.akey}: the state moved while its operations were written")
        await self.operations.insert_bank(origin, lines)

    async def _write_reconciliations(
        self, akey: str, changes: Changes, existing: Mapping[str, StoredOperation]
    ) -> dict[str, StoredOperation]:
        """Marks manual operations reconciled or not; returns those stored as they now are."""
        after: dict[str, StoredOperation] = {}
        for manual_id, line in changes.reconciled:
            match, before = match_of(akey, line), existing.get(manual_id)
            if not await self.operations.reconcile(
                manual_id, match, before.operation.label if before else ""
            ):
                raise Conflict(f"manual operation {manual_id} reconciled elsewhere meanwhile")
            if before is not None:
                after[manual_id] = reconciled(before, match)
        for manual_id, line in changes.rereconciled:
            match, before = match_of(akey, line), existing.get(manual_id)
            await self.operations.rereconcile(manual_id, match, before.operation.label if before else "")
            if before is not None:
                after[manual_id] = reconciled(before, match)
        for manual_id, line in changes.unreconciled:
            before = existing.get(manual_id)
            label = before.operation.label if before else ""
            await self.operations.release(manual_id, line_ref(akey, line.txid), label)
            if before is not None:
                after[manual_id] = released(before)
        return after

    # -- what the user undoes

    async def undo_reconciliation(
        self, account: Account, manual_id: str, ref: str, correlation_id: str
    ) -> StoredOperation | None:
        """The user undoes the match of the manual operation `manual_id` with the line `ref`: the line
        becomes an operation of its own (announced `operation.imported`, so the categorizer categorises
        it with the rules) and the manual operation a candidate again, never for that line (its
        refused lines). Returns the line's operation (None when the dedup state forgot the line).

        Order, so that a retry after a crash anywhere converges: the refusal (no import matches the
        pair again from then on), the line's operation (a deterministic id), the dedup state
        (compare-and-set; a retry finds the line holding that operation), the events (deterministic
        ids), then the manual operation released, guarded on `ref` (until then the undo is not done:
        the manual operation still says it is reconciled, and a retry goes through again)."""
        akey, _, txid = ref.rpartition("#")
        for _ in range(CONFLICT_RETRIES):
            try:
                async with self.locks.hold(akey), self.op_locks.hold(manual_id):
                    return await self._undo_once(account, manual_id, akey, txid, correlation_id)
            except Conflict:
                log.info("undo_conflict_retrying", akey=akey, operation_id=manual_id)
                await asyncio.sleep(0.05)
        raise Conflict(f"{akey}: too many concurrent writers")

    async def _undo_once(
        self, account: Account, manual_id: str, akey: str, txid: str, correlation_id: str
    ) -> StoredOperation | None:
        ref = line_ref(akey, txid)
        manual = await self.operations.shown(manual_id)  # with its categorisation, for the event
        if manual is None or manual.reconciled_by != ref:
            raise OperationRefused("not_reconciled", f"Operation {manual_id!r} is not reconciled meanwhile.")
        user_id = manual.user_id
        await self.operations.refuse_line(manual_id, ref)
        stored = await self.states.load(akey)
        work = stored.account_lines()
        line = work.undo_reconciliation(manual_id, akey)
        if line is None:  # the state already says so (a retry), or forgot the line
            held = work.lines.get(txid)
            line = held if held is not None and held.op_id is not None else None
        bank: StoredOperation | None = None
        if line is not None:
            origin = BankOrigin(user_id, account.currency, akey, akey[len(user_id) + 1 :], stored.rev + 1)
            bank = origin.stored(line)
            await self.accounts.add_months(line.account_id, [month_of(line.date)])
            await self.operations.insert_bank(origin, [line])
            if work.lines != stored.lines:
                accounts = set(stored.accounts) | {line.account_id}
                if not await self.states.save(
                    stored, stored.user_id or user_id, work.lines.values(), accounts
                ):
                    raise Conflict(akey)
        generations = await self._generations({account.id: account}, [manual.account_id])
        announcer = Announcer(user_id, {}, correlation_id, generations)
        if bank is not None:
            announcer.add("operation.imported", bank, txid)
        announcer.add("operation.updated", released(manual), txid, ref, "undone")
        await self.announcements.publish(announcer.events)
        if not await self.operations.release(manual_id, ref, manual.operation.label):
            raise Conflict(f"manual operation {manual_id} changed meanwhile")
        log.info(
            "reconciliation_undone", user_id=user_id, operation_id=manual_id, line=ref,
            bank_operation_id=bank.id if bank else None,
        )  # fmt: skip
        return bank

    async def _generations(self, known: Mapping[str, Account], account_ids: Iterable[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for account_id in set(account_ids):
            account = known.get(account_id) or await self.accounts.get(account_id)
            found[account_id] = account.generation if account else 1
        return found
