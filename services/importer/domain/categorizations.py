"""Which of an operation's categorisations wins, and the sheets they are filed in: pure rules, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class CategorizationLike(Protocol):
    @property
    def operation_id(self) -> str: ...
    @property
    def source(self) -> str | None: ...
    @property
    def rules_version(self) -> int: ...


C = TypeVar("C", bound=CategorizationLike)


def categorization_rank(
    source: str | None, rules_version: int, choice_version: int = 0
) -> tuple[int, int, int]:
    """Which categorisation of an operation wins: the one that follows more of the user's choices
    (`choice_version`: a correction, or forgetting one, raises it), then the user's own choice over any
    rule result, then the newer rule set; among equals, the later one. An operation's stored
    categorisation is replaced by one of at least its rank. So a choice is never overwritten by rules,
    and once forgotten (`clear`) the rules' results replace it."""
    return (choice_version, 1, 0) if source == "manual" else (choice_version, 0, rules_version)


def choice_of(item: object) -> int:
    """An item's `choice_version` (0 for one that has none: results from before choices were numbered)."""
    return int(getattr(item, "choice_version", 0) or 0)


def last_word_per_operation(items: Sequence[C]) -> list[C]:
    """Of several categorisations of one operation in a batch, the one that applying them all in order
    would leave: the highest rank, the later among equals (see `categorization_rank`). Each operation
    then needs one guarded write, and the batch's writes no longer depend on their order."""
    winners: dict[str, C] = {}
    for item in items:
        current = winners.get(item.operation_id)
        if current is None or categorization_rank(
            item.source, item.rules_version, choice_of(item)
        ) >= categorization_rank(current.source, current.rules_version, choice_of(current)):
            winners[item.operation_id] = item
    return list(winners.values())


def sheet_id(account_id: str, month: str) -> str:
    """The categorisation sheet of an account's month (`<account>:<YYYY-MM>`)."""
    return f"{account_id}:{month}"
