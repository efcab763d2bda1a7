"""What a raw bank line, a categorization and each API request do: load, decide, store, announce.

The import path, for one aggregator account at a time (its lines are ordered on one partition):
1. load the account's dedup state (one document) and resolve where its lines go (link, account);
2. decide with `domain.apply`: which operations appear, change, go, which manual ones are reconciled;
3. write the operations (new ones in one bulk insert, changed ones by `_id`), then publish the events
   (deterministic ids), then store the new state with a compare-and-set on its revision.
A crash anywhere before step 3 ends leaves the state as it was: the batch is read again, decided the
same way, and its writes and events are repeated with the same ids. A concurrent writer (a replay
in another process) makes the compare-and-set fail: the batch is decided again on the newer state.

After the lines of a successful sync, the raw topic carries the bank's balance (`account.synced`). A
batch is taken per aggregator account in its order, cut into runs of lines and the balances after them
(`domain.segments`): each run of lines is imported, then its balances are checked against the app
account the lines go to (`domain.check_balances`: one aggregation of its booked operations, one
compare-and-set of the account, one publish of `account.balance_checked`), so a balance always meets
exactly the lines that came before it. A gap that is not zero is an alarm: a warning, the gauge
`banksync_balance_gap_accounts` (recounted when an account goes in or out of alarm) and the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from aiokafka import ConsumerRecord
from prometheus_client import Gauge
from pydantic import BaseModel
from pymongo import DeleteOne, UpdateOne

from services.importer.adapters import (
    CATEGORIZATION_DEFAULTS,
    AccountStore,
    Doc,
    Link,
    OperationStore,
    Page,
    StateStore,
    balance_fields,
    balance_state_of,
    bank_fields,
    categorization_of,
    cents,
    filed_under,
    sheet_id,
    to_operation,
)
from services.importer.domain import (
    AccountLines,
    BalanceCheck,
    BankBalance,
    Changes,
    ImportMode,
    Line,
    ManualCandidate,
    Observation,
    OperationQuery,
    Target,
    after_reports,
    amount_of,
    apply,
    balance_is_checked,
    due,
    in_key_order,
    last_word_per_operation,
    line_ref,
    refusal_of_change,
    segments,
    version_of,
)
from shared.consumer import Incoming, PoisonRecord
from shared.contract.envelope import CloudEvent, account_key, content_hash, deterministic_event_id
from shared.contract.payloads import (
    AccountBalanceChecked,
    AccountSynced,
    Bank,
    OperationCategorized,
    OperationEvent,
    Payload,
    TransactionObserved,
)
from shared.contract.topics import OPERATIONS
from shared.kafka import EventPublisher
from shared.logging import get_logger
from shared.money import InvalidAmount, format_amount, parse_amount, to_amount
from shared.sheets import Additions, SheetAddition, month_of
from shared.text import search_keys

SERVICE = "importer"
log = get_logger(__name__)

# a line not observed for this long can no longer come back from the raw topic (400 days retention)
FORGET_AFTER = dt.timedelta(days=450)
# a bank date this far after the sync that reported it is nonsense, not a pending line
MAX_DAYS_AHEAD = 400
CONFLICT_RETRIES = 8
ACCOUNT_NAMESPACE = uuid.UUID("5b0b7f7e-8a4f-4d55-9f3e-2f1d0c9b8a71")

BALANCE_GAP_ACCOUNTS = Gauge(
    "banksync_balance_gap_accounts",
    "App accounts whose latest balance check found a gap between the bank's balance and the computed one",
)


class UnknownTarget(Exception):
    """The link names an app account that does not exist (or is another user's)."""


class Conflict(Exception):
    """Another writer changed the same account meanwhile: decide again on the newer state."""


class UnknownAccount(Exception):
    pass


class CurrencyMismatch(Exception):
    pass


class UnknownOperation(Exception):
    pass


class OperationRefused(Exception):
    """A change the user may not make; `code` is what the API answers (409)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---- ids -----------------------------------------------------------------------------------------------


def auto_account_id(akey: str) -> str:
    """The app account created for an aggregator account synced without a chosen target."""
    return str(uuid.uuid5(ACCOUNT_NAMESPACE, akey))


def time_ordered_id() -> str:
    """A UUID-shaped id that sorts by creation time (manual accounts and operations)."""
    millis = int(time.time() * 1000)
    return str(uuid.UUID(int=(millis << 80) | uuid.uuid4().int >> 48))


# ---- raw lines -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawLine:
    """One `transaction.observed`, validated, with where it came from (for the DLQ)."""

    event: CloudEvent
    data: TransactionObserved
    key: str
    record: ConsumerRecord[bytes, bytes] | None = None

    @property
    def akey(self) -> str:
        return account_key(self.data.user_id, self.data.aggregator_account_id)

    @classmethod
    def of(cls, incoming: Incoming) -> RawLine:
        assert isinstance(incoming.data, TransactionObserved)
        return cls(incoming.event, incoming.data, incoming.key, incoming.record)


@dataclass(frozen=True)
class RawBalance:
    """One `account.synced`, validated: the bank's balance after all the lines of one sync."""

    event: CloudEvent
    data: AccountSynced
    key: str
    record: ConsumerRecord[bytes, bytes] | None = None

    @property
    def akey(self) -> str:
        return account_key(self.data.user_id, self.data.aggregator_account_id)

    def report(self) -> BankBalance:
        data = self.data
        return BankBalance(
            sync=data.sync_run_id,
            at=self.event.time,
            balance_cents=cents(data.balance) if data.balance is not None else None,
            coming_cents=cents(data.coming) if data.coming is not None else None,
            checked=balance_is_checked(data.type),
        )


RawRecord = RawLine | RawBalance


# the raw topic's event types the importer reads, and what their `data` validates with
def raw_record(
    event: CloudEvent, data: BaseModel, key: str, record: ConsumerRecord[bytes, bytes] | None = None
) -> RawRecord:
    """The line or the balance a validated raw event is (its `data` validated with IMPORTER_RAW_READS)."""
    if isinstance(data, AccountSynced):
        return RawBalance(event, data, key, record)
    assert isinstance(data, TransactionObserved)
    return RawLine(event, data, key, record)


def is_balance(raw: RawRecord) -> bool:
    return isinstance(raw, RawBalance)


def problem_with(raw: RawRecord) -> str | None:
    """Why a schema-valid record still cannot be imported (it goes to the DLQ), or None."""
    data = raw.data
    if raw.key != raw.akey:
        return f"key {raw.key!r} is not <user>:<aggregator account> {raw.akey!r}"
    if raw.event.userid != data.user_id:
        return f"event user {raw.event.userid!r} differs from data user {data.user_id!r}"
    if isinstance(raw, RawLine):
        problem = _line_problem(raw)
        if problem is not None:
            return problem
    elif not data.user_id or not data.aggregator_account_id:
        return "empty user or account id"
    if len(data.currency) != 3 or not data.currency.isalpha() or not data.currency.isupper():
        return f"currency {data.currency!r} is not an ISO 4217 code"
    return None


def _line_problem(raw: RawLine) -> str | None:
    data, tx = raw.data, raw.data.transaction
    if str(tx.id_account) != data.aggregator_account_id:
        return f"transaction of account {tx.id_account!r} reported for {data.aggregator_account_id!r}"
    if not str(tx.id).strip() or not data.user_id or not data.aggregator_account_id:
        return "empty transaction, user or account id"
    if (tx.date - raw.event.time.date()).days > MAX_DAYS_AHEAD:
        return f"bank date {tx.date.isoformat()} is more than {MAX_DAYS_AHEAD} days after the sync"
    return None


def observation_of(raw: RawLine) -> Observation:
    tx = raw.data.transaction
    memo = tx.original_wording or tx.wording or ""
    label = tx.simplified_wording or tx.wording or memo
    removed = tx.deleted is not None or not tx.active
    fingerprint = content_hash(
        [tx.date, tx.value, tx.original_wording, tx.simplified_wording, tx.wording, tx.coming, removed]
    )
    return Observation(
        txid=str(tx.id),
        date=tx.date,
        amount=tx.value,
        memo=memo,
        label=label,
        pending=tx.coming,
        removed=removed,
        version=version_of(
            tx.last_update or raw.event.time, pending=tx.coming, removed=removed, content=fingerprint
        ),
        seen=raw.event.time.date(),
        sync=raw.data.sync_run_id,
    )


# ---- documents and events ------------------------------------------------------------------------------


def account_view(doc: Doc, balance_cents: int | None = None) -> dict[str, Any]:
    """An app account as the API shows it. `balance`: what the bank says of an account the importer
    created for a bank account, else the sum of its booked operations (a manual account, a reconciliation
    account among them). `bank_balance`, `computed_balance` and `balance_gap` are those of its latest
    balance check (null before the first one, and for an account no bank feeds)."""
    balance = doc.get("bank_balance") if doc.get("aggregator_account_id") is not None else None
    if balance is None:
        balance = format_amount(Decimal(balance_cents or 0) / 100)
    checked = doc.get("balance_checked_at") is not None
    return {
        "account_id": doc["_id"],
        "bank_id": doc.get("bank_id"),
        "name": doc.get("name", ""),
        "iban": doc.get("iban"),
        "balance": balance,
        "currency": doc.get("currency", "EUR"),
        "aggregator_account_id": doc.get("aggregator_account_id"),
        "bank_balance": doc.get("bank_balance") if checked else None,
        "computed_balance": doc.get("computed_balance") if checked else None,
        "balance_gap": doc.get("balance_gap") if checked else None,
    }


def unchanged_since_check(account: Doc, reports: Sequence[BankBalance], lines_rev: int | None) -> bool:
    """Whether the account's last check still holds for these reports: it was a check (an opening is
    fixed), the dedup state of its lines is the revision it checked, and every report gives the same
    balance. Only the import path changes the bank-backed operations of an account, and it moves that
    revision; a deletion of the account starts a new generation, without an opening."""
    stored = account.get("bank_balance")
    if lines_rev is None or account.get("balance_checked_at") is None or stored is None:
        return False
    if account.get("opening_cents") is None or account.get("balance_lines_rev") != lines_rev:
        return False
    return all(report.checked and report.balance_cents == cents(Decimal(stored)) for report in reports)


def balance_checked_event(raw: RawBalance, account: Doc, check: BalanceCheck) -> CloudEvent:
    """`account.balance_checked`: one id per account, sync run and life of the account."""
    data, generation = raw.data, int(account["generation"])
    payload = AccountBalanceChecked(
        user_id=data.user_id,
        account_id=account["_id"],
        aggregator_account_id=data.aggregator_account_id,
        sync_run_id=check.report.sync,
        bank_balance=format_amount(amount_of(check.bank_cents)),
        computed_balance=format_amount(amount_of(check.computed_cents)),
        balance_gap=format_amount(amount_of(check.gap_cents)),
        currency=str(account.get("currency") or data.currency),
        generation=generation,
    )
    return CloudEvent.new(
        service=SERVICE,
        name="account.balance_checked",
        data=payload.model_dump(mode="json"),
        user_id=data.user_id,
        correlation_id=raw.event.correlationid,
        subject=account["_id"],
        event_id=deterministic_event_id(
            "account.balance_checked", account["_id"], check.report.sync, str(generation)
        ),
    )


@dataclass
class ImportStats:
    lines: int = 0
    imported: int = 0
    updated: int = 0
    deleted: int = 0
    reconciled: int = 0
    unchanged: int = 0
    balances: int = 0  # `account.synced` records
    checks: int = 0  # balance checks stored (a stale or empty report is none)

    def add(self, other: ImportStats) -> None:
        self.lines += other.lines
        self.imported += other.imported
        self.updated += other.updated
        self.deleted += other.deleted
        self.reconciled += other.reconciled
        self.unchanged += other.unchanged
        self.balances += other.balances
        self.checks += other.checks


@dataclass
class ImportResult:
    stats: ImportStats = field(default_factory=ImportStats)
    rejected: list[tuple[RawRecord, str]] = field(default_factory=list)


class KeyLocks:
    """One holder at a time per key in this process; several keys are taken in order (no deadlock).

    Per aggregator account: one writer of its dedup state (consumer, replay, deletion). Per operation:
    one writer of its document (a manual operation the lines of two aggregator accounts may reconcile),
    because FerretDB v1 rewrites a whole document on update and can lose one of two concurrent updates
    of it. (Categorisations are not written on the operations: see `Categorizations`.)
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, *keys: str) -> AsyncIterator[None]:
        ordered = sorted(set(keys))
        for key in ordered:
            self._holders[key] = self._holders.get(key, 0) + 1
        acquired: list[str] = []
        try:
            for key in ordered:
                await self._locks.setdefault(key, asyncio.Lock()).acquire()
                acquired.append(key)
            yield
        finally:
            for key in acquired:
                self._locks[key].release()
            for key in ordered:
                self._holders[key] -= 1
                if self._holders[key] == 0:
                    del self._holders[key]
                    self._locks.pop(key, None)


@dataclass(frozen=True)
class BankOperationFactory:
    """Operation documents of one aggregator account's lines."""

    user_id: str
    currency: str
    akey: str
    aggregator_account_id: str

    def new(self, line: Line) -> Doc:
        now = dt.datetime.now(dt.UTC)
        return {
            "_id": line.op_id,
            "user_id": self.user_id,
            "account_id": line.account_id,
            "akey": self.akey,
            "aggregator_account_id": self.aggregator_account_id,
            "currency": self.currency,
            "source": "bank",
            "reconciled": False,
            "reconciled_by": None,
            **bank_fields(line),
            "filed": sheet_id(line.account_id, month_of(line.date)),
            **CATEGORIZATION_DEFAULTS,
            "created_at": now,
            "updated_at": now,
        }

    def update(self, line: Line, before: Doc | None) -> UpdateOne:
        """The bank's side of an existing operation (its categorization and its sheet stay); created if
        missing. One stored before sheets existed is filed where it was (`before`, as stored)."""
        changed = {**bank_fields(line), "account_id": line.account_id, "updated_at": dt.datetime.now(dt.UTC)}
        if before is not None and "filed" not in before and "month" in before:
            changed["filed"] = sheet_id(before["account_id"], before["month"])
        rest = {k: v for k, v in self.new(line).items() if k not in changed and k != "_id"}
        return UpdateOne({"_id": line.op_id}, {"$set": changed, "$setOnInsert": rest}, upsert=True)


def released_fields(manual: Doc) -> Doc:
    """What a manual operation is once no bank line reconciles it (`manual`: as it was)."""
    return {
        "reconciled": False,
        "reconciled_by": None,
        "aggregator_transaction_id": None,
        "memo": "",
        "words": search_keys(str(manual.get("label") or "")),
        "bank_status": None,
    }


class Announcer:
    """Builds the `operation.*` events of one batch: deterministic ids, the sync run's correlation id."""

    def __init__(
        self, user_id: str, correlation: dict[str, str], default_correlation: str, generations: dict[str, int]
    ) -> None:
        self.user_id = user_id
        self.correlation = correlation
        self.default_correlation = default_correlation
        self.generations = generations
        self.events: list[tuple[str, CloudEvent]] = []

    def add(self, name: str, doc: Doc, txid: str | None, *fact: str) -> None:
        """`fact` names what is restated beyond the operation and its account's life (e.g. a version)."""
        operation = to_operation(doc)
        generation = str(self.generations.get(operation.account_id, 1))
        payload = OperationEvent(
            user_id=self.user_id, operation=operation, aggregator_account_id=doc.get("aggregator_account_id")
        )
        event = CloudEvent.new(
            service=SERVICE,
            name=name,
            data=payload.model_dump(mode="json"),
            user_id=self.user_id,
            correlation_id=self.correlation.get(txid or "", self.default_correlation),
            subject=operation.id,
            event_id=deterministic_event_id(name, operation.id, *fact, generation),
        )
        self.events.append((account_key(self.user_id, operation.account_id), event))


def log_imported(
    akey: str, user_id: str, lines: Sequence[RawLine], changes: Changes, correlation: dict[str, str]
) -> None:
    """One log line per sync run in the batch: a batch may join the tail of one sync and the head of
    the next, and `grep <correlation id>` must find each of them."""
    runs = Counter(raw.event.correlationid for raw in lines)
    imported = Counter(correlation.get(line.txid) for line in changes.imported)
    updated = Counter(correlation.get(line.txid) for line in changes.updated)
    updated.update(correlation.get(line.txid) for _, line in changes.rereconciled + changes.unreconciled)
    deleted = Counter(correlation.get(line.txid) for _, line in changes.deleted)
    reconciled = Counter(correlation.get(line.txid) for _, line in changes.reconciled)
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
            reconciled=reconciled[correlation_id],
        )


