"""The user's rules: reading them, changing them (payees, keywords, categories), previewing them.

A change is a compare-and-set write of the user's one rule set (`RuleSets.update`), which also marks
a re-examination of past operations as pending; the re-examination is then asked for at once in this
process (`Reexaminer.request`), and a background scan picks up any that a crash or another replica
left pending.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from services.categorizer.domain.matching import Categorization, categorize_memo
from services.categorizer.domain.normalise import analyse
from services.categorizer.domain.rules import RuleSet
from services.categorizer.handlers.common import Recognition
from services.categorizer.handlers.reexamination import Reexaminer
from services.categorizer.ports import RuleSets, RulesStatus
from shared.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Preview:
    """How one memo would be recognised now."""

    memo: str
    result: Categorization


class RuleHandlers:
    def __init__(
        self,
        rulesets: RuleSets,
        recognition: Recognition,
        reexaminer: Reexaminer,
        clock: Callable[[], datetime],
    ) -> None:
        self.rulesets = rulesets
        self.recognition = recognition
        self.reexaminer = reexaminer
        self.clock = clock

    async def ruleset(self, user_id: str) -> RuleSet:
        return await self.rulesets.get(user_id)

    async def status(self, user_id: str) -> RulesStatus:
        """The version of the user's rules, and whether past operations are still being re-examined."""
        return await self.rulesets.status(user_id)

    async def change(
        self,
        user_id: str,
        command: Callable[[RuleSet], tuple[RuleSet, T]],
        correlation_id: str,
        *,
        reexamine: bool = True,
    ) -> tuple[RuleSet, T]:
        """Runs a rule command with compare-and-set; a re-examination follows unless told otherwise."""
        after, answer = await self.rulesets.update(
            user_id, command, self.clock(), correlation_id, reexamine=reexamine
        )
        log.info("rules_changed", user_id=user_id, rules_version=after.version)
        if reexamine:
            self.reexaminer.request(user_id, after.version)
        return after, answer

    async def preview(self, user_id: str, memos: Sequence[str]) -> list[Preview]:
        """How these memos would be recognised now; stores nothing."""
        _, matcher = await self.recognition.matcher(user_id)
        return [
            Preview(memo, categorize_memo(analyse(memo), matcher, self.recognition.dictionary))
            for memo in memos
        ]
