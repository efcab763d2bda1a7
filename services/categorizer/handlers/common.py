"""What every handler of the categorizer shares: the user's compiled rules (`Recognition`) and the
announcement of categorisations (`Announcing`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.categorizer.domain.matching import (
    Categorization,
    Dictionary,
    Matcher,
    categorize_memo,
    memo_text,
)
from services.categorizer.domain.normalise import analyse
from services.categorizer.domain.rules import MatcherCache
from services.categorizer.ports import Categorizations, Categorized, RuleSets, StoredRules
from shared.contract.payloads import OperationCategorized, PayeeRef, TransferRef
from shared.logging import get_logger

log = get_logger(__name__)


class Recognition:
    """The user's compiled rules (cached per user and version) and the built-in dictionary."""

    def __init__(self, rulesets: RuleSets, dictionary: Dictionary, cache: MatcherCache | None = None) -> None:
        self.rulesets = rulesets
        self.dictionary = dictionary
        self.cache = cache or MatcherCache()

    async def matcher(self, user_id: str, version: int | None = None) -> tuple[int, Matcher]:
        """The user's compiled rules; `version` (when known) saves reading the whole rule set."""
        if version is not None:
            cached = self.cache.peek(user_id, version)
            if cached is not None:
                return version, cached
        ruleset = await self.rulesets.get(user_id)
        return ruleset.version, self.cache.of(ruleset)

    def at(self, stored: StoredRules, version: int) -> Matcher | None:
        """The user's rules as they were at `version` (None: that version's payees are not kept)."""
        payees = stored.payees_at(version)
        if payees is None:
            return None
        return self.cache.put(stored.ruleset.user_id, version, payees)

    def categorize(self, memo: str, label: str, matcher: Matcher) -> Categorization:
        return categorize_memo(analyse(memo_text(memo, label)), matcher, self.dictionary)


@dataclass
class Pending:
    """One categorisation to announce."""

    user_id: str
    account_id: str
    operation_id: str
    result: Categorization
    version: int
    correlation_id: str
    month: str | None = None  # the operation's `YYYY-MM`, where the importer files the result
    transfer: TransferRef | None = None  # the other leg of a transfer
    choice: int = 0  # the operation's choice number (see OperationCategorized.choice_version)

    def categorized(self) -> Categorized:
        result = self.result
        payee = None
        if result.payee_id is not None:
            payee = PayeeRef(id=result.payee_id, name=result.payee_name or "")
        payload = OperationCategorized(
            user_id=self.user_id,
            account_id=self.account_id,
            operation_id=self.operation_id,
            payee=payee,
            category=result.category,
            source=result.source,
            keyword=result.keyword,
            rules_version=self.version,
            month=self.month,
            transfer=self.transfer,
            choice_version=self.choice,
        )
        return Categorized(payload, self.correlation_id)


class Announcing:
    """Announces categorisations (one log line per story), all of them in one call of the port."""

    def __init__(self, categorizations: Categorizations) -> None:
        self.categorizations = categorizations

    async def announce(self, pending: Sequence[Pending]) -> None:
        # one line per sync (correlation) and user: a batch mixes several, the log context holds one
        stories: dict[tuple[str, str], list[Pending]] = {}
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
        if pending:
            await self.categorizations.announce([p.categorized() for p in pending])
