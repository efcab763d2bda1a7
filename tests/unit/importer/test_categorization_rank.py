"""Which of several categorisations of one operation in a batch is written: the one applying them all
in order, each under the write-back's guard, would leave."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from services.importer.domain.categorizations import categorization_rank, last_word_per_operation


@dataclass(frozen=True)
class Result:
    operation_id: str
    source: str | None
    rules_version: int
    tag: int = 0


def applied_in_order(stored: Result | None, items: list[Result]) -> Result | None:
    """The guard of the write-back, applied one item at a time (what the writes did before)."""
    for item in items:
        if (
            item.source == "manual"
            or stored is None
            or (stored.source != "manual" and stored.rules_version <= item.rules_version)
        ):
            stored = item
    return stored


def test_the_users_choice_then_the_newer_rules_then_the_later_one() -> None:
    items = [
        Result("a", "global", 1, 0),
        Result("a", "manual", 1, 1),
        Result("a", "user", 2, 2),
        Result("b", "user", 2, 3),
        Result("b", "global", 1, 4),
        Result("c", None, 3, 5),
        Result("c", "global", 3, 6),
    ]
    assert {r.operation_id: r.tag for r in last_word_per_operation(items)} == {"a": 1, "b": 3, "c": 6}
    assert categorization_rank("manual", 0) > categorization_rank("user", 99)


results = st.builds(
    Result,
    operation_id=st.sampled_from(["a", "b"]),
    source=st.sampled_from([None, "global", "user", "manual"]),
    rules_version=st.integers(0, 3),
    tag=st.integers(0, 10**6),
)


@given(st.lists(results, max_size=12), st.none() | results)
def test_one_write_of_the_last_word_is_applying_them_all_in_order(
    items: list[Result], stored: Result | None
) -> None:
    winners = {r.operation_id: r for r in last_word_per_operation(items)}
    for op in ("a", "b"):
        mine = [r for r in items if r.operation_id == op]
        before = stored if stored is None or stored.operation_id == op else None
        expected = applied_in_order(before, mine)
        got = applied_in_order(before, [winners[op]] if op in winners else [])
        assert got == expected
