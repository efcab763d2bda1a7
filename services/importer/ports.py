"""What the importer's handlers need from the world, over typed records: its stores (the dedup state of
aggregator accounts, app accounts, operations, categorisation sheets, replay statuses), the announcement
of events and replay requests, and one writer at a time per key in this process. `adapters/` implements
them on MongoDB and Kafka; tests/unit/importer/fakes.py in memory."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from services.importer.domain.accounts import Account, AccountNaming, BankAccountDetails, Link
from services.importer.domain.balances import BalanceStored
from services.importer.domain.events import Keyed
from services.importer.domain.lines import Line, ManualCandidate, StoredState
from services.importer.domain.operations import (
    BankOrigin,
    BankWrite,
    LineMatch,
    ManualEdit,
    OperationPage,
    OperationQuery,
    StoredOperation,
)
from shared.contract.payloads import Bank, OperationCategorized, ReplayRequested


class LineStates(Protocol):
    """The dedup state of each aggregator account (`StoredState`), stored with a compare-and-set."""

    async def load(self, akey: str) -> StoredState: ...

    async def save(self, state: StoredState, user_id: str, lines: Iterable[Line], accounts: set[str]) -> bool:
        """Stores the next revision of `state`; False when another writer stored a newer one first."""
        ...


class Accounts(Protocol):
    """App accounts, the banks and links of a user, and what the connector said of aggregator accounts."""

    async def get(self, account_id: str) -> Account | None: ...

    async def list_accounts(self, user_id: str) -> list[Account]:
        """The user's accounts that are not deleted, by id."""
        ...

    async def insert(self, account: Account) -> Account:
        """Creates the account, or returns the one a concurrent writer created with this id."""
        ...

    async def revive(self, account: Account) -> Account:
        """A deleted account comes back as its next generation, without its balance checks."""
        ...

    async def mark_deleted(self, account_id: str) -> bool:
        """Deleted, without months, manual candidates or balance checks; False when it already was."""
        ...

    async def store_balance(self, account: Account, rev: int, stored: BalanceStored) -> bool:
        """Compare-and-set on the account's generation and check revision `rev` (0: none yet)."""
        ...

    async def count_balance_gaps(self) -> int: ...

    async def add_months(self, account_id: str, months: Iterable[str]) -> None:
        """Lists months the account now has operations in (not for an account from before months)."""
        ...

    async def mark_announced(self, account_id: str, generation: int) -> None: ...

    async def add_sources(self, account_id: str, akeys: Iterable[str]) -> None: ...

    async def add_manual(self, account_id: str, op_id: str, date: dt.date, amount: Decimal) -> None:
        """A manual operation reconcile mode may match."""
        ...

    async def remove_manual(self, account_id: str, op_id: str) -> None: ...

    async def rename(self, account_id: str, naming: AccountNaming) -> None:
        """Sets what `naming` gives (its None fields stay)."""
        ...

    async def put_details(self, details: BankAccountDetails) -> None: ...

    async def get_details(self, akey: str) -> BankAccountDetails | None: ...

    async def ensure_bank(self, user_id: str, bank_id: str, name: str) -> None: ...

    async def list_banks(self, user_id: str) -> list[Bank]: ...

    async def get_link(self, akey: str) -> Link | None: ...

    async def put_link(self, link: Link) -> None: ...

    async def list_links(self, user_id: str) -> list[Link]: ...


