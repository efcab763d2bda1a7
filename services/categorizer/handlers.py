"""What each operation event, each rule change and each correction does.

- Operation events (`banksync.operations.v1`): the projection is written first, then the user's rules
  are read and each `operation.imported` (and each `operation.updated`/`operation.reconciled` whose
  memo or label changed) gets exactly one `operation.categorized`. Writing the projection before
  reading the rules means a concurrent rule change either is seen here or sees the operation in its
  own re-examination: no operation misses a rule change.
- Rule changes (payees, keywords, categories) are compare-and-set writes of the user's one rule-set
  document, which also marks a re-examination as pending. The re-examination reads the user's past
  operations from the projection and publishes a new categorisation for each one whose result changed,
  never for a manual one; it runs in this process at once, and a background scan picks up any that a
  crash or another replica left pending.
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
from typing import Any, TypeVar

from services.categorizer.adapters import (
    NEVER,
    OperationsRepository,
    Projected,
    RuleSetRepository,
    Seen,
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
from shared.kafka import EventPublisher
from shared.logging import get_logger
from shared.schemas import OperationCategorized, OperationEvent, PayeeRef
from shared.topics import CATEGORIZATIONS

SERVICE = "categorizer"
log = get_logger(__name__)
T = TypeVar("T")

CATEGORIZING_EVENTS = frozenset(("operation.imported", "operation.updated", "operation.reconciled"))
PUBLISH_CHUNK = 1000


class ConcurrentUpdate(Exception):
    """Too many writers raced on one user's rules."""


class OperationNotFound(Exception):
    """No operation with this id for this user in the projection."""


