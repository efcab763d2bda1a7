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
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from services.categorizer.adapters import (
    OperationsRepository,
    Projected,
    RuleSetRepository,
    Seen,
    StoredRules,
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
    RuleSet,
    add_payee,
    analyse,
    categorize_memo,
    memo_text,
    normalise,
    suggest_keywords,
)
from shared.consumer import Incoming, PoisonRecord
from shared.events import CloudEvent, account_key, content_hash, deterministic_event_id
from shared.logging import get_logger
from shared.schemas import OperationCategorized, OperationEvent, PayeeRef
from shared.sheets import month_of
from shared.topics import CATEGORIZATIONS

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
    )


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


@dataclass
class CategorizerHandlers:
    rulesets: RuleSetRepository
    operations: OperationsRepository
    publisher: Publisher
    dictionary: Dictionary
    places: frozenset[str] = frozenset()
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
                log.info("operation_forgotten", user_id=event.user_id, operation_id=event.operation.id)
            elif name == "account.deleted":
                user_id, account_id = account_of(incoming)
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
        state: dict[str, tuple[str, str, Categorization | None]] = {
            key: (p.memo, p.label, p.manual) for key, p in existing.items()
        }
        seen: list[Seen] = []
        pending: list[_Pending] = []
        for incoming, event in events:
            op = event.operation
            month = month_of(op.date)
            key = operation_key(event.user_id, op.id)
            before = state.get(key)
            manual = manual_of(event) or (before[2] if before else None)
            changed = before is None or (before[0], before[1]) != (op.memo, op.label)
            state[key] = (op.memo, op.label, manual)
            version, matcher = rules[event.user_id]
            publish = incoming.event.name == "operation.imported" or (changed and manual is None)
            if not publish:
                seen.append(
                    Seen(event.user_id, op.id, op.account_id, op.memo, op.label, None, None, manual, month)
                )
                continue
            result = self.categorize(op.memo, op.label, matcher)
            seen.append(
                Seen(event.user_id, op.id, op.account_id, op.memo, op.label, version, result, manual, month)
            )
            pending.append(
                _Pending(
                    event.user_id,
                    op.account_id,
                    op.id,
                    manual or result,
                    version,
                    incoming.event.correlationid,
                    month,
                )
            )
        async with self._projection_lock:
            await self.operations.write_seen(seen, self.clock())
        await self._publish(pending)
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
                    _Pending(s.user_id, s.account_id, s.operation_id, r, v, f"rules:{s.user_id}:{v}", s.month)
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
            async for op in self.operations.of_user(user_id):
                if op.manual is not None:
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
    ) -> dict[str, Any]:
        """Assigns an existing payee, or one created from the operation, as the user's manual choice."""
        op = await self.operation(user_id, operation_id)
        suggestions = suggest_keywords(memo_text(op.memo, op.label), self.places)
        created = False
        if payee_id is not None:
            ruleset = await self.rulesets.get(user_id)
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
        result = Categorization(payee.id, payee.name, payee.category, "manual", None)
        async with self._projection_lock:
            await self.operations.set_manual(op, result, self.clock())
        await self.publisher.publish(
            CATEGORIZATIONS,
            account_key(user_id, op.account_id),
            categorized_event(
                user_id, op.account_id, operation_id, result, ruleset.version, correlation_id, op.month
            ),
        )
        if created:
            self.request_reexamination(user_id, ruleset.version)
        matching = await self.count_matching(user_id, suggestions, exclude=operation_id)
        return {
            "operation_id": operation_id,
            "payee": payee,
            "category": payee.category,
            "source": "manual",
            "rules_version": ruleset.version,
            "suggested_keywords": suggestions,
            "matching_operations": matching,
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
