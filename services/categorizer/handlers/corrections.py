"""The user's choice for one operation (`correct`): a payee, a category alone, or forgetting the choice
(`clear`). Each raises the operation's `choice` number, which every later categorisation of it carries
(`choice_version`): the importer keeps the highest, and manual over rules among equals, so a forgotten
choice gives way to the rules' result and a choice is never overwritten by rules.

That rank, applied where results are read (the importer's sheets, this service's projection), is what
keeps a choice: an automatic categorisation decided from a read made before the correction (another
replica's batch, a re-examination) carries the older number and loses, whenever it is written. The
checks of `manual` in the handlers only spare announcements that would lose anyway."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.categorizer.domain.choices import chosen
from services.categorizer.domain.matching import Categorization, Matcher, memo_text
from services.categorizer.domain.normalise import normalise
from services.categorizer.domain.rules import (
    DuplicateKeyword,
    Payee,
    PayeeDraft,
    RuleError,
    RuleSet,
    UnknownCategory,
    add_payee,
)
from services.categorizer.domain.suggestions import suggest_keywords
from services.categorizer.domain.transfers import shown
from services.categorizer.handlers.common import Announcing, Pending, Recognition
from services.categorizer.handlers.reexamination import Reexaminer
from services.categorizer.handlers.rules import RuleHandlers
from services.categorizer.ports import Projected, Projection, Transfers
from shared.contract.payloads import TransferRef


class OperationNotFound(Exception):
    """No operation with this id for this user in the projection."""


@dataclass(frozen=True)
class Correction:
    """What the user's choice made of the operation."""

    operation_id: str
    payee: Payee | None  # None for a category alone, or when no user payee recognises it (after `clear`)
    category: str | None
    source: str | None  # `manual`; after `clear`, what the rules say (`user`, `global`, None)
    rules_version: int
    suggested_keywords: tuple[str, ...]
    matching_operations: int  # other operations (not manual ones) the suggested keywords recognise
    transfer: TransferRef | None  # the other leg, when the operation is one leg of a transfer


class Corrections:
    def __init__(
        self,
        rules: RuleHandlers,
        projection: Projection,
        transfers: Transfers | None,
        recognition: Recognition,
        announcing: Announcing,
        reexaminer: Reexaminer,
        clock: Callable[[], datetime],
        places: frozenset[str] = frozenset(),
    ) -> None:
        self.rules = rules
        self.projection = projection
        self.transfers = transfers
        self.recognition = recognition
        self.announcing = announcing
        self.reexaminer = reexaminer
        self.clock = clock
        self.places = places

    async def operation(self, user_id: str, operation_id: str) -> Projected:
        found = await self.projection.get(user_id, operation_id)
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
    ) -> Correction:
        """The user's choice for one operation: an existing payee, one created from the operation, or a
        category alone (no payee); or, with `clear`, no choice any more: the rules apply again (and a
        transfer's `epargne`). Announced like any categorisation, with the operation's next `choice`."""
        op = await self.operation(user_id, operation_id)
        suggestions = suggest_keywords(memo_text(op.memo, op.label), self.places)
        created = False
        payee: Payee | None = None
        ruleset = await self.rules.ruleset(user_id)
        rules_seen: tuple[int, Categorization] | None = None
        if clear:
            version, matcher = await self.recognition.matcher(user_id, ruleset.version)
            rules_seen = (version, self.recognition.categorize(op.memo, op.label, matcher))
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

            ruleset, payee = await self.rules.change(user_id, create, correlation_id, reexamine=False)
            created = True
        leg = None if self.transfers is None else await self.transfers.get(user_id, operation_id)
        link = None if leg is None else leg.partner
        # claimed: a correction made at the same time on another replica gets another number, and the
        # higher one wins here and at the importer (whatever order the two are written in)
        choice = await self.projection.next_choice(op, self.clock())
        if rules_seen is not None:
            result = shown(rules_seen[1], None, link is not None)
            await self.projection.set_choice(op, None, choice, self.clock(), seen=rules_seen)
            if result.source == "user" and result.payee_id is not None:
                with contextlib.suppress(RuleError):
                    payee = ruleset.payee(result.payee_id)
        else:
            result = chosen(payee, category)
            await self.projection.set_choice(op, result, choice, self.clock())
        await self.announcing.categorizations.announce(
            [
                Pending(
                    user_id,
                    op.account_id,
                    operation_id,
                    result,
                    ruleset.version,
                    correlation_id,
                    op.month,
                    link,
                    choice,
                ).categorized()
            ]
        )
        if created:
            self.reexaminer.request(user_id, ruleset.version)
        matching = await self.count_matching(user_id, suggestions, exclude=operation_id)
        return Correction(
            operation_id=operation_id,
            payee=payee,
            category=result.category,
            source=result.source,
            rules_version=ruleset.version,
            suggested_keywords=tuple(suggestions),
            matching_operations=matching,
            transfer=link,
        )

    async def count_matching(self, user_id: str, keywords: Sequence[str], exclude: str = "") -> int:
        """How many of the user's other operations (not manual ones) these keywords would recognise."""
        if not keywords:
            return 0
        probe = Matcher(Payee("probe", "probe", "divers", tuple(k for k in keywords if normalise(k))).rules())
        count = 0
        async for op in self.projection.of_user(user_id):
            if op.operation_id == exclude or op.manual is not None:
                continue
            if probe.matches(normalise(memo_text(op.memo, op.label))):
                count += 1
        return count
