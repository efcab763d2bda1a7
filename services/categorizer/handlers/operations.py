"""What each event of the operations topic does.

- Operation events (`banksync.operations.v1`): each `operation.imported` (and each
  `operation.updated`/`operation.reconciled` whose memo or label changed) gets exactly one
  `operation.categorized`, computed with the user's current rules, and the projection records the
  rules version used (`seen_version`). Then the rules version is read again: when a rule change
  raced with the event, the operation is categorised again with the new rules, so no operation
  keeps a result of rules that a re-examination did not compare it with.
- Transfers between the user's own accounts: an operation whose wording is a transfer's is a "leg"
  (`ports.Transfers`). Per batch and user: the batch's legs are
  written, the user's legs read (one indexed read), paired (`domain.transfers.match_transfers`: a function of
  the set, so the order the legs came in, a redelivery or a replay change nothing), and every operation
  whose link changed, in the batch or not, gets a categorisation carrying `transfer` (the other leg)
  and `epargne` unless the user chose; the links are written after that publish. A deleted operation
  or account unlinks its other legs the same way. Legs are never paired twice in a process at once
  (`Transfers.pairing`); two replicas racing with the two legs of one transfer each write before they read.

Every batch is set-based: one read of the projection per sheet it touches, one read of the rules'
versions, one write of the projection, one announcement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.categorizer.domain.choices import manual_of
from services.categorizer.domain.matching import Categorization, Matcher
from services.categorizer.domain.transfers import TransferLeg, match_transfers, shown, transfer_leg
from services.categorizer.handlers.common import Announcing, Pending, Recognition
from services.categorizer.ports import (
    AccountRemoved,
    OperationChanged,
    OperationsMessage,
    Projected,
    Projection,
    RuleSets,
    Seen,
    StoredLeg,
    Transfers,
    operation_key,
)
from shared.contract.payloads import TransferRef
from shared.logging import get_logger
from shared.periods import month_of

log = get_logger(__name__)

CATEGORIZING_EVENTS = frozenset(("operation.imported", "operation.updated", "operation.reconciled"))
Rules = dict[str, tuple[int, Matcher]]  # user -> the version of their rules and its compiled matcher


@dataclass(frozen=True)
class _Step:
    """One operation event of a batch, as the batch's first pass saw it."""

    message: OperationChanged
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