class Operations(Protocol):
    """The operations the app shows, with their categorisation (`shown`: the strongest of their own and
    their sheets' entries)."""

    async def shown(self, op_id: str) -> StoredOperation | None: ...

    async def shown_many(self, ids: Iterable[str]) -> dict[str, StoredOperation]: ...

    async def manual_candidates(self, account_id: str, ids: Iterable[str]) -> dict[str, ManualCandidate]:
        """The account's manual operations among `ids`, as reconcile mode sees them."""
        ...

    async def insert_bank(self, origin: BankOrigin, lines: Sequence[Line]) -> None:
        """The operations of new lines, in one bulk; those already there (a re-run) stay as they are."""
        ...

    async def write_bank(
        self,
        origin: BankOrigin,
        updated: Sequence[Line],
        before: Mapping[str, StoredOperation],
        deleted: Sequence[str],
    ) -> BankWrite:
        """The bank's side of changed operations (`before`: as they were), and deletions, in order, in
        small commands; each one only where no revision at or after `origin.rev` wrote it (see BankWrite)."""
        ...

    async def reconcile(self, manual_id: str, match: LineMatch, label: str) -> bool:
        """Marks a manual operation reconciled by a line, unless another line reconciles it."""
        ...

    async def rereconcile(self, manual_id: str, match: LineMatch, label: str) -> None:
        """The line that reconciles a manual operation changed (or another took its place)."""
        ...

    async def release(self, manual_id: str, ref: str, label: str) -> bool:
        """The manual operation is reconciled no more, if the line `ref` still reconciles it."""
        ...

    async def refuse_line(self, op_id: str, ref: str) -> None:
        """Reconcile mode never matches this manual operation with the line `ref` again."""
        ...

    async def insert_manual(self, op: StoredOperation) -> bool:
        """False when an operation with this id is there already."""
        ...

    async def edit_manual(self, op_id: str, edit: ManualEdit, *, unreconciled: bool) -> bool:
        """Stores `edit` of a manual operation (with `unreconciled`: only while no line reconciles it);
        False when no such operation matched."""
        ...

    async def delete_manual(self, op_id: str) -> bool:
        """Deletes a manual operation no line reconciles; False when none such matched."""
        ...

    async def delete_account(self, account_id: str) -> int: ...

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
        """Operations of these accounts that `query` takes, newest first (date, then id), `limit` of
        them after the cursor position."""
        ...

    async def balances(self, user_id: str) -> dict[str, int]:
        """Sum in cents of booked operations per account."""
        ...

    async def booked_cents(self, account_id: str) -> int:
        """Sum in cents of the account's booked operations the bank backs."""
        ...


class CategorizationFiling(Protocol):
    """The categorizer's results, filed in the sheets of an account's month."""

    async def filed_in(self, user_id: str, account_id: str, op_ids: Sequence[str]) -> dict[str, str]:
        """Operation id → the sheet a stored operation of this user and account was filed in."""
        ...

    async def file(
        self, items: Sequence[OperationCategorized], sheets: Mapping[str, str], at: dt.datetime
    ) -> int:
        """Adds each item to its sheet (`sheets`: operation id → sheet; one without is left out);
        returns how many were filed."""
        ...


class Announcements(Protocol):
    """Publishes events on banksync.operations.v1, keyed."""

    async def publish(self, events: Sequence[Keyed]) -> None: ...


class Locks(Protocol):
    """One holder at a time per key in this process; several keys are taken in order."""

    def hold(self, *keys: str) -> AbstractAsyncContextManager[None]: ...


ReplayState = Literal["requested", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class ReplayStatus:
    """How one replay request goes: `requested` (published, its partition's owner has not reached it),
    `running` (by `runner`, the `attempts`-th run), then `succeeded` (with `result`) or `failed` (`error`).
    `processed` of `total`: offsets of the partition read so far, of those to read."""

    replay_id: str
    user_id: str
    aggregator_account_id: str
    since: dt.date | None
    state: ReplayState = "requested"
    requested_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    processed: int = 0
    total: int | None = None
    result: Mapping[str, object] | None = None
    error: str | None = None
    # the process that runs or ran it (`<host>:<pid>`), and where its request record is
    runner: str | None = None
    attempts: int = 0
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class ReplayClaim:
    """One run of a replay request: `run` fences the status updates (a run another one took over from
    stops writing the status), `runner` says which process."""

    run: str
    runner: str
    partition: int
    offset: int
    at: dt.datetime


class ReplayStatuses(Protocol):
    """The status of every replay request, one document each, which any replica reads."""

    async def requested(self, status: ReplayStatus) -> bool:
        """Records a new request; False when one with its id is there already."""
        ...

    async def get(self, replay_id: str) -> ReplayStatus | None: ...

    async def claim(self, request: ReplayRequested, claim: ReplayClaim) -> ReplayStatus | None:
        """Marks the request `running` by `claim` (created if missing, attempts + 1), unless it
        succeeded: then None, and nothing changes."""
        ...

    async def progress(self, replay_id: str, run: str, processed: int, total: int | None) -> bool:
        """False when another run has taken the request over."""
        ...

    async def finish(self, replay_id: str, run: str | None, outcome: ReplayStatus) -> bool:
        """Stores the end of `run` (None: of a request no run has claimed) from `outcome` (state,
        finished_at, counts, result, error); False when another run holds the request."""
        ...

    async def erase_user(self, user_id: str) -> int: ...


class ReplayRequests(Protocol):
    """Publishes `replay.requested` on banksync.transactions.raw.v1, keyed by the account."""

    async def publish(self, request: ReplayRequested, correlation_id: str) -> None: ...
