"""What each operation event, each rule change and each correction does.

- Operation events (`banksync.operations.v1`): each `operation.imported` (and each
  `operation.updated`/`operation.reconciled` whose memo or label changed) gets exactly one
  `operation.categorized`, computed with the user's current rules, and the projection records the
  rules version used (`seen_version`). Then the rules version is read again: when a rule change
  raced with the event, the operation is categorised again with the new rules, so no operation
  keeps a result of rules that a re-examination did not compare it with.
- Rule changes (payees, keywords, categories) are compare-and-set writes of the user's one rule-set
  document, which also marks a re-examination as pending. The re-examination reads the user's past
  operations from the projection and, for each one that is not manual, compares what the rules it
  was last categorised with said (kept as snapshots in the rule-set document) with what today's
  rules say; it publishes a new categorisation only where they differ. It runs in this process at
  once, and a background scan picks up any that a crash or another replica left pending.
- Compiled matchers are cached per user and version; the built-in dictionary is compiled once.
- Transfers between the user's own accounts: an operation whose wording is a transfer's is a "leg"
  (`categorizer_transfers`, adapters.TransferRepository). Per batch and user: the batch's legs are
  written, the user's legs read (one indexed read), paired (`domain.match_transfers`: a function of
  the set, so the order the legs came in, a redelivery or a replay change nothing), and every operation
  whose link changed, in the batch or not, gets a categorisation carrying `transfer` (the other leg)
  and `epargne` unless the user chose; the links are written after that publish. A deleted operation
  or account unlinks its other legs the same way. Legs are never paired twice in a process at once
  (a lock per user); two replicas racing with the two legs of one transfer each write before they read.
- The user's choice (`correct`): a payee, a category alone, or forgetting the choice (`clear`). Each
  raises the operation's `choice` number, which every later categorisation of it carries
  (`choice_version`): the importer keeps the highest, and manual over rules among equals, so a
  forgotten choice gives way to the rules' result and a choice is never overwritten by rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, TypeVar

from services.categorizer.adapters import (
    OperationsRepository,
    Projected,
    RuleSetRepository,
    Seen,
    StoredLeg,
    StoredRules,
    TransferRepository,
    operation_key,
)
from services.categorizer.domain import (
    EMPTY_MATCHER,
    Categorization,
    Dictionary,
    DuplicateKeyword,
    Matcher,
    Payee,
    PayeeDraft,
    RuleError,
    RuleSet,
    TransferLeg,
    UnknownCategory,
    add_payee,
    analyse,
    categorize_memo,
    is_transfer_memo,
    match_transfers,
    memo_text,
    normalise,
    shown,
    suggest_keywords,
)
from shared.consumer import Incoming, PoisonRecord
from shared.contract.envelope import (
    HAS_CATEGORY,
    CloudEvent,
    account_key,
    content_hash,
    deterministic_event_id,
)
from shared.contract.payloads import Operation, OperationCategorized, OperationEvent, PayeeRef, TransferRef
from shared.contract.topics import CATEGORIZATIONS
from shared.logging import get_logger
from shared.sheets import month_of

SERVICE = "categorizer"
log = get_logger(__name__)
T = TypeVar("T")

CATEGORIZING_EVENTS = frozenset(("operation.imported", "operation.updated", "operation.reconciled"))
PUBLISH_CHUNK = 2000


class Publisher(Protocol):
    """shared.batch_publisher.BatchPublisher (or shared.kafka.EventPublisher)."""

    async def publish(self, topic: str, key: str, event: CloudEvent) -> None: ...

    async def publish_many(self, topic: str, items: list[tuple[str, CloudEvent]]) -> None: ...


class ConcurrentUpdate(Exception):
    """Too many writers raced on one user's rules."""


class OperationNotFound(Exception):
    """No operation with this id for this user in the projection."""