class Importer:
    """The one import path, for the consumer, the replay and the ops command alike."""

    def __init__(
        self,
        state: StateStore,
        operations: OperationStore,
        accounts: AccountStore,
        publisher: EventPublisher,
        *,
        locks: KeyLocks | None = None,
        concurrency: int = 8,
        today: Callable[[], dt.date] = lambda: dt.datetime.now(dt.UTC).date(),
    ) -> None:
        self.state = state
        self.operations = operations
        self.accounts = accounts
        self.publisher = publisher
        self.locks = locks or KeyLocks()
        self.op_locks = KeyLocks()
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
        stored = await self.state.load(akey)
        target, account = await self._target(first)
        observations = [observation_of(raw) for raw in lines]
        correlation = {
            obs.txid: raw.event.correlationid for obs, raw in zip(observations, lines, strict=True)
        }
        work = stored.account_lines()
        if target.mode is ImportMode.RECONCILE:
            work.manual = await self._manual_candidates(account, observations)
        after, changes = apply(work, observations, target)
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

        await self._store(first, target, account, changes, correlation)
        accounts = set(stored.accounts) | {line.account_id for line in after.lines.values()}
        for account_id in sorted(accounts - stored.accounts):
            await self.accounts.add_sources(account_id, [akey])
        if not await self.state.save(stored, first.data.user_id, after.lines.values(), accounts):
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
        before = balance_state_of(account)
        fresh = due(before, reports)
        if not fresh:
            return stats  # older than what the account has: a redelivery or a replay of what is known
        checked = any(report.checked for report in fresh)  # else no aggregation: nothing to check
        lines_rev = (await self.state.load(target.akey)).rev if checked else None
        if checked and unchanged_since_check(account, fresh, lines_rev):
            # the same bank balance and the same lines as at the last check: its outcome stands, and
            # the night does not re-add every account's operations when nothing moved
            return stats
        booked = await self.operations.booked_cents(target.account_id) if checked else 0
        after, latest, checks = after_reports(before, booked, fresh)
        assert latest is not None
        check = checks[-1] if checks and checks[-1].report is latest else None
        fields = balance_fields(after, latest, check, dt.datetime.now(dt.UTC))
        fields["balance_lines_rev"] = lines_rev
        if not await self.accounts.store_balance(account, before.rev, fields):
            raise Conflict(f"balance of {target.account_id}")
        by_sync = {raw.data.sync_run_id: raw for raw in balances}
        for done in checks:
            self._log_check(by_sync[done.report.sync], account, done)
        if after.alarm != before.alarm:
            await self.recount_gaps()  # in or out of alarm: the gauge says so before the event does
        if checks:
            key = account_key(account["user_id"], account["_id"])
            events = [balance_checked_event(by_sync[c.report.sync], account, c) for c in checks]
            await self.publisher.publish_many(OPERATIONS, [(key, event) for event in events])
        stats.checks = len(checks)
        return stats

    def _log_check(self, raw: RawBalance, account: Doc, check: BalanceCheck) -> None:
        figures = {
            "user_id": raw.data.user_id,
            "account_id": account["_id"],
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

    async def _target(self, raw: RawRecord) -> tuple[Target, Doc]:
        data = raw.data
        link = await self.accounts.get_link(raw.akey)
        chosen = link.target_account_id if link is not None else None
        account_id = chosen or auto_account_id(raw.akey)
        mode = link.import_mode if link is not None else ImportMode.CREATE
        account = await self.accounts.get(account_id)
        if account is None:
            if chosen is not None:
                raise UnknownTarget(f"the link of {data.aggregator_account_id} names account {chosen}")
            account = await self.accounts.insert(await self._bank_account_doc(raw, account_id))
        if account["user_id"] != data.user_id:
            raise UnknownTarget(f"account {account_id} is not {data.user_id}'s")
        if account.get("deleted"):
            account = await self.accounts.revive(account)
        await self.accounts.ensure_bank(data.user_id, data.bank.id, data.bank.name)
        if int(account.get("announced", 0)) < int(account["generation"]):
            await self.announce_account(account, raw.event.correlationid)
        return Target(raw.akey, account_id, mode), account

    async def _bank_account_doc(self, raw: RawRecord, account_id: str) -> Doc:
        data = raw.data
        details = await self.accounts.get_details(raw.akey) or {}
        return {
            "_id": account_id,
            "user_id": data.user_id,
            "bank_id": data.bank.id,
            "name": details.get("name") or f"{data.bank.name} {data.aggregator_account_id}",
            "iban": details.get("iban"),
            "bank_balance": details.get("balance"),
            "currency": data.currency,
            "aggregator_account_id": data.aggregator_account_id,
            "deleted": False,
            "generation": 1,
            "announced": 0,
            "manual": {},
            "months": [],
            "sources": [raw.akey],
            "created_at": dt.datetime.now(dt.UTC),
        }

    async def announce_account(self, account: Doc, correlation_id: str) -> None:
        generation = int(account["generation"])
        event = CloudEvent.new(
            service=SERVICE,
            name="account.created",
            data={
                "user_id": account["user_id"],
                "account": account_view(account),
                "aggregator_account_id": account.get("aggregator_account_id"),
                "generation": generation,
            },
            user_id=account["user_id"],
            correlation_id=correlation_id,
            subject=account["_id"],
            event_id=deterministic_event_id("account.created", account["_id"], str(generation)),
        )
        await self.publisher.publish(OPERATIONS, account_key(account["user_id"], account["_id"]), event)
        await self.accounts.mark_announced(account["_id"], generation)

    async def _manual_candidates(
        self, account: Doc, observations: Sequence[Observation]
    ) -> dict[str, ManualCandidate]:
        amounts = {obs.amount for obs in observations if not obs.removed}
        entries: dict[str, Doc] = account.get("manual") or {}
        wanted = [op_id for op_id, entry in entries.items() if Decimal(entry["amount"]) in amounts]
        docs = await self.operations.stored_many(wanted)  # the bank side only: no sheet to read
        return {
            op_id: ManualCandidate(
                op_id=op_id,
                date=dt.date.fromisoformat(doc["date"]),
                amount=Decimal(doc["amount"]),
                reconciled_by=doc.get("reconciled_by"),
                refused=frozenset(doc.get("unmatched_lines") or ()),
            )
            for op_id, doc in docs.items()
            if doc.get("source") == "manual" and doc.get("account_id") == account["_id"]
        }

    # -- storing and announcing what changed

    async def _store(
        self, raw: RawLine, target: Target, account: Doc, changes: Changes, correlation: dict[str, str]
    ) -> None:
        """Writes what changed to the operations, then announces it (the state is stored after)."""
        data = raw.data
        bank_op = BankOperationFactory(data.user_id, data.currency, target.akey, data.aggregator_account_id)
        updated_ids = [line.op_id for line in changes.updated if line.op_id]
        deleted_ids = [op_id for op_id, _ in changes.deleted]
        manual_ids = [m for m, _ in (*changes.reconciled, *changes.rereconciled, *changes.unreconciled)]
        existing = await self.operations.get_many([*updated_ids, *deleted_ids, *manual_ids])

        new_docs = [bank_op.new(line) for line in changes.imported]
        months: dict[str, set[str]] = {}
        for doc in [*new_docs, *(bank_op.new(line) for line in changes.updated)]:
            months.setdefault(doc["account_id"], set()).add(doc["month"])
        for account_id, wanted in months.items():
            known = set(account.get("months") or []) if account_id == account["_id"] else set()
            if not wanted <= known:
                await self.accounts.add_months(account_id, wanted)
        await self.operations.insert_new(new_docs)
        async with self.op_locks.hold(*updated_ids, *deleted_ids, *manual_ids):
            await self.operations.write(
                [bank_op.update(line, existing.get(line.op_id or "")) for line in changes.updated]
                + [DeleteOne({"_id": op_id}) for op_id in deleted_ids]
            )
            manual_after = await self._write_reconciliations(target.akey, changes, existing)

        generations = await self._generations(
            {account["_id"]: account},
            {
                doc["account_id"]
                for doc in (*new_docs, *existing.values(), *manual_after.values())
                if "account_id" in doc
            }
            | {line.account_id for line in changes.updated},
        )
        announcer = Announcer(data.user_id, correlation, raw.event.correlationid, generations)
        for doc in new_docs:
            announcer.add("operation.imported", doc, doc["aggregator_transaction_id"])
        for line in changes.updated:
            assert line.op_id is not None
            categorization = categorization_of(existing.get(line.op_id, {}))
            announcer.add(
                "operation.updated", {**bank_op.new(line), **categorization}, line.txid, line.version
            )
        for op_id, line in changes.deleted:
            doc = existing.get(op_id) or {**bank_op.new(line), "_id": op_id}
            announcer.add("operation.deleted", doc, line.txid)
        for name, items in (
            ("operation.reconciled", changes.reconciled),
            ("operation.updated", changes.rereconciled),
            ("operation.updated", changes.unreconciled),
        ):
            for manual_id, line in items:
                doc = manual_after[manual_id]
                if "_id" in doc:  # else the manual operation went meanwhile (its account was deleted)
                    announcer.add(name, doc, line.txid, line_ref(target.akey, line.txid), line.version)
        if announcer.events:
            await self.publisher.publish_many(OPERATIONS, announcer.events)

    async def _write_reconciliations(
        self, akey: str, changes: Changes, existing: dict[str, Doc]
    ) -> dict[str, Doc]:
        """Marks manual operations reconciled or not; returns them as they now are."""
        now = dt.datetime.now(dt.UTC)
        after: dict[str, Doc] = {}

        def reconciled_by(line: Line) -> Doc:
            ref = line_ref(akey, line.txid)
            return {
                "reconciled": True,
                "reconciled_by": ref,
                "aggregator_transaction_id": line.txid,
                "memo": line.memo,
                # it backs the bank's balance once its line is booked (OperationStore.booked_cents)
                "bank_status": line.status,
            }

        for manual_id, line in changes.reconciled:
            fields = reconciled_by(line)
            fields["words"] = search_keys(line.memo, str(existing.get(manual_id, {}).get("label") or ""))
            guard = {"reconciled_by": {"$in": [None, fields["reconciled_by"]]}}
            if not await self.operations.guarded_update(
                manual_id, guard, {"$set": {**fields, "updated_at": now}}
            ):
                raise Conflict(f"manual operation {manual_id} reconciled elsewhere meanwhile")
            after[manual_id] = {**existing.get(manual_id, {}), **fields}
        for manual_id, line in changes.rereconciled:
            fields = reconciled_by(line)
            fields["words"] = search_keys(line.memo, str(existing.get(manual_id, {}).get("label") or ""))
            await self.operations.guarded_update(manual_id, {}, {"$set": {**fields, "updated_at": now}})
            after[manual_id] = {**existing.get(manual_id, {}), **fields}
        for manual_id, line in changes.unreconciled:
            fields = released_fields(existing.get(manual_id, {}))
            released: Doc = {"reconciled_by": line_ref(akey, line.txid)}
            await self.operations.guarded_update(manual_id, released, {"$set": {**fields, "updated_at": now}})
            after[manual_id] = {**existing.get(manual_id, {}), **fields}
        return after

    # -- what the user undoes

    async def undo_reconciliation(
        self, account: Doc, manual_id: str, ref: str, correlation_id: str
    ) -> Doc | None:
        """The user undoes the match of the manual operation `manual_id` with the line `ref`: the line
        becomes an operation of its own (announced `operation.imported`, so the categorizer categorises
        it with the rules) and the manual operation a candidate again, never for that line (its
        `unmatched_lines`). Returns the line's operation (None when the dedup state forgot the line).

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
        self, account: Doc, manual_id: str, akey: str, txid: str, correlation_id: str
    ) -> Doc | None:
        ref = line_ref(akey, txid)
        manual = await self.operations.get(manual_id)  # with its categorisation, for the event
        if manual is None or manual.get("reconciled_by") != ref:
            raise OperationRefused("not_reconciled", f"Operation {manual_id!r} is not reconciled meanwhile.")
        user_id = str(manual["user_id"])
        await self.operations.refuse_line(manual_id, ref)
        stored = await self.state.load(akey)
        work = stored.account_lines()
        line = work.undo_reconciliation(manual_id, akey)
        if line is None:  # the state already says so (a retry), or forgot the line
            held = work.lines.get(txid)
            line = held if held is not None and held.op_id is not None else None
        bank_doc: Doc | None = None
        if line is not None:
            factory = BankOperationFactory(
                user_id, str(account.get("currency") or "EUR"), akey, akey[len(user_id) + 1 :]
            )
            bank_doc = factory.new(line)
            await self.accounts.add_months(line.account_id, [bank_doc["month"]])
            await self.operations.insert_new([bank_doc])
            if work.lines != stored.lines:
                accounts = set(stored.accounts) | {line.account_id}
                if not await self.state.save(
                    stored, stored.user_id or user_id, work.lines.values(), accounts
                ):
                    raise Conflict(akey)
        released = {**manual, **released_fields(manual)}
        generations = await self._generations({account["_id"]: account}, [manual["account_id"]])
        announcer = Announcer(user_id, {}, correlation_id, generations)
        if bank_doc is not None:
            announcer.add("operation.imported", bank_doc, txid)
        announcer.add("operation.updated", released, txid, ref, "undone")
        await self.publisher.publish_many(OPERATIONS, announcer.events)
        fields = {**released_fields(manual), "updated_at": dt.datetime.now(dt.UTC)}
        if not await self.operations.guarded_update(manual_id, {"reconciled_by": ref}, {"$set": fields}):
            raise Conflict(f"manual operation {manual_id} changed meanwhile")
        log.info(
            "reconciliation_undone", user_id=user_id, operation_id=manual_id, line=ref,
            bank_operation_id=bank_doc["_id"] if bank_doc else None,
        )  # fmt: skip
        return bank_doc

    async def _generations(self, known: dict[str, Doc], account_ids: Iterable[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for account_id in set(account_ids):
            doc = known.get(account_id) or await self.accounts.get(account_id)
            found[account_id] = int(doc["generation"]) if doc else 1
        return found


# ---- categorizations -----------------------------------------------------------------------------------


class Categorizations:
    """Stores the categorizer's payee and category of operations in the account's month sheets
    (adapters.CategorizationSheets); never over the user's own choice.

    Per batch: the last word per operation (`last_word_per_operation`), then one insert per sheet the
    results name (the event's account and month; an older event without a month finds its operation
    by id). Nothing is read or rewritten: that is a handful of inserts for thousands of results, where
    one guarded update per operation wrote a few hundred a second on the local engine. What the app
    reads takes the strongest of an operation's own categorisation and its sheets' entries
    (`with_categorization`: the user's choice over any rule result, then the newer rule set, then the
    later), so the rule holds however the results arrive, twice or out of order. Nothing here writes
    the operations' documents: the intake and this write-back never race on one document.
    """

    def __init__(self, operations: OperationStore) -> None:
        self.operations = operations

    async def apply(self, items: Sequence[OperationCategorized]) -> int:
        """Returns how many operations' categorisations were filed."""
        winners = last_word_per_operation(items)
        filed = await self._sheets_named(winners)
        additions = sheet_additions(winners, filed, dt.datetime.now(dt.UTC))
        await self.operations.sheets.append(additions)
        return sum(len(addition.entries) for addition in additions)

    async def _sheets_named(self, items: Sequence[OperationCategorized]) -> dict[str, str]:
        """Operation id → the sheet its result goes to; one not stored (without a month) has none."""
        named = {i.operation_id: sheet_id(i.account_id, i.month) for i in items if i.month is not None}
        unnamed: dict[tuple[str, str], list[str]] = {}
        for item in items:
            if item.month is None:
                unnamed.setdefault((item.user_id, item.account_id), []).append(item.operation_id)
        for (user_id, account_id), ids in unnamed.items():
            stored = await self.operations.stored_many(ids, {"user_id": user_id, "account_id": account_id})
            named.update((op_id, filed_under(doc)) for op_id, doc in stored.items())
        return named


def sheet_additions(
    items: Sequence[OperationCategorized], filed: dict[str, str], at: dt.datetime
) -> list[SheetAddition]:
    """The entries each sheet gets (an operation without a sheet gets none)."""
    additions = Additions()
    for item in items:
        sid = filed.get(item.operation_id)
        if sid is None:
            continue
        entries = additions.entries(sid, item.user_id, sid.rsplit(":", 1)[0])
        entries[item.operation_id] = {**categorization_fields(item), "categorized_at": at}
    return additions.all()


def categorization_fields(item: OperationCategorized) -> Doc:
    """What one `operation.categorized` sets on its operation (besides when)."""
    categorized_by = (
        {
            "source": item.source,
            "payee_id": item.payee.id if item.payee else None,
            "keyword": item.keyword,
        }
        if item.source is not None
        else None
    )
    return {
        "payee": item.payee.model_dump() if item.payee else None,
        "category": item.category,
        "categorized_by": categorized_by,
        "cat_src": item.source,
        "cat_rv": item.rules_version,
        "cat_cv": item.choice_version,
        "transfer": item.transfer.model_dump() if item.transfer else None,
    }


# ---- what the API asks -----------------------------------------------------------------------------------


class AccountService:
    def __init__(self, importer: Importer) -> None:
        self.importer = importer
        self.accounts = importer.accounts
        self.operations = importer.operations
        self.publisher = importer.publisher

    async def own_account(self, user_id: str, account_id: str) -> Doc:
        doc = await self.accounts.get(account_id)
        if doc is None or doc["user_id"] != user_id or doc.get("deleted"):
            raise UnknownAccount(account_id)
        return doc

    async def list_accounts(self, user_id: str) -> list[dict[str, Any]]:
        docs = await self.accounts.list_accounts(user_id)
        balances = await self.operations.balances(user_id) if docs else {}
        return [account_view(doc, balances.get(doc["_id"], 0)) for doc in docs]

    async def create_account(
        self, user_id: str, name: str, currency: str, correlation_id: str
    ) -> dict[str, Any]:
        doc: Doc = {
            "_id": time_ordered_id(),
            "user_id": user_id,
            "bank_id": None,
            "name": name,
            "iban": None,
            "bank_balance": None,
            "currency": currency,
            "aggregator_account_id": None,
            "deleted": False,
            "generation": 1,
            "announced": 0,
            "manual": {},
            "months": [],
            "sources": [],
            "created_at": dt.datetime.now(dt.UTC),
        }
        await self.accounts.insert(doc)
        await self.importer.announce_account(doc, correlation_id)
        return account_view(doc, 0)

    async def delete_account(self, user_id: str, account_id: str, correlation_id: str) -> None:
        """Deletes the account and its operations; links stay, so a replay or a sync brings it back."""
        doc = await self.accounts.get(account_id)
        if doc is None or doc["user_id"] != user_id:
            raise UnknownAccount(account_id)
        sources = sorted(set(doc.get("sources") or []))
        async with self.importer.locks.hold(*sources):
            await self.accounts.mark_deleted(account_id)
            for akey in sources:
                await self._forget_lines(akey, account_id)
            removed = await self.operations.delete_account(account_id)
        if doc.get("balance_alarm"):
            await self.importer.recount_gaps()  # a deleted account is in alarm no more
        generation = int(doc["generation"])
        event = CloudEvent.new(
            service=SERVICE,
            name="account.deleted",
            data={
                "user_id": user_id,
                "account_id": account_id,
                "aggregator_account_id": doc.get("aggregator_account_id"),
                "generation": generation,
                "operations_deleted": removed,
            },
            user_id=user_id,
            correlation_id=correlation_id,
            subject=account_id,
            event_id=deterministic_event_id("account.deleted", account_id, str(generation)),
        )
        await self.publisher.publish(OPERATIONS, account_key(user_id, account_id), event)
        log.info("account_deleted", account_id=account_id, operations=removed, sources=sources)

    async def _forget_lines(self, akey: str, account_id: str) -> None:
        """Drops the lines that went to this account from the dedup state, so they import again."""
        for _ in range(CONFLICT_RETRIES):
            stored = await self.importer.state.load(akey)
            if stored.rev == 0:
                return
            gone = {t for t, line in stored.lines.items() if line.account_id == account_id}
            if not gone:
                return
            kept = AccountLines(
                {t: _without_refs(line, gone) for t, line in stored.lines.items() if t not in gone}
            )
            if await self.importer.state.save(
                stored, stored.user_id, kept.lines.values(), stored.accounts - {account_id}
            ):
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
    ) -> tuple[Doc, bool]:
        account = await self.own_account(user_id, account_id)
        if currency != account.get("currency", "EUR"):
            raise CurrencyMismatch(f"the account is in {account.get('currency')}, not {currency}")
        op_id = (
            deterministic_event_id("manual-operation", user_id, account_id, idempotency_key)
            if idempotency_key
            else time_ordered_id()
        )
        existing = await self.operations.get(op_id)
        if existing is not None:
            return existing, False
        now = dt.datetime.now(dt.UTC)
        doc: Doc = {
            "_id": op_id,
            "user_id": user_id,
            "account_id": account_id,
            "akey": None,
            "aggregator_account_id": None,
            "date": date.isoformat(),
            "month": month_of(date),
            "amount": format_amount(amount),
            "cents": cents(amount),
            "currency": currency,
            "memo": "",
            "label": label,
            "words": search_keys(label),
            "status": "booked",
            "source": "manual",
            "reconciled": False,
            "reconciled_by": None,
            "aggregator_transaction_id": None,
            "filed": sheet_id(account_id, month_of(date)),
            **CATEGORIZATION_DEFAULTS,
            "created_at": now,
            "updated_at": now,
        }
        # the candidate first: a manual operation reconcile mode cannot see would be a silent miss
        await self.accounts.add_manual(account_id, op_id, date, amount)
        await self.accounts.add_months(account_id, [month_of(date)])
        if not await self.operations.insert_one(doc):
            found = await self.operations.get(op_id)
            assert found is not None
            return found, False
        event = CloudEvent.new(
            service=SERVICE,
            name="operation.created",
            data=OperationEvent(user_id=user_id, operation=to_operation(doc)).model_dump(mode="json"),
            user_id=user_id,
            correlation_id=correlation_id,
            subject=op_id,
            event_id=deterministic_event_id("operation.created", op_id),
        )
        await self.publisher.publish(OPERATIONS, account_key(user_id, account_id), event)
        return doc, True

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
    ) -> Page:
        """A page of one account's operations (`account_id`), or of every account of the user (None)."""
        if account_id is not None:
            accounts = [await self.own_account(user_id, account_id)]
        else:
            accounts = await self.accounts.list_accounts(user_id)
        return await self.operations.search(
            user_id, accounts, query, date_from=date_from, date_to=date_to, after=after, limit=limit
        )

    async def own_operation(self, user_id: str, account_id: str, op_id: str) -> Doc:
        """The operation of this user's account, as the app shows it."""
        await self.own_account(user_id, account_id)
        doc = await self.operations.get(op_id)
        if doc is None or doc.get("user_id") != user_id or doc.get("account_id") != account_id:
            raise UnknownOperation(op_id)
        return doc

    def _refuse(self, doc: Doc, *, moves: bool) -> None:
        code = refusal_of_change(str(doc.get("source", "bank")), bool(doc.get("reconciled")), moves=moves)
        if code == "bank_operation":
            raise OperationRefused(code, "A bank operation is the bank's: only a manual one can change.")
        if code is not None:
            raise OperationRefused(
                code,
                "This manual operation is reconciled with a bank line: undo the match "
                "(DELETE .../reconciliation) before changing its date or amount, or deleting it.",
            )

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
    ) -> Doc:
        """Changes what is given of a manual operation; announces `operation.updated` (a request that
        changes nothing announces its latest state again, under the same event id). The amount is a
        client's decimal string, exact in the currency given, else in the account's (`InvalidAmount`)."""
        account = await self.own_account(user_id, account_id)
        amount = (
            None
            if amount_text is None
            else parse_amount(amount_text, currency or str(account.get("currency") or "EUR"))
        )
        if currency is not None and currency != account.get("currency", "EUR"):
            raise CurrencyMismatch(f"the account is in {account.get('currency')}, not {currency}")
        # the import path's locks: the account's document (FerretDB rewrites it whole on an update)
        async with (
            self.importer.locks.hold(*(account.get("sources") or [])),
            self.importer.op_locks.hold(op_id),
        ):
            doc = await self.own_operation(user_id, account_id, op_id)
            wanted: Doc = {}
            if date is not None:
                wanted |= {"date": date.isoformat(), "month": month_of(date)}
            if amount is not None:
                wanted |= {"amount": format_amount(amount), "cents": cents(amount)}
            if currency is not None:
                wanted["currency"] = currency
            if label is not None:
                wanted |= {"label": label, "words": search_keys(str(doc.get("memo") or ""), label)}
            changed = {k: v for k, v in wanted.items() if doc.get(k) != v}
            moves = any(k in changed for k in ("date", "cents"))
            self._refuse(doc, moves=moves)
            if changed:
                changed["edits"] = int(doc.get("edits") or 0) + 1
                if moves:  # the candidate first: reconcile mode must see what the operation now is
                    new_date = date or dt.date.fromisoformat(doc["date"])
                    new_amount = amount if amount is not None else Decimal(str(doc["amount"]))
                    await self.accounts.add_manual(account_id, op_id, new_date, new_amount)
                    await self.accounts.add_months(account_id, [month_of(new_date)])
                now = dt.datetime.now(dt.UTC)
                if not await self.operations.edit_manual(
                    op_id, {**changed, "updated_at": now}, unreconciled=moves
                ):
                    self._refuse(
                        {**doc, "reconciled": True}, moves=moves
                    )  # a bank line reconciled it meanwhile
                doc = {**doc, **changed, "updated_at": now}
        event = CloudEvent.new(
            service=SERVICE,
            name="operation.updated",
            data=OperationEvent(user_id=user_id, operation=to_operation(doc)).model_dump(mode="json"),
            user_id=user_id,
            correlation_id=correlation_id,
            subject=op_id,
            event_id=deterministic_event_id(
                "operation.updated", op_id, "edit", str(doc.get("edits") or 0), str(account["generation"])
            ),
        )
        await self.publisher.publish(OPERATIONS, account_key(user_id, account_id), event)
        return doc

    async def delete_manual_operation(
        self, user_id: str, account_id: str, op_id: str, correlation_id: str
    ) -> None:
        """Deletes a manual operation and announces `operation.deleted`."""
        account = await self.own_account(user_id, account_id)
        async with (
            self.importer.locks.hold(*(account.get("sources") or [])),
            self.importer.op_locks.hold(op_id),
        ):
            doc = await self.own_operation(user_id, account_id, op_id)
            self._refuse(doc, moves=True)
            if not await self.operations.delete_manual(op_id):
                self._refuse({**doc, "reconciled": True}, moves=True)  # a bank line reconciled it meanwhile
            await self.accounts.remove_manual(account_id, op_id)
        event = CloudEvent.new(
            service=SERVICE,
            name="operation.deleted",
            data=OperationEvent(user_id=user_id, operation=to_operation(doc)).model_dump(mode="json"),
            user_id=user_id,
            correlation_id=correlation_id,
            subject=op_id,
            event_id=deterministic_event_id("operation.deleted", op_id, str(account["generation"])),
        )
        await self.publisher.publish(OPERATIONS, account_key(user_id, account_id), event)
        log.info("manual_operation_deleted", user_id=user_id, account_id=account_id, operation_id=op_id)

    async def undo_reconciliation(
        self, user_id: str, account_id: str, op_id: str, correlation_id: str
    ) -> tuple[Doc, Doc | None]:
        """Undoes the match of a reconciled manual operation (see Importer.undo_reconciliation); returns
        it as it now is, and the bank line's own operation."""
        account = await self.own_account(user_id, account_id)
        doc = await self.own_operation(user_id, account_id, op_id)
        ref = doc.get("reconciled_by")
        if doc.get("source") != "manual" or not doc.get("reconciled") or not isinstance(ref, str):
            raise OperationRefused(
                "not_reconciled", f"Operation {op_id!r} is not reconciled with a bank line."
            )
        bank = await self.importer.undo_reconciliation(account, op_id, ref, correlation_id)
        manual = await self.operations.get(op_id)
        return manual or {**doc, **released_fields(doc)}, bank


