"""The categorizer's handlers, by subject: each takes ports in its constructor and does load → decide →
store → announce.

- `operations`: the operations topic (categorising, transfers between the user's accounts, deletions);
- `rules`: reading, changing and previewing a user's rules;
- `reexamination`: past operations re-examined after a rule change (and its background job);
- `corrections`: the user's own choice for one operation;
- `common`: the compiled rules (`Recognition`) and the announcement (`Announcing`) they share.

`CategorizerHandlers.build` puts them together over the ports (the composition root, the benchmarks
and the handler tests build them the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from services.categorizer.domain.matching import Dictionary
from services.categorizer.domain.rules import MatcherCache
from services.categorizer.handlers.common import Announcing, Recognition
from services.categorizer.handlers.corrections import Corrections
from services.categorizer.handlers.operations import OperationHandlers
from services.categorizer.handlers.reexamination import Reexaminer
from services.categorizer.handlers.rules import RuleHandlers
from services.categorizer.ports import Categorizations, Projection, RuleSets, Transfers


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CategorizerHandlers:
    rules: RuleHandlers
    operations: OperationHandlers
    reexaminer: Reexaminer
    corrections: Corrections
    recognition: Recognition

    @classmethod
    def build(
        cls,
        rulesets: RuleSets,
        projection: Projection,
        categorizations: Categorizations,
        dictionary: Dictionary,
        *,
        places: frozenset[str] = frozenset(),
        # transfers between the user's own accounts: not detected without it (benchmarks of the rules)
        transfers: Transfers | None = None,
        clock: Callable[[], datetime] = _now,
        cache: MatcherCache | None = None,
        recovery_delay_s: float = 5.0,
    ) -> CategorizerHandlers:
        recognition = Recognition(rulesets, dictionary, cache)
        announcing = Announcing(categorizations)
        reexaminer = Reexaminer(
            rulesets, projection, transfers, recognition, announcing, clock, recovery_delay_s
        )
        rules = RuleHandlers(rulesets, recognition, reexaminer, clock)
        return cls(
            rules=rules,
            operations=OperationHandlers(rulesets, projection, transfers, recognition, announcing, clock),
            reexaminer=reexaminer,
            corrections=Corrections(
                rules, projection, transfers, recognition, announcing, reexaminer, clock, places
            ),
            recognition=recognition,
        )