class MatcherCache:
    """Compiled automatons by (user, version), LRU-bounded; a version's payees never change."""

    def __init__(self, size: int = 5000) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int], Matcher] = OrderedDict()
        self.compiled = 0

    def peek(self, user_id: str, version: int) -> Matcher | None:
        if version == 0:
            return EMPTY_MATCHER
        found = self._items.get((user_id, version))
        if found is not None:
            self._items.move_to_end((user_id, version))
        return found

    def put(self, user_id: str, version: int, payees: Sequence[Payee]) -> Matcher:
        found = self.peek(user_id, version)
        if found is not None:
            return found
        matcher = Matcher(rule for payee in payees for rule in payee.rules()) if payees else EMPTY_MATCHER
        self.compiled += 1
        self._items[(user_id, version)] = matcher
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return matcher

    def of(self, ruleset: RuleSet) -> Matcher:
        return self.put(ruleset.user_id, ruleset.version, ruleset.payees)


def categorized_event(
    user_id: str,
    account_id: str,
    operation_id: str,
    result: Categorization,
    rules_version: int,
    correlation_id: str,
    month: str | None = None,
    *,
    transfer: TransferRef | None = None,
    choice: int = 0,
) -> CloudEvent:
    payee = (
        PayeeRef(id=result.payee_id, name=result.payee_name or "") if result.payee_id is not None else None
    )
    data = OperationCategorized(
        user_id=user_id,
        account_id=account_id,
        operation_id=operation_id,
        payee=payee,
        category=result.category,
        source=result.source,
        keyword=result.keyword,
        rules_version=rules_version,
        month=month,
        transfer=transfer,
        choice_version=choice,
    ).model_dump(mode="json")
    # the month only files the result (the importer's categorisation sheets): not part of the fact
    fact = {k: v for k, v in data.items() if k != "month"}
    return CloudEvent.new(
        service=SERVICE,
        name="operation.categorized",
        data=data,
        user_id=user_id,
        correlation_id=correlation_id,
        subject=operation_id,
        # the same result of the same rules for the same operation is the same fact
        event_id=deterministic_event_id(
            "operation.categorized", user_id, operation_id, str(rules_version), content_hash(fact)
        ),
        # in clear beside the sealed data: the dashboard's categorised share needs no user's key
        extensions={HAS_CATEGORY: "true" if result.category is not None else "false"},
    )


def transfer_leg(op: Operation) -> TransferLeg | None:
    """The operation as a possible leg of a transfer, when its wording is a transfer's."""
    if not is_transfer_memo(op.memo, op.label):
        return None
    try:
        cents = int((Decimal(op.amount) * 100).to_integral_value())
    except InvalidOperation:
        return None
    return TransferLeg(op.id, op.account_id, op.currency, cents, op.date)


def manual_of(event: OperationEvent) -> Categorization | None:
    """A manual choice the importer already holds (made in the app, not through this service)."""
    op = event.operation
    if op.categorized_by is None or op.categorized_by.source != "manual":
        return None
    return Categorization(
        payee_id=op.payee.id if op.payee else op.categorized_by.payee_id,
        payee_name=op.payee.name if op.payee else None,
        category=op.category,
        source="manual",
        keyword=None,
    )


@dataclass
class ReexaminationReport:
    user_id: str
    rules_version: int
    examined: int = 0
    changed: int = 0
    seconds: float = 0.0


@dataclass
class _Pending:
    """One categorisation to publish."""

    user_id: str
    account_id: str
    operation_id: str
    result: Categorization
    version: int
    correlation_id: str
    month: str | None = None  # the operation's `YYYY-MM`, where the importer files the result
    transfer: TransferRef | None = None  # the other leg of a transfer
    choice: int = 0  # the operation's choice number (see OperationCategorized.choice_version)


@dataclass(frozen=True)
class _Step:
    """One operation event of a batch, as the batch's first pass saw it."""

    incoming: Incoming
    event: OperationEvent
    key: str
    manual: Categorization | None
    choice: int
    publish: bool


@dataclass
class _Relinked:
    """One user's legs after a batch: `kept` (as stored before), the links now (operation id → other
    leg), those that changed (None: no link any more), and the legs that went."""

    user_id: str
    kept: dict[str, StoredLeg]
    now: dict[str, TransferRef]
    changed: dict[str, TransferRef | None]
    gone: set[str]
    # legs that went while linked (their own categorisation loses its link)
    unlinked_gone: set[str]