def _without_refs(line: Line, gone: set[str]) -> Line:
    return replace(
        line,
        claimed_by=None if line.claimed_by in gone else line.claimed_by,
        claims=None if line.claims in gone else line.claims,
    )


# ---- what the connector says of aggregator accounts -------------------------------------------------------


class AccountDiscovered(Payload):
    """`account.discovered` on banksync.connections.v1 (the connector's account view)."""

    user_id: str
    connection_id: str
    bank: Bank
    account: dict[str, Any]


class AccountDetails:
    """Keeps the name, IBAN and balance the bank gives each aggregator account, for the app account."""

    def __init__(self, accounts: AccountStore, locks: KeyLocks | None = None) -> None:
        self.accounts = accounts
        # the import path's locks: FerretDB applies an update by reading the whole document and writing it
        # back, so a name written here while an import adds months to the same account would lose them
        self.locks = locks or KeyLocks()

    async def apply(self, items: Sequence[AccountDiscovered]) -> None:
        for item in items:
            aggregator_account_id = str(item.account.get("aggregator_account_id", ""))
            if not aggregator_account_id:
                continue
            akey = account_key(item.user_id, aggregator_account_id)
            try:
                balance = (
                    format_amount(to_amount(item.account["balance"])) if item.account.get("balance") else None
                )
            except InvalidAmount:
                balance = None
            details: Doc = {
                "user_id": item.user_id,
                "aggregator_account_id": aggregator_account_id,
                "bank": item.bank.model_dump(),
                "name": str(item.account.get("name") or "") or None,
                "iban": item.account.get("iban"),
                "balance": balance,
                "currency": item.account.get("currency"),
                "type": item.account.get("type"),
                "updated_at": dt.datetime.now(dt.UTC),
            }
            await self.accounts.put_details(akey, details)
            async with self.locks.hold(akey):
                await self._name_created_account(akey, aggregator_account_id, details)

    async def _name_created_account(self, akey: str, aggregator_account_id: str, details: Doc) -> None:
        """The account the importer created for it takes the bank's name (never a user's own account)."""
        created = await self.accounts.get(auto_account_id(akey))
        if created is None or created.get("aggregator_account_id") != aggregator_account_id:
            return
        fields = {k: details[k] for k in ("name", "iban") if details[k]}
        # the balance of a sync's check, newer and checked, is not replaced by this one
        if details["balance"] is not None and created.get("bank_balance_at") is None:
            fields["bank_balance"] = details["balance"]
        changed = {k: v for k, v in fields.items() if created.get(k) != v}
        if changed:
            await self.accounts.set_fields(created["_id"], changed)


