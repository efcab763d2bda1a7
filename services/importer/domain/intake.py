"""What a raw record is (a bank line, or the bank's balance after a sync), why one cannot be imported,
what a line says as an observation, and the counts of an import: pure rules, no I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from services.importer.domain.balances import BankBalance, balance_is_checked, cents
from services.importer.domain.lines import AccountLines, Observation, version_of
from shared.contract.envelope import CloudEvent, account_key, content_hash
from shared.contract.payloads import AccountSynced, TransactionObserved

# a line not observed for this long can no longer come back from the raw topic (400 days retention)
FORGET_AFTER = dt.timedelta(days=450)
# a bank date this far after the sync that reported it is nonsense, not a pending line
MAX_DAYS_AHEAD = 400


@dataclass(frozen=True)
class RawLine:
    """One `transaction.observed`, validated."""

    event: CloudEvent
    data: TransactionObserved
    key: str

    @property
    def akey(self) -> str:
        return account_key(self.data.user_id, self.data.aggregator_account_id)


@dataclass(frozen=True)
class RawBalance:
    """One `account.synced`, validated: the bank's balance after all the lines of one sync."""

    event: CloudEvent
    data: AccountSynced
    key: str

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


def raw_record(event: CloudEvent, data: BaseModel, key: str) -> RawRecord:
    """The line or the balance a validated raw event is (its `data` validated with IMPORTER_RAW_READS)."""
    if isinstance(data, AccountSynced):
        return RawBalance(event, data, key)
    assert isinstance(data, TransactionObserved)
    return RawLine(event, data, key)


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


def causes(observations: Sequence[Observation], runs: Sequence[str], after: AccountLines) -> dict[str, str]:
    """Transaction id -> the sync run (correlation id, in `runs` beside `observations`) whose observation
    gave the line the version it has in `after`: a batch may hold a newer sync and an older one sent
    again, and the older one changes nothing. A line `after` does not hold keeps its last run."""
    found: dict[str, str] = {}
    settled: set[str] = set()
    for obs, run in zip(observations, runs, strict=True):
        if obs.txid in settled:
            continue
        found[obs.txid] = run
        line = after.lines.get(obs.txid)
        if line is not None and line.version == obs.version:
            settled.add(obs.txid)
    return found


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