@dataclass
class CategorizerHandlers:
    rulesets: RuleSetRepository
    operations: OperationsRepository
    publisher: Publisher
    dictionary: Dictionary
    places: frozenset[str] = frozenset()
    # transfers between the user's own accounts: not detected without it (benchmarks of the rules)
    transfers: TransferRepository | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    cache: MatcherCache = field(default_factory=MatcherCache)
    recovery_delay_s: float = 5.0

    def __post_init__(self) -> None:
        self._pending: dict[str, int] = {}  # user -> the rules version its past operations must reflect
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        # FerretDB v1 applies an update to the document as its query read it, outside the write's
        # transaction: two concurrent updates of one document can lose one. So this process never
        # runs two at once on a user's rule set, nor on the projection's existing documents.
        self._rules_locks: dict[str, asyncio.Lock] = {}
        self._projection_lock = asyncio.Lock()
        # one pairing of a user's transfer legs at a time in this process (read, pair, publish, write)
        self._transfer_locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------------------------------
    # Rules

    async def ruleset(self, user_id: str) -> RuleSet:
        return await self.rulesets.get(user_id)

    async def matcher(self, user_id: str, version: int | None = None) -> tuple[int, Matcher]:
        """The user's compiled rules; `version` (when known) saves reading the whole rule set."""
        if version is not None:
            cached = self.cache.peek(user_id, version)
            if cached is not None:
                return version, cached
        ruleset = await self.rulesets.get(user_id)
        return ruleset.version, self.cache.of(ruleset)

    async def change(
        self,
        user_id: str,
        command: Callable[[RuleSet], tuple[RuleSet, T]],
        correlation_id: str,
        *,
        reexamine: bool = True,
    ) -> tuple[RuleSet, T]:
        """Runs a rule command with compare-and-set; a re-examination follows unless told otherwise."""
        async with self._rules_lock(user_id):
            for _ in range(10):
                current = await self.rulesets.stored(user_id)
                after, answer = command(current.ruleset)
                saved = await self.rulesets.save(
                    current, after, self.clock(), correlation_id, reexamine=reexamine
                )
                if saved:
                    log.info("rules_changed", user_id=user_id, rules_version=after.version)
                    if reexamine:
                        self.request_reexamination(user_id, after.version)
                    return after, answer
        raise ConcurrentUpdate(user_id)

    def _rules_lock(self, user_id: str) -> asyncio.Lock:
        lock = self._rules_locks.get(user_id)
        if lock is None:
            lock = self._rules_locks[user_id] = asyncio.Lock()
        return lock

    # ------------------------------------------------------------------------------------------
    # Operation events

    async def on_operations(self, batch: list[Incoming]) -> None:
        group: list[Incoming] = []
        for incoming in batch:
            name = incoming.event.name
            if name in CATEGORIZING_EVENTS:
                group.append(incoming)
                continue
            await self._categorize_group(group)
            group = []
            if name == "operation.deleted":
                event = _operation_event(incoming)
                op = event.operation
                await self.operations.delete(
                    event.user_id, op.account_id, month_of(op.date), [op.id], self.clock()
                )
                if transfer_leg(op) is not None:
                    await self._forget_legs(event.user_id, incoming.event.correlationid, operation_id=op.id)
                log.info("operation_forgotten", user_id=event.user_id, operation_id=event.operation.id)
            elif name == "account.deleted":
                user_id, account_id = account_of(incoming)
                await self._forget_legs(user_id, incoming.event.correlationid, account_id=account_id)
                removed = await self.operations.delete_account(user_id, account_id)
                log.info("account_forgotten", user_id=user_id, account_id=account_id, operations=removed)
        await self._categorize_group(group)

    async def _categorize_group(self, group: list[Incoming]) -> None:
        if not group:
            return
        events = [(incoming, _operation_event(incoming)) for incoming in group]
        existing = await self.operations.get_many(
            (e.user_id, e.operation.account_id, e.operation.id, month_of(e.operation.date)) for _, e in events
        )
        users = {e.user_id for _, e in events}
        rules = {
            user: await self.matcher(user, version)
            for user, version in (await self.rulesets.versions(users)).items()
        }
        # what the operations were before this group, updated event by event (an account's are in order)
        state: dict[str, tuple[str, str, Categorization | None, int]] = {
            key: (p.memo, p.label, p.manual, p.choice) for key, p in existing.items()
        }
        steps: list[_Step] = []
        legs: dict[str, dict[str, tuple[TransferLeg, str]]] = {}
        not_legs: dict[str, set[str]] = {}
        for incoming, event in events:
            op = event.operation
            key = operation_key(event.user_id, op.id)
            before = state.get(key)
            choice = before[3] if before else 0
            # once the user chose through this service, its own record of the choice is the truth
            adopted = manual_of(event) if choice == 0 else None
            manual = adopted or (before[2] if before else None)
            changed = before is None or (before[0], before[1]) != (op.memo, op.label)
            state[key] = (op.memo, op.label, manual, choice)
            publish = incoming.event.name == "operation.imported" or (changed and manual is None)
            steps.append(_Step(incoming, event, key, manual, choice, publish))
            if self.transfers is None:
                continue
            leg = transfer_leg(op)
            own_legs = legs.setdefault(event.user_id, {})
            if leg is not None:
                own_legs[op.id] = (leg, month_of(op.date))
                not_legs.get(event.user_id, set()).discard(op.id)
            else:
                own_legs.pop(op.id, None)
                if incoming.event.name != "operation.imported":
                    not_legs.setdefault(event.user_id, set()).add(op.id)
        relinking = sorted(u for u in users if legs.get(u) or not_legs.get(u))
        async with contextlib.AsyncExitStack() as held:
            for user in relinking:
                await held.enter_async_context(self._transfer_lock(user))
            relinked = {
                user: await self._relink(user, legs.get(user, {}), not_legs.get(user, set()))
                for user in relinking
            }
            links = {operation_key(u, op): ref for u, r in relinked.items() for op, ref in r.now.items()}
            moved = {
                operation_key(u, op) for u, r in relinked.items() for op in (*r.changed, *r.unlinked_gone)
            }
            seen: list[Seen] = []
            pending: list[_Pending] = []
            for step in steps:
                op, user = step.event.operation, step.event.user_id
                month = month_of(op.date)
                link = links.get(step.key)
                if not (step.publish or step.key in moved):
                    seen.append(
                        Seen(user, op.id, op.account_id, op.memo, op.label, None, None, step.manual, month)
                    )
                    continue
                version, matcher = rules[user]
                result = self.categorize(op.memo, op.label, matcher)
                seen.append(
                    Seen(
                        user,
                        op.id,
                        op.account_id,
                        op.memo,
                        op.label,
                        version,
                        result,
                        step.manual,
                        month,
                        choice=step.choice,
                        transfer=link,
                    )
                )
                pending.append(
                    _Pending(
                        user,
                        op.account_id,
                        op.id,
                        shown(result, step.manual, link is not None),
                        version,
                        step.incoming.event.correlationid,
                        month,
                        link,
                        step.choice,
                    )
                )
            in_batch = {step.key for step in steps}
            correlations = {step.event.user_id: step.incoming.event.correlationid for step in steps}
            outside = [
                (u, r.kept[op])
                for u, r in relinked.items()
                for op in r.changed
                if operation_key(u, op) not in in_batch
            ]
            others, results, others_seen = await self._others(outside, links, rules, correlations)
            async with self._projection_lock:
                await self.operations.write_seen(seen, self.clock())
                await self.operations.set_results(results, self.clock())
            await self._publish([*pending, *others])
            for r in relinked.values():
                await self._save_links(r)
        await self._catch_up([*seen, *others_seen], rules)

    # ------------------------------------------------------------------------------------------
    # Transfers between the user's own accounts

    def _transfer_lock(self, user_id: str) -> asyncio.Lock:
        lock = self._transfer_locks.get(user_id)
        if lock is None:
            lock = self._transfer_locks[user_id] = asyncio.Lock()
        return lock

    async def _relink(
        self,
        user_id: str,
        legs: dict[str, tuple[TransferLeg, str]],
        not_legs: set[str],
        account_id: str | None = None,
    ) -> _Relinked:
        """Stores a batch's legs, reads the user's and pairs them again (nothing written about links:
        `_save_links`, once the changes are published). `not_legs`: operations that may have been legs
        and are not any more (deleted, or their wording changed); `account_id`: a deleted account."""
        assert self.transfers is not None
        if legs:
            await self.transfers.put([(user_id, leg, month) for leg, month in legs.values()], self.clock())
        stored = await self.transfers.of_user(user_id)
        gone = {op for op in not_legs if op in stored and op not in legs}
        if account_id is not None:
            gone |= {op for op, leg in stored.items() if leg.leg.account_id == account_id}
        kept = {op: leg for op, leg in stored.items() if op not in gone}
        paired = match_transfers(leg.leg for leg in kept.values())
        now = {
            op: TransferRef(operation_id=other, account_id=kept[other].leg.account_id)
            for op, other in paired.items()
        }
        changed = {op: now.get(op) for op, leg in kept.items() if leg.partner != now.get(op)}
        unlinked_gone = {op for op in gone if stored[op].partner is not None}
        return _Relinked(user_id, kept, now, changed, gone, unlinked_gone)

    async def _save_links(self, relinked: _Relinked, account_id: str | None = None) -> None:
        assert self.transfers is not None
        if relinked.changed or relinked.gone:
            await self.transfers.write(relinked.user_id, relinked.changed, relinked.gone, self.clock())
        if account_id is not None:
            await self.transfers.delete_account(relinked.user_id, account_id)
        if relinked.changed:
            log.info(
                "transfers_linked",
                user_id=relinked.user_id,
                linked=sum(1 for ref in relinked.changed.values() if ref is not None),
                unlinked=sum(1 for ref in relinked.changed.values() if ref is None),
            )

    async def _others(
        self,
        legs: Sequence[tuple[str, StoredLeg]],
        links: dict[str, TransferRef],
        rules: dict[str, tuple[int, Matcher]],
        correlations: dict[str, str],
    ) -> tuple[list[_Pending], list[tuple[Projected, int, Categorization]], list[Seen]]:
        """The categorisations of operations outside a batch whose link changed (one read per sheet):
        what to publish, what the projection records of it, and what `_catch_up` looks at again."""
        if not legs:
            return [], [], []
        found = await self.operations.get_many(
            (user, leg.leg.account_id, leg.operation_id, leg.month) for user, leg in legs
        )
        pending: list[_Pending] = []
        results: list[tuple[Projected, int, Categorization]] = []
        seen: list[Seen] = []
        for user, leg in legs:
            op = found.get(operation_key(user, leg.operation_id))
            if op is None:
                log.warning("transfer_leg_not_projected", user_id=user, operation_id=leg.operation_id)
                continue
            if user not in rules:
                rules[user] = await self.matcher(user)
            version, matcher = rules[user]
            result = self.categorize(op.memo, op.label, matcher)
            link = links.get(operation_key(user, op.operation_id))
            pending.append(
                _Pending(
                    user,
                    op.account_id,
                    op.operation_id,
                    shown(result, op.manual, link is not None),
                    version,
                    correlations.get(user) or f"transfers:{user}",
                    op.month,
                    link,
                    op.choice,
                )
            )
            results.append((op, version, result))
            seen.append(
                Seen(
                    user,
                    op.operation_id,
                    op.account_id,
                    op.memo,
                    op.label,
                    version,
                    result,
                    op.manual,
                    op.month,
                    choice=op.choice,
                    transfer=link,
                )
            )
        return pending, results, seen

    async def _forget_legs(
        self,
        user_id: str,
        correlation_id: str,
        *,
        operation_id: str | None = None,
        account_id: str | None = None,
    ) -> None:
        """A deleted operation, or a deleted account's: their other legs lose their link (or find another)."""
        if self.transfers is None:
            return
        async with self._transfer_lock(user_id):
            relinked = await self._relink(
                user_id, {}, {operation_id} if operation_id else set(), account_id=account_id
            )
            if not relinked.gone:
                return
            links = {operation_key(user_id, op): ref for op, ref in relinked.now.items()}
            rules: dict[str, tuple[int, Matcher]] = {}
            others, results, seen = await self._others(
                [(user_id, relinked.kept[op]) for op in relinked.changed],
                links,
                rules,
                {user_id: correlation_id},
            )
            async with self._projection_lock:
                await self.operations.set_results(results, self.clock())
            await self._publish(others)
            await self._save_links(relinked, account_id)
        await self._catch_up(seen, rules)

    async def _catch_up(self, seen: list[Seen], used: dict[str, tuple[int, Matcher]]) -> None:
        """Categorises again what a rule change raced with (it read the projection before we wrote)."""
        for _ in range(5):
            now = await self.rulesets.versions(used)
            moved = {user for user, version in now.items() if version != used[user][0]}
            if not moved:
                return
            used = {
                user: await self.matcher(user, now[user]) if user in moved else used[user] for user in used
            }
            again = [
                s for s in seen if s.user_id in moved and s.manual is None and s.seen_version is not None
            ]
            redone = []
            for item in again:
                version, matcher = used[item.user_id]
                redone.append((item, version, self.categorize(item.memo, item.label, matcher)))
            async with self._projection_lock:
                await self.operations.set_seen_version(redone, self.clock())
            await self._publish(
                [
                    _Pending(
                        s.user_id,
                        s.account_id,
                        s.operation_id,
                        shown(r, None, s.transfer is not None),
                        v,
                        f"rules:{s.user_id}:{v}",
                        s.month,
                        s.transfer,
                        s.choice,
                    )
                    for s, v, r in redone
                ]
            )
            seen = [s for s in seen if s.user_id in moved]

    def categorize(self, memo: str, label: str, matcher: Matcher) -> Categorization:
        return categorize_memo(analyse(memo_text(memo, label)), matcher, self.dictionary)

    async def _publish(self, pending: Sequence[_Pending]) -> None:
        # one line per sync (correlation) and user: a batch mixes several, the log context holds one
        stories: dict[tuple[str, str], list[_Pending]] = {}
        for p in pending:
            stories.setdefault((p.user_id, p.correlation_id), []).append(p)
        for (user_id, correlation_id), items in stories.items():
            log.info(
                "operations_categorized",
                user_id=user_id,
                correlation_id=correlation_id,
                operations=len(items),
                recognised=sum(1 for p in items if p.result.recognised),
            )
        for start in range(0, len(pending), PUBLISH_CHUNK):
            chunk = pending[start : start + PUBLISH_CHUNK]
            await self.publisher.publish_many(
                CATEGORIZATIONS,
                [
                    (
                        account_key(p.user_id, p.account_id),
                        categorized_event(
                            p.user_id,
                            p.account_id,
                            p.operation_id,
                            p.result,
                            p.version,
                            p.correlation_id,
                            p.month,
                            transfer=p.transfer,
                            choice=p.choice,
                        ),
                    )
                    for p in chunk
                ],
            )

    # ------------------------------------------------------------------------------------------
    # Re-examination of past operations after a rule change

    def request_reexamination(self, user_id: str, version: int = 0) -> None:
        self._pending[user_id] = max(version, self._pending.get(user_id, 0))
        self._wake.set()

    def _lock(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    def _matcher_at(self, stored: StoredRules, version: int) -> Matcher | None:
        payees = stored.payees_at(version)
        if payees is None:
            return None
        return self.cache.put(stored.ruleset.user_id, version, payees)

    async def reexamine(self, user_id: str) -> ReexaminationReport:
        """Publishes a new categorisation for each past operation whose result changed (never manual)."""
        async with self._lock(user_id):
            loop = asyncio.get_running_loop()
            started = loop.time()
            stored = await self.rulesets.stored(user_id)
            ruleset = stored.ruleset
            today = self.cache.of(ruleset)
            correlation_id = await self.rulesets.correlation_id(user_id) or f"rules:{user_id}"
            report = ReexaminationReport(user_id, ruleset.version)
            pending: list[_Pending] = []
            # a leg of a transfer is `epargne` whatever the rules say (one read of the user's legs)
            legs = {} if self.transfers is None else await self.transfers.of_user(user_id)
            linked = {op_id for op_id, leg in legs.items() if leg.partner is not None}
            async for op in self.operations.of_user(user_id):
                if op.manual is not None or op.operation_id in linked:
                    continue
                base_version = max(op.seen_version, stored.examined_version)
                if base_version >= ruleset.version:
                    continue
                report.examined += 1
                text = analyse(memo_text(op.memo, op.label))
                now = categorize_memo(text, today, self.dictionary)
                base = self._matcher_at(stored, base_version)
                if base is None or categorize_memo(text, base, self.dictionary) != now:
                    pending.append(
                        _Pending(
                            user_id,
                            op.account_id,
                            op.operation_id,
                            now,
                            ruleset.version,
                            correlation_id,
                            op.month,
                            choice=op.choice,
                        )
                    )
                    if len(pending) >= PUBLISH_CHUNK:
                        # published as found: the importer stores them while the rest is read
                        await self._publish(pending)
                        report.changed += len(pending)
                        pending = []
            await self._publish(pending)
            report.changed += len(pending)
            async with self._rules_lock(user_id):
                await self.rulesets.reexamination_done(user_id, ruleset.version)
            report.seconds = loop.time() - started
            log.info(
                "operations_reexamined",
                user_id=user_id,
                rules_version=ruleset.version,
                examined=report.examined,
                changed=report.changed,
                seconds=round(report.seconds, 3),
            )
            return report

    async def run_reexaminer(self, recovery_every_s: float = 2.0) -> None:
        """Background job: re-examines users as their rules change, and recovers what was left pending."""
        next_scan = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() >= next_scan:
                    before = self.clock() - timedelta(seconds=self.recovery_delay_s)
                    for user_id in await self.rulesets.pending_since(before):
                        self.request_reexamination(user_id)
                    next_scan = loop.time() + recovery_every_s
                while self._pending:
                    user_id = next(iter(self._pending))
                    wanted = self._pending.pop(user_id)
                    try:
                        report = await self.reexamine(user_id)
                        if report.rules_version < wanted:
                            # a read older than the change that asked for it: again, shortly
                            self.request_reexamination(user_id, wanted)
                            await asyncio.sleep(0.05)
                    except Exception as exc:
                        log.warning("reexamination_failed", user_id=user_id, error=repr(exc))
                        # still pending in MongoDB: the next recovery scan retries it
            except Exception as exc:
                log.warning("reexaminer_failed", error=repr(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=recovery_every_s)

    # ------------------------------------------------------------------------------------------
    # Corrections and preview

    async def operation(self, user_id: str, operation_id: str) -> Projected:
        found = await self.operations.get(user_id, operation_id)
        if found is None:
            raise OperationNotFound(operation_id)
        return found

    async def correct(
        self,
        user_id: str,
        operation_id: str,
        correlation_id: str,
        *,
        payee_id: str | None = None,
        new_payee: PayeeDraft | None = None,
        keywords_given: bool = True,
        category: str | None = None,
        clear: bool = False,
    ) -> dict[str, Any]:
        """The user's choice for one operation: an existing payee, one created from the operation, or a
        category alone (no payee); or, with `clear`, no choice any more: the rules apply again (and a
        transfer's `epargne`). Published like any categorisation, with the operation's next `choice`."""
        op = await self.operation(user_id, operation_id)
        suggestions = suggest_keywords(memo_text(op.memo, op.label), self.places)
        created = False
        payee: Payee | None = None
        ruleset = await self.rulesets.get(user_id)
        if clear:
            version, matcher = await self.matcher(user_id, ruleset.version)
            rules_result = self.categorize(op.memo, op.label, matcher)
        elif category is not None:
            if not ruleset.known_category(category):
                raise UnknownCategory(
                    f"No category {category!r}: use a default category (GET /v1/categories) "
                    "or create it first (POST /v1/users/{user_id}/categories)."
                )
        elif payee_id is not None:
            payee = ruleset.payee(payee_id)
        else:
            assert new_payee is not None
            draft = new_payee
            if not keywords_given:
                draft = PayeeDraft(new_payee.name, new_payee.category, suggestions[:1])
            new_id = str(uuid.uuid4())

            def create(current: RuleSet) -> tuple[RuleSet, Payee]:
                try:
                    return add_payee(current, draft, new_id)
                except DuplicateKeyword:
                    if keywords_given:
                        raise
                    # a suggestion another payee already has: create it without keywords
                    return add_payee(current, PayeeDraft(draft.name, draft.category, ()), new_id)

            ruleset, payee = await self.change(user_id, create, correlation_id, reexamine=False)
            created = True
        leg = None if self.transfers is None else await self.transfers.get(user_id, operation_id)
        link = None if leg is None else leg.partner
        choice = op.choice + 1
        if clear:
            result = shown(rules_result, None, link is not None)
            async with self._projection_lock:
                await self.operations.set_choice(op, None, choice, self.clock(), seen=(version, rules_result))
            if result.source == "user" and result.payee_id is not None:
                with contextlib.suppress(RuleError):
                    payee = ruleset.payee(result.payee_id)
        else:
            if payee is not None:
                result = Categorization(payee.id, payee.name, payee.category, "manual", None)
            else:
                result = Categorization(category=category, source="manual")
            async with self._projection_lock:
                await self.operations.set_choice(op, result, choice, self.clock())
        await self.publisher.publish(
            CATEGORIZATIONS,
            account_key(user_id, op.account_id),
            categorized_event(
                user_id,
                op.account_id,
                operation_id,
                result,
                ruleset.version,
                correlation_id,
                op.month,
                transfer=link,
                choice=choice,
            ),
        )
        if created:
            self.request_reexamination(user_id, ruleset.version)
        matching = await self.count_matching(user_id, suggestions, exclude=operation_id)
        return {
            "operation_id": operation_id,
            "payee": payee,
            "category": result.category,
            "source": result.source,
            "rules_version": ruleset.version,
            "suggested_keywords": suggestions,
            "matching_operations": matching,
            "transfer": link,
        }

    async def count_matching(self, user_id: str, keywords: Sequence[str], exclude: str = "") -> int:
        """How many of the user's other operations (not manual ones) these keywords would recognise."""
        if not keywords:
            return 0
        probe = Matcher(Payee("probe", "probe", "divers", tuple(k for k in keywords if normalise(k))).rules())
        count = 0
        async for op in self.operations.of_user(user_id):
            if op.operation_id == exclude or op.manual is not None:
                continue
            if probe.matches(normalise(memo_text(op.memo, op.label))):
                count += 1
        return count

    async def preview(self, user_id: str, memos: Sequence[str]) -> list[dict[str, Any]]:
        _, matcher = await self.matcher(user_id)
        answers = []
        for memo in memos:
            result = categorize_memo(analyse(memo), matcher, self.dictionary)
            answers.append(
                {
                    "memo": memo,
                    "payee": None
                    if result.payee_id is None
                    else {"id": result.payee_id, "name": result.payee_name},
                    "category": result.category,
                    "source": result.source,
                    "keyword": result.keyword,
                }
            )
        return answers


def _operation_event(incoming: Incoming) -> OperationEvent:
    assert isinstance(incoming.data, OperationEvent)
    return incoming.data


def account_of(incoming: Incoming) -> tuple[str, str]:
    """The user and account of an `account.*` event: from its data when it says, else from its key."""
    data = incoming.data.model_dump()
    found = data.get("account")
    account: dict[str, Any] = found if isinstance(found, dict) else {}
    user_id = data.get("user_id") or incoming.event.userid
    account_id = data.get("account_id") or account.get("account_id") or account.get("id")
    if not account_id and ":" in incoming.key:
        account_id = incoming.key.split(":", 1)[1]
    if not account_id:
        raise PoisonRecord("account event without an account id (in its data or its key)")
    return str(user_id), str(account_id)