# ---- consumer entry points -------------------------------------------------------------------------------


DeadLetter = Callable[[ConsumerRecord[bytes, bytes], str, str], Any]


class RawConsumerHandler:
    """Adapts TopicConsumer batches of `transaction.observed` and `account.synced` to the import path."""

    def __init__(self, importer: Importer) -> None:
        self.importer = importer
        self.dead_letter: DeadLetter | None = None

    async def __call__(self, batch: list[Incoming]) -> None:
        records = [raw_record(i.event, i.data, i.key, i.record) for i in batch]
        result = await self.importer.import_records(records)
        if not result.rejected:
            return
        if len(batch) == 1:
            raise PoisonRecord(result.rejected[0][1])
        assert self.dead_letter is not None
        for raw, reason in result.rejected:
            assert raw.record is not None
            await self.dead_letter(raw.record, f"rejected: {reason}", "rejected")


class DiscoveredConsumerHandler:
    def __init__(self, details: AccountDetails) -> None:
        self.details = details

    async def __call__(self, batch: list[Incoming]) -> None:
        await self.details.apply([i.data for i in batch if isinstance(i.data, AccountDiscovered)])


class CategorizedConsumerHandler:
    def __init__(self, categorizations: Categorizations) -> None:
        self.categorizations = categorizations

    async def __call__(self, batch: list[Incoming]) -> None:
        items = [i.data for i in batch if isinstance(i.data, OperationCategorized)]
        await self.categorizations.apply(items)
