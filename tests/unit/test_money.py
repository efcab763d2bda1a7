"""Amounts are exact: never rounded to fit their currency, only ASCII decimals from a client (issue #17,
point 5). `parse_amount` reads what a client sends; `to_amount` what the aggregator and events carry."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from shared.contract.payloads import AccountSynced, AggregatorTransaction
from shared.money import (
    MINOR_UNITS,
    InvalidAmount,
    format_amount,
    parse_amount,
    places_of,
    to_amount,
)

HOSTILE = [
    "-1.005",  # more places than EUR has: refused, never stored as "-1.00"
    "0." + "1" * 30,  # 30 decimals
    "1." + "0" * 30,  # 30 decimals, even if they are zeros
    "١٢",  # Arabic-Indic digits
    "１２",  # fullwidth digits
    "1_000.00",  # Python's digit separator
    "+1.50",  # a plus sign
    "1e3",
    "1E3",
    "NaN",
    "-Infinity",
    "Infinity",
    " 12",
    "12 ",
    "12\n",
    "1,50",  # the French decimal comma: not the API's format
    "1 000",
    ".5",
    "5.",
    "-",
    "",
    "--1",
    "0x10",
    "1" * 33,  # too long to be an amount
    "100000000",  # out of range
    "-100000000.00",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_client_amount_that_is_not_an_exact_ascii_decimal_is_refused(text):
    with pytest.raises(InvalidAmount):
        parse_amount(text, "EUR")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", "12.00"),
        ("-42.50", "-42.50"),
        ("-42.5", "-42.50"),
        ("0", "0.00"),
        ("-0", "0.00"),
        ("-0.00", "0.00"),
        ("007.10", "7.10"),
        ("99999999.99", "99999999.99"),
    ],
)
def test_an_exact_ascii_decimal_is_read_as_it_is(text, expected):
    assert format_amount(parse_amount(text, "EUR")) == expected


def test_places_follow_the_currency():
    assert places_of("EUR") == places_of("USD") == places_of("GBP") == places_of("CHF") == 2
    assert places_of("JPY") == 0
    assert places_of(None) == places_of("XYZ") == 2  # unknown: the default
    # three-place currencies exist, but operations are kept in cents: refused beyond the cent
    assert MINOR_UNITS["TND"] == 3
    assert places_of("TND") == 2
    assert parse_amount("12", "JPY") == Decimal("12")
    for text in ("12.5", "12.0", "12.00"):
        with pytest.raises(InvalidAmount, match="JPY has at most 0 decimal places"):
            parse_amount(text, "JPY")
    with pytest.raises(InvalidAmount, match="TND has at most 2"):
        parse_amount("1.005", "TND")


@pytest.mark.parametrize("value", [True, None, [1], {"v": 1}, b"12"])
def test_what_is_no_number_is_no_amount(value):
    with pytest.raises(InvalidAmount):
        to_amount(value)
    with pytest.raises(InvalidAmount):
        parse_amount(value)


def test_aggregator_numbers_are_read_by_value_never_rounded():
    assert to_amount(-42.5) == Decimal("-42.50")
    assert to_amount(1200.0, "JPY") == Decimal("1200")  # a whole JPY amount, written as a float
    assert to_amount(-9.99) == Decimal("-9.99")
    assert to_amount(3) == Decimal("3.00")
    assert to_amount(Decimal("1.000")) == Decimal("1.00")
    assert format_amount(to_amount(-0.0)) == "0.00"
    for value in (-1.005, 0.1 + 0.2, 12.345, Decimal("0.001")):
        with pytest.raises(InvalidAmount, match="at most 2 decimal places"):
            to_amount(value)
    with pytest.raises(InvalidAmount, match="JPY"):
        to_amount(12.5, "JPY")
    for value in (1e15, float("nan"), float("inf"), Decimal("NaN"), 100_000_000):
        with pytest.raises(InvalidAmount, match="out of range"):
            to_amount(value)


def test_event_strings_are_read_like_a_clients():
    assert to_amount("-42.50") == Decimal("-42.50")
    for text in ("-1.005", "1_000", "+1", "١٢"):
        with pytest.raises(InvalidAmount):
            to_amount(text)


def test_an_aggregator_line_with_more_places_fails_validation_for_the_dlq():
    """In a consumer, a ValidationError sends the record to the DLQ with its reason (shared.consumer)."""
    line = {"id": 1, "id_account": 2, "date": "2026-01-02", "value": -42.5}
    assert AggregatorTransaction.model_validate(line).value == Decimal("-42.50")
    with pytest.raises(ValidationError) as refused:
        AggregatorTransaction.model_validate({**line, "value": -1.005})
    (error,) = refused.value.errors(include_input=False)
    assert error["loc"] == ("value",)
    assert "at most 2 decimal places" in error["msg"]
    assert "1.005" not in error["msg"]  # the reason, not the user's amount
    synced = {
        "user_id": "u",
        "connection_id": "c",
        "aggregator_account_id": "a",
        "bank": {"id": "b", "name": "B"},
        "sync_run_id": "r",
        "initial": False,
        "transactions": 0,
    }
    assert AccountSynced.model_validate({**synced, "balance": "12.30"}).balance == Decimal("12.30")
    with pytest.raises(ValidationError):
        AccountSynced.model_validate({**synced, "balance": "12.305"})