class MatcherCache:
    """One compiled automaton per user, for the version it was compiled from (LRU-bounded)."""

    def __init__(self, size: int = 5000) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[int, Matcher]] = OrderedDict()
        self.compiled = 0

    def peek(self, user_id: str, version: int) -> Matcher | None:
        found = self._items.get(user_id)
        if found is None or found[0] != version:
            return None
        self._items.move_to_end(user_id)
        return found[1]

    def put(self, ruleset: RuleSet) -> Matcher:
        found = self.peek(ruleset.user_id, ruleset.version)
        if found is not None:
            return found
        matcher = ruleset.matcher() if ruleset.payees else EMPTY_MATCHER
        self.compiled += 1
        self._items[ruleset.user_id] = (ruleset.version, matcher)
        self._items.move_to_end(ruleset.user_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return matcher

    def invalidate(self, user_id: str) -> None:
        self._items.pop(user_id, None)


def categorized_event(
    user_id: str,
    account_id: str,
    operation_id: str,
    result: Categorization,
    rules_version: int,
    correlation_id: str,
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
        rules_version=max(rules_version, 0),
    ).model_dump(mode="json")
    return CloudEvent.new(
        service=SERVICE,
        name="operation.categorized",
        data=data,
        user_id=user_id,
        correlation_id=correlation_id,
        subject=operation_id,
        # the same result of the same rules for the same operation is the same fact
        event_id=deterministic_event_id(
            "operation.categorized", user_id, operation_id, str(rules_version), content_hash(data)
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
    """One categorisation to publish and store."""

    user_id: str
    account_id: str
    operation_id: str
    result: Categorization
    version: int
    correlation_id: str
    store: bool = True


@dataclass
class _Tracked:
    memo: str
    label: str
    manual: bool
    exists: bool


@dataclass
class CategorizerHandlers:
    rulesets: RuleSetRepository
    operations: OperationsRepository
    publisher: EventPublisher
    dictionary: Dictionary
    places: frozenset[str] = frozenset()
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    cache: MatcherCache = field(default_factory=MatcherCache)
    recovery_delay_s: float = 5.0

    def __post_init__(self) -> None:
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------------------------------
    # Rules

    async def ruleset(self, user_id: str) -> RuleSet:
        return await self.rulesets.get(user_id)

    async def matcher(self, user_id: str, version: int | None = None) -> tuple[int, Matcher]:
        """The user's compiled rules; `version` (when known) saves reading the whole rule set."""
        if version is not None:
            if version == 0:
                return 0, EMPTY_MATCHER
            cached = self.cache.peek(user_id, version)
            if cached is not None:
                return version, cached
        ruleset = await self.rulesets.get(user_id)
        return ruleset.version, self.cache.put(ruleset)

    async def change(
        self,
        user_id: str,
        command: Callable[[RuleSet], tuple[RuleSet, T]],
        correlation_id: str,
        *,
        reexamine: bool = True,
    ) -> tuple[RuleSet, T]:
        """Runs a rule command with compare-and-set; a re-examination follows unless told otherwise."""
        for _ in range(10):
            current = await self.rulesets.get(user_id)
            after, answer = command(current)
            if await self.rulesets.save(after, current.version, self.clock(), correlation_id):
                self.cache.invalidate(user_id)
                log.info("rules_changed", user_id=user_id, rules_version=after.version)
                if reexamine:
                    self.request_reexamination(user_id)
                return after, answer
        raise ConcurrentUpdate(user_id)

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
                event = incoming.data
                assert isinstance(event, OperationEvent)
                await self.operations.delete(event.user_id, [event.operation.id])
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
            [operation_key(e.user_id, e.operation.id) for _, e in events]
        )
        tracked: dict[str, _Tracked] = {
            key: _Tracked(p.memo, p.label, p.manual, True) for key, p in existing.items()
        }
        manual_results = {key: p.result for key, p in existing.items() if p.manual and p.result}
        seen: list[Seen] = []
        wanted: list[tuple[Incoming, OperationEvent, str]] = []  # to categorise, by key
        for incoming, event in events:
            op = event.operation
            key = operation_key(event.user_id, op.id)
            manual = manual_of(event)
            before = tracked.get(key)
            seen.append(Seen(event.user_id, op.id, op.account_id, op.memo, op.label, manual))
            if manual is not None:
                manual_results[key] = manual
            changed = before is None or (before.memo, before.label) != (op.memo, op.label)
            is_manual = manual is not None or (before is not None and before.manual)
            tracked[key] = _Tracked(op.memo, op.label, is_manual, True)
            if incoming.event.name == "operation.imported" or (changed and not is_manual):
                wanted.append((incoming, event, key))
        # the projection first, then the rules (see the module docstring)
        await self.operations.upsert_seen(seen, self.clock())
        versions = await self.rulesets.versions(e.user_id for _, e, _ in wanted)
        matchers: dict[str, tuple[int, Matcher]] = {}
        for user_id, version in versions.items():
            matchers[user_id] = await self.matcher(user_id, version)
        pending: list[_Pending] = []
        for incoming, event, key in wanted:
            op = event.operation
            version, matcher = matchers[event.user_id]
            if tracked[key].manual and key in manual_results:
                result, store = manual_results[key], False
            else:
                result, store = self.categorize(op.memo, op.label, matcher), True
            pending.append(
                _Pending(
                    event.user_id, op.account_id, op.id, result, version, incoming.event.correlationid, store
                )
            )
        await self._publish(pending)

    def categorize(self, memo: str, label: str, matcher: Matcher) -> Categorization:
        return categorize_memo(analyse(memo_text(memo, label)), matcher, self.dictionary)

    async def _publish(self, pending: Sequence[_Pending]) -> None:
        for start in range(0, len(pending), PUBLISH_CHUNK):
            chunk = pending[start : start + PUBLISH_CHUNK]
            await self.publisher.publish_many(
                CATEGORIZATIONS,
                [
                    (
                        account_key(p.user_id, p.account_id),
                        categorized_event(
                            p.user_id, p.account_id, p.operation_id, p.result, p.version, p.correlation_id
                        ),
                    )
                    for p in chunk
                ],
            )
            await self.operations.store_results(
                [(p.user_id, p.operation_id, p.result, p.version) for p in chunk if p.store]
            )

    # ------------------------------------------------------------------------------------------
    # Re-examination of past operations after a rule change

    def request_reexamination(self, user_id: str) -> None:
        self._pending.add(user_id)
        self._wake.set()

    def _lock(self, user_id: str) -> asyncio.Lock:
        lock = self._locks.get(user_id)
        if lock is None:
            lock = self._locks[user_id] = asyncio.Lock()
        return lock

    async def reexamine(self, user_id: str) -> ReexaminationReport:
        """Publishes a new categorisation for each past operation whose result changed (never manual)."""
        async with self._lock(user_id):
            started = asyncio.get_running_loop().time()
            ruleset = await self.rulesets.get(user_id)
            matcher = self.cache.put(ruleset)
            correlation_id = await self.rulesets.correlation_id(user_id) or f"rules:{user_id}"
            report = ReexaminationReport(user_id, ruleset.version)
            pending: list[_Pending] = []
            operations = [op async for op in self.operations.of_user(user_id)]
            for op in operations:
                if op.manual:
                    continue
                report.examined += 1
                result = self.categorize(op.memo, op.label, matcher)
                if op.rules_version == NEVER or op.result != result:
                    pending.append(
                        _Pending(
                            user_id, op.account_id, op.operation_id, result, ruleset.version, correlation_id
                        )
                    )
            await self._publish(pending)
            report.changed = len(pending)
            await self.rulesets.reexamination_done(user_id, ruleset.version)
            report.seconds = asyncio.get_running_loop().time() - started
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
                        self._pending.add(user_id)
                    next_scan = loop.time() + recovery_every_s
                while self._pending:
                    user_id = self._pending.pop()
                    try:
                        await self.reexamine(user_id)
                    except Exception as exc:
                        log.warning("reexamination_failed", user_id=user_id, error=repr(exc))
                        # left pending in MongoDB: the next recovery scan retries it
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
        await self.operations.set_manual(user_id, operation_id, result, ruleset.version)
        await self.publisher.publish(
            CATEGORIZATIONS,
            account_key(user_id, op.account_id),
            categorized_event(user_id, op.account_id, operation_id, result, ruleset.version, correlation_id),
        )
        if created:
            self.request_reexamination(user_id)
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
            if op.operation_id == exclude or op.manual:
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
