"""What the categorizer's handlers need from the world, as Protocols over typed records.

- `RuleSets`: one rule set per user, changed with compare-and-set on its version, with the payees of
  every version since its past operations were last re-examined (`StoredRules`) and whether a
  re-examination is pending; the lease a re-examination of a user's past operations holds
  (`reexamining`: one replica at a time).
- `Projection`: what this service knows of each operation (`Projected`), written as what each event
  or decision says of it (`Seen`, results, choices, deletions), and the numbers of the user's choices
  (`next_choice`: claimed, never two alike).
- `Transfers`: the operations whose wording is a transfer's (`StoredLeg`) and the links between them,
  with the lease a pairing of a user's legs holds (`pairing`).
- `Categorizations`: the announce port, `operation.categorized` on banksync.categorizations.v1.

The adapters (adapters/mongo.py, adapters/kafka.py) implement them on MongoDB and Kafka; the handler
tests' fakes (tests/unit/categorizer/fakes.py) in memory. Locks and leases are the adapters' business:
the handlers name what must not run twice at once (`Transfers.pairing`), never how.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from services.categorizer.domain.matching import Categorization
from services.categorizer.domain.rules import Payee, RuleSet
from services.categorizer.domain.transfers import TransferLeg
from shared.contract.payloads import OperationCategorized, OperationEvent, TransferRef

T = TypeVar("T")


def operation_key(user_id: str, operation_id: str) -> str:
    """How the handlers and `Projection.get_many` name one operation of one user."""
    return f"{user_id}:{operation_id}"


class ConcurrentUpdate(Exception):
    """Too many writers raced on one user's rules (or on one operation's choice number)."""


class LeaseLost(Exception):
    """Another replica took over a lease this process held (it stalled past the lease's end): stop."""


class Hold(Protocol):
    """A lease this process holds."""

    async def keep(self) -> None:
        """Renews it; LeaseLost when another holder has it now."""
        ...


# ---------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class StoredRules:
    """A user's rule set, the version its past operations were last re-examined at, and the payees
    of every version since then (to tell what an operation was categorised as)."""

    ruleset: RuleSet
    examined_version: int = 0
    snapshots: dict[int, tuple[Payee, ...]] = field(default_factory=dict)

    def payees_at(self, version: int) -> tuple[Payee, ...] | None:
        if version == 0:
            return ()
        return self.snapshots.get(version)

    def kept(self, since: int) -> dict[int, tuple[Payee, ...]]:
        """The snapshots of the versions from `since` to the current one (excluded), in order."""
        return {v: p for v, p in sorted(self.snapshots.items()) if since <= v < self.ruleset.version}


@dataclass(frozen=True)
class RulesStatus:
    rules_version: int
    reexamination_pending: bool


@dataclass(frozen=True)
class Projected:
    """One operation as this service keeps it."""

    user_id: str
    operation_id: str
    account_id: str
    memo: str
    label: str
    seen_version: int
    result: Categorization | None
    manual: Categorization | None
    month: str | None = None  # `YYYY-MM`; None for an operation projected before months were kept
    # how many times the user chose for it (see OperationCategorized.choice_version); 0: never
    choice: int = 0


@dataclass(frozen=True)
class Seen:
    """What an operation event says about one operation, and what it was categorised as."""

    user_id: str
    operation_id: str
    account_id: str
    memo: str
    label: str
    # the rules version and result just published for it; None when nothing was (they stay as they were)
    seen_version: int | None
    result: Categorization | None
    manual: Categorization | None = None  # a manual choice the importer already holds
    month: str | None = None  # the operation's `YYYY-MM`
    # not stored: what a categorisation published again for it (after a racing rule change) carries
    choice: int = 0
    transfer: TransferRef | None = None


@dataclass(frozen=True)
class StoredLeg:
    """An operation whose wording is a transfer's, and the other leg it is linked to (None: none)."""

    user_id: str
    leg: TransferLeg
    month: str
    partner: TransferRef | None = None

    @property
    def operation_id(self) -> str:
        return self.leg.operation_id


@dataclass(frozen=True)
class Categorized:
    """One `operation.categorized` to announce, and the story (correlation id) it belongs to."""

    payload: OperationCategorized
    correlation_id: str


# what the operations topic brings (adapters/kafka.py turns the consumer's records into these)


@dataclass(frozen=True)
class OperationChanged:
    """`operation.imported`, `operation.updated`, `operation.reconciled` or `operation.deleted`."""

    name: str
    event: OperationEvent
    correlation_id: str


@dataclass(frozen=True)
class AccountRemoved:
    """`account.deleted`: the user and account, from the event's data or else its key."""

    user_id: str
    account_id: str
    correlation_id: str


OperationsMessage = OperationChanged | AccountRemoved


# ---------------------------------------------------------------------------------------------------
# Ports


class RuleSets(Protocol):
    async def stored(self, user_id: str) -> StoredRules: ...

    async def get(self, user_id: str) -> RuleSet: ...

    async def versions(self, user_ids: Iterable[str]) -> dict[str, int]:
        """The current version of each user's rules (0 for a user without any)."""
        ...

    async def update(
        self,
        user_id: str,
        command: Callable[[RuleSet], tuple[RuleSet, T]],
        at: datetime,
        correlation_id: str,
        *,
        reexamine: bool,
    ) -> tuple[RuleSet, T]:
        """Applies `command` to the user's current rules and saves what it returns, compare-and-set on
        the version (read again and retried when another writer got there first; ConcurrentUpdate after
        too many); with `reexamine`, the same write marks a re-examination of past operations pending."""
        ...

    async def reexamination_done(self, user_id: str, version: int) -> None:
        """Past operations now reflect `version` (never going back): the pending mark goes unless the
        rules changed again meanwhile, and the snapshots no longer needed go."""
        ...

    async def pending_since(self, before: datetime, limit: int = 100) -> list[str]:
        """Users whose re-examination is pending since before `before` (a crash, another replica)."""
        ...

    async def status(self, user_id: str) -> RulesStatus: ...

    async def correlation_id(self, user_id: str) -> str | None:
        """The correlation id of the last change of the user's rules."""
        ...

    def reexamining(self, user_id: str) -> AbstractAsyncContextManager[Hold | None]:
        """Held while the user's past operations are re-examined: one replica at a time (None: another
        one is at it now)."""
        ...


class Projection(Protocol):
    async def get(self, user_id: str, operation_id: str) -> Projected | None: ...

    async def get_many(self, operations: Iterable[tuple[str, str, str, str | None]]) -> dict[str, Projected]:
        """(user, account, operation, month) → the projected operation, by `operation_key`."""
        ...

    def of_user(self, user_id: str) -> AsyncIterator[Projected]: ...

    async def write_seen(self, seen: Sequence[Seen], at: datetime) -> None:
        """What a batch says of each operation, in order (a `Seen` without a result keeps the result)."""
        ...

    async def set_seen_version(self, items: Sequence[tuple[Seen, int, Categorization]], at: datetime) -> None:
        """(operation, version, result): categorised again after a rule change raced with it."""
        ...

    async def set_results(self, items: Sequence[tuple[Projected, int, Categorization]], at: datetime) -> None:
        """(operation, version, result) published for operations outside a batch (a transfer's leg)."""
        ...

    async def set_choice(
        self,
        op: Projected,
        manual: Categorization | None,
        choice: int,
        at: datetime,
        seen: tuple[int, Categorization] | None = None,
    ) -> None:
        """The user's choice (`manual`), or none any more (then `seen`: the rules' version and result)."""
        ...

    async def next_choice(self, op: Projected, at: datetime) -> int:
        """The operation's next choice number (above `op.choice`), claimed: two corrections of one
        operation made at once (on two replicas) never get the same, so the later number wins."""
        ...

    async def delete(
        self, user_id: str, account_id: str, month: str | None, operation_ids: Sequence[str], at: datetime
    ) -> None: ...

    async def delete_account(self, user_id: str, account_id: str) -> int: ...


class Transfers(Protocol):
    def pairing(self, user_ids: Sequence[str]) -> AbstractAsyncContextManager[None]:
        """Held while the users' legs are paired (read, pair, publish, write): never twice at once."""
        ...

    async def put(self, legs: Sequence[tuple[str, TransferLeg, str]], at: datetime) -> None:
        """(user, leg, month): stored or updated (the link they had stays)."""
        ...

    async def of_user(self, user_id: str) -> dict[str, StoredLeg]:
        """Operation id → the user's leg."""
        ...

    async def get(self, user_id: str, operation_id: str) -> StoredLeg | None: ...

    async def write(
        self, user_id: str, links: dict[str, TransferRef | None], gone: Iterable[str], at: datetime
    ) -> None:
        """Sets the links that changed (operation id → the other leg, or None) and forgets legs that went."""
        ...

    async def delete_account(self, user_id: str, account_id: str) -> int: ...


class Categorizations(Protocol):
    async def announce(self, items: Sequence[Categorized]) -> None:
        """Publishes them all (per operation, in this order), and returns once every one is acknowledged."""
        ...