class OperationHandlers:
    def __init__(
        self,
        rulesets: RuleSets,
        projection: Projection,
        transfers: Transfers | None,
        recognition: Recognition,
        announcing: Announcing,
        clock: Callable[[], datetime],
    ) -> None:
        self.rulesets = rulesets
        self.projection = projection
        # transfers between the user's own accounts: not detected without it (benchmarks of the rules)
        self.transfers = transfers
        self.recognition = recognition
        self.announcing = announcing
        self.clock = clock

    async def on_operations(self, batch: Sequence[OperationsMessage]) -> None:
        """A batch of the operations topic, in order: consecutive operation events are categorised
        together; a deletion forgets what it names."""
        group: list[OperationChanged] = []
        for message in batch:
            if isinstance(message, OperationChanged) and message.name in CATEGORIZING_EVENTS:
                group.append(message)
                continue
            await self._categorize_group(group)
            group = []
            if isinstance(message, AccountRemoved):
                user_id, account_id = message.user_id, message.account_id
                await self._forget_legs(user_id, message.correlation_id, account_id=account_id)
                removed = await self.projection.delete_account(user_id, account_id)
                log.info("account_forgotten", user_id=user_id, account_id=account_id, operations=removed)
            elif message.name == "operation.deleted":
                event = message.event
                op = event.operation
                await self.projection.delete(
                    event.user_id, op.account_id, month_of(op.date), [op.id], self.clock()
                )
                if transfer_leg(op) is not None:
                    await self._forget_legs(event.user_id, message.correlation_id, operation_id=op.id)
                log.info("operation_forgotten", user_id=event.user_id, operation_id=op.id)
        await self._categorize_group(group)

    async def _categorize_group(self, group: list[OperationChanged]) -> None:
        if not group:
            return
        operations = [(m.event.user_id, m.event.operation) for m in group]
        existing = await self.projection.get_many(
            (user, op.account_id, op.id, month_of(op.date)) for user, op in operations
        )
        users = {m.event.user_id for m in group}
        rules = {
            user: await self.recognition.matcher(user, version)
            for user, version in (await self.rulesets.versions(users)).items()
        }
        # what the operations were before this group, updated event by event (an account's are in order)
        state: dict[str, tuple[str, str, Categorization | None, int]] = {
            key: (p.memo, p.label, p.manual, p.choice) for key, p in existing.items()
        }
        steps: list[_Step] = []
        legs: dict[str, dict[str, tuple[TransferLeg, str]]] = {}
        not_legs: dict[str, set[str]] = {}
        for message in group:
            event = message.event
            op = event.operation
            key = operation_key(event.user_id, op.id)
            before = state.get(key)
            choice = before[3] if before else 0
            # once the user chose through this service, its own record of the choice is the truth
            adopted = manual_of(op) if choice == 0 else None
            manual = adopted or (before[2] if before else None)
            changed = before is None or (before[0], before[1]) != (op.memo, op.label)
            state[key] = (op.memo, op.label, manual, choice)
            publish = message.name == "operation.imported" or (changed and manual is None)
            steps.append(_Step(message, key, manual, choice, publish))
            if self.transfers is None:
                continue
            leg = transfer_leg(op)
            own_legs = legs.setdefault(event.user_id, {})
            if leg is not None:
                own_legs[op.id] = (leg, month_of(op.date))
                not_legs.get(event.user_id, set()).discard(op.id)
            else:
                own_legs.pop(op.id, None)
                if message.name != "operation.imported":
                    not_legs.setdefault(event.user_id, set()).add(op.id)
        relinking = sorted(u for u in users if legs.get(u) or not_legs.get(u))
        async with self._pairing(relinking):
            relinked = {
                user: await self._relink(user, legs.get(user, {}), not_legs.get(user, set()))
                for user in relinking
            }
            links = {operation_key(u, op): ref for u, r in relinked.items() for op, ref in r.now.items()}
            moved = {
                operation_key(u, op) for u, r in relinked.items() for op in (*r.changed, *r.unlinked_gone)
            }
            seen: list[Seen] = []
            pending: list[Pending] = []
            for step in steps:
                user, op = step.message.event.user_id, step.message.event.operation
                month = month_of(op.date)
                link = links.get(step.key)
                if not (step.publish or step.key in moved):
                    seen.append(
                        Seen(
                            user,
                            op.id,
                            op.account_id,
                            op.memo,
                            op.label,
                            None,
                            None,
                            step.manual,
                            month,
                            choice=step.choice,
                        )
                    )
                    continue
                version, matcher = rules[user]
                result = self.recognition.categorize(op.memo, op.label, matcher)
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
                    Pending(
                        user,
                        op.account_id,
                        op.id,
                        shown(result, step.manual, link is not None),
                        version,
                        step.message.correlation_id,
                        month,
                        link,
                        step.choice,
                    )
                )
            in_batch = {step.key for step in steps}
            correlations = {step.message.event.user_id: step.message.correlation_id for step in steps}
            outside = [
                (u, r.kept[op])
                for u, r in relinked.items()
                for op in r.changed
                if operation_key(u, op) not in in_batch
            ]
            others, results, others_seen = await self._others(outside, links, rules, correlations)
            await self.projection.write_seen(seen, self.clock())
            await self.projection.set_results(results, self.clock())
            await self.announcing.announce([*pending, *others])
            for r in relinked.values():
                await self._save_links(r)
        await self._catch_up([*seen, *others_seen], rules)

    # ------------------------------------------------------------------------------------------
    # Transfers between the user's own accounts

    def _pairing(self, user_ids: Sequence[str]) -> contextlib.AbstractAsyncContextManager[None]:
        if self.transfers is None or not user_ids:
            return contextlib.nullcontext()
        return self.transfers.pairing(user_ids)

    async def _relink(
        self,
        user_id: str,
        legs: dict[str, tuple[TransferLeg, str]],
        not_legs: set[str],
        account_id: str | None = None,
    ) -> _Relinked:
        """Stores a batch's legs, reads the user's and pairs them again (nothing written about links:
        `_save_links`, once the changes are announced). `not_legs`: operations that may have been legs
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
        rules: Rules,
        correlations: dict[str, str],
    ) -> tuple[list[Pending], list[tuple[Projected, int, Categorization]], list[Seen]]:
        """The categorisations of operations outside a batch whose link changed (one read per sheet):
        what to announce, what the projection records of it, and what `_catch_up` looks at again."""
        if not legs:
            return [], [], []
        found = await self.projection.get_many(
            (user, leg.leg.account_id, leg.operation_id, leg.month) for user, leg in legs
        )
        pending: list[Pending] = []
        results: list[tuple[Projected, int, Categorization]] = []
        seen: list[Seen] = []
        for user, leg in legs:
            op = found.get(operation_key(user, leg.operation_id))
            if op is None:
                log.warning("transfer_leg_not_projected", user_id=user, operation_id=leg.operation_id)
                continue
            if user not in rules:
                rules[user] = await self.recognition.matcher(user)
            version, matcher = rules[user]
            result = self.recognition.categorize(op.memo, op.label, matcher)
            link = links.get(operation_key(user, op.operation_id))
            pending.append(
                Pending(
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
        rules: Rules = {}
        async with self.transfers.pairing([user_id]):
            relinked = await self._relink(
                user_id, {}, {operation_id} if operation_id else set(), account_id=account_id
            )
            if not relinked.gone:
                return
            links = {operation_key(user_id, op): ref for op, ref in relinked.now.items()}
            others, results, seen = await self._others(
                [(user_id, relinked.kept[op]) for op in relinked.changed],
                links,
                rules,
                {user_id: correlation_id},
            )
            await self.projection.set_results(results, self.clock())
            await self.announcing.announce(others)
            await self._save_links(relinked, account_id)
        await self._catch_up(seen, rules)

    async def _catch_up(self, seen: list[Seen], used: Rules) -> None:
        """Categorises again what a rule change raced with (it read the projection before we wrote)."""
        for _ in range(5):
            now = await self.rulesets.versions(used)
            moved = {user for user, version in now.items() if version != used[user][0]}
            if not moved:
                return
            used = {
                user: await self.recognition.matcher(user, now[user]) if user in moved else used[user]
                for user in used
            }
            again = [
                s for s in seen if s.user_id in moved and s.manual is None and s.seen_version is not None
            ]
            redone = []
            for item in again:
                version, matcher = used[item.user_id]
                redone.append((item, version, self.recognition.categorize(item.memo, item.label, matcher)))
            await self.projection.set_seen_version(redone, self.clock())
            await self.announcing.announce(
                [
                    Pending(
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
