"""Transfers between the user's own accounts: which wordings are a transfer's, and which legs pair up.

`match_transfers` is a function of the set of legs: the order they came in, a leg seen twice, or a
replay change nothing. Each leg has at most one other; where legs compete, the closest dates win,
then the lowest operation ids.
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.categorizer.domain.matching import Categorization
from services.categorizer.domain.transfers import (
    TRANSFER_RESULT,
    TransferLeg,
    is_transfer_memo,
    match_transfers,
    shown,
)

DAY = dt.date(2025, 3, 10)


def leg(op: str, account: str, cents: int, day: int = 0, currency: str = "EUR") -> TransferLeg:
    return TransferLeg(op, account, currency, cents, DAY + dt.timedelta(days=day))


@pytest.mark.parametrize(
    "memo",
    [
        "VIR SEPA RECU /DE M. JEAN DUPONT /MOTIF EPARGNE",  # BNP
        "VIR RECU 1234567 DE: M JEAN DUPONT MOTIF: LIVRET REF: 998877",  # Société Générale
        "VIR INST vers Livret A",  # Boursorama
        "VIREMENT EN VOTRE FAVEUR M DUPONT JEAN",
        "VIREMENT DE M DUPONT",
        "VIR DE/ M DUPONT",
        "VIR SEPA EMIS VERS COMPTE JOINT",
        "VIR.PERMANENT LIVRET A",  # LCL, punctuation
        "000001 VIR EUROPEEN EMIS LOGITEL POUR: M. DUPONT",  # Société Générale, a reference first
        "Virement interne",  # a manual operation's label: case and accents do not matter
        "PRLV SEPA EPARGNE LOGEMENT",
        "VERSEMENT LIVRET A",
    ],
)
def test_transfer_wordings(memo: str) -> None:
    assert is_transfer_memo(memo)


@pytest.mark.parametrize(
    "memo",
    [
        "CB CARREFOUR MARKET 12/03",
        "PRLV SEPA EDF ECH/120325",
        "RETRAIT DAB 12/03/25 14H05 BNP PARIBAS",
        "VERSEMENT ESPECES",
        "CARTE X4974 12/03 VIRGIN MEGASTORE",  # VIR only inside a word
        "PRLV SEPA CAISSE D ALLOCATIONS",
    ],
)
def test_other_wordings(memo: str) -> None:
    assert not is_transfer_memo(memo)


def test_the_label_when_there_is_no_memo() -> None:
    assert is_transfer_memo("", "Virement vers livret")
    assert not is_transfer_memo("   ", "Courses")


def test_opposite_amounts_in_two_accounts_within_three_days() -> None:
    assert match_transfers([leg("a", "checking", -20_000), leg("b", "savings", 20_000, 3)]) == {
        "a": "b",
        "b": "a",
    }


def test_the_window_is_three_days_both_ways() -> None:
    assert match_transfers([leg("a", "checking", -20_000, 4), leg("b", "savings", 20_000, 0)]) == {}
    assert match_transfers([leg("a", "checking", -20_000, -3), leg("b", "savings", 20_000, 0)]) == {
        "a": "b",
        "b": "a",
    }


@pytest.mark.parametrize(
    "legs",
    [
        # one account: a refund of a transfer, not a transfer between two accounts
        [leg("a", "checking", -20_000), leg("b", "checking", 20_000)],
        # not opposite: two debits, or two amounts
        [leg("a", "checking", -20_000), leg("b", "savings", -20_000)],
        [leg("a", "checking", -20_000), leg("b", "savings", 20_001)],
        # two currencies
        [leg("a", "checking", -20_000), leg("b", "savings", 20_000, currency="USD")],
        # nothing moved
        [leg("a", "checking", 0), leg("b", "savings", 0)],
    ],
)
def test_what_is_not_a_transfer(legs: list[TransferLeg]) -> None:
    assert match_transfers(legs) == {}


def test_closest_date_first_then_lowest_id() -> None:
    legs = [
        leg("debit", "checking", -5_000, 0),
        leg("far", "savings", 5_000, 2),
        leg("near", "joint", 5_000, 1),
    ]
    assert match_transfers(legs) == {"debit": "near", "near": "debit"}
    tied = [
        leg("debit", "checking", -5_000, 0),
        leg("b2", "savings", 5_000, 1),
        leg("b1", "joint", 5_000, -1),
    ]
    assert match_transfers(tied) == {"debit": "b1", "b1": "debit"}


def test_each_leg_has_one_other_at_most() -> None:
    # two monthly savings of the same amount, two days apart: two pairs, never one leg twice
    legs = [
        leg("d1", "checking", -10_000, 0),
        leg("d2", "checking", -10_000, 2),
        leg("c1", "savings", 10_000, 0),
        leg("c2", "savings", 10_000, 2),
    ]
    assert match_transfers(legs) == {"d1": "c1", "c1": "d1", "d2": "c2", "c2": "d2"}


def test_a_leg_arriving_later_takes_a_closer_partner() -> None:
    first = [leg("d", "checking", -10_000, 0), leg("c_far", "savings", 10_000, 3)]
    assert match_transfers(first) == {"d": "c_far", "c_far": "d"}
    later = [*first, leg("c_near", "joint", 10_000, 0)]
    assert match_transfers(later) == {"d": "c_near", "c_near": "d"}


legs_strategy = st.lists(
    st.builds(
        leg,
        op=st.sampled_from([f"op-{i}" for i in range(12)]),
        account=st.sampled_from(["checking", "savings", "joint"]),
        cents=st.sampled_from([-10_000, 10_000, -2_550, 2_550]),
        day=st.integers(-5, 5),
    ),
    max_size=14,
    unique_by=lambda leg: leg.operation_id,
)


@given(legs_strategy, st.randoms())
def test_the_order_legs_came_in_and_repeats_change_nothing(
    legs: list[TransferLeg], rnd: random.Random
) -> None:
    expected = match_transfers(legs)
    shuffled = list(legs)
    rnd.shuffle(shuffled)
    assert match_transfers(shuffled + shuffled[: len(shuffled) // 2]) == expected


@given(legs_strategy)
def test_pairs_are_symmetric_and_valid(legs: list[TransferLeg]) -> None:
    by_id = {one.operation_id: one for one in legs}
    paired = match_transfers(legs)
    for op, other in paired.items():
        assert paired[other] == op
        a, b = by_id[op], by_id[other]
        assert a.account_id != b.account_id
        assert a.cents == -b.cents != 0
        assert abs((a.date - b.date).days) <= 3


def test_what_a_leg_shows() -> None:
    rules = Categorization("p", "Livret", "divers", "user", "LIVRET")
    manual = Categorization(category="loisirs", source="manual")
    assert shown(rules, None, transfer=True) == TRANSFER_RESULT
    assert TRANSFER_RESULT.category == "epargne"
    assert shown(rules, manual, transfer=True) == manual
    assert shown(rules, None, transfer=False) == rules
