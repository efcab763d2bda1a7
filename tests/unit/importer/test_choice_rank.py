"""The user's choice numbers (`choice_version`) in the write-back's rank: a choice beats rule results of
its number, forgetting it (a rule result with the next number) beats the choice, and results that carry
no number (older events) keep the old order: manual over rules, then the newer rules."""

from __future__ import annotations

from dataclasses import dataclass

from services.importer.domain.categorizations import categorization_rank, last_word_per_operation


@dataclass(frozen=True)
class Result:
    operation_id: str
    source: str | None
    rules_version: int
    choice_version: int = 0
    tag: int = 0


def test_a_choice_then_forgetting_it() -> None:
    assert categorization_rank("manual", 0, 1) > categorization_rank("user", 9, 1)  # rules never replace it
    assert categorization_rank("user", 0, 2) > categorization_rank("manual", 0, 1)  # clear: the rules again
    assert categorization_rank("global", 5, 2) > categorization_rank("user", 4, 2)  # then the newer rules
    assert categorization_rank("manual", 0, 3) > categorization_rank("user", 9, 2)  # a new choice wins again
    assert categorization_rank("manual", 0) > categorization_rank("user", 99)  # no numbers: as before


def test_the_last_word_follows_the_numbers_whatever_the_order() -> None:
    items = [
        Result("a", "user", 3, 2, tag=1),  # the rules after `clear`
        Result("a", "manual", 0, 1, tag=2),  # the choice it forgot, arriving late
        Result("b", "manual", 0, 1, tag=3),
        Result("b", "global", 7, 1, tag=4),  # a re-examination: never over the choice
    ]
    assert {r.operation_id: r.tag for r in last_word_per_operation(items)} == {"a": 1, "b": 3}
