"""Money is never a float: amounts are exact Decimals, sent as decimal strings ("-42.50") with a currency.

One rule on every way in: an amount never has more decimal places than its currency allows, and it is
never rounded to fit; it is refused (`InvalidAmount`). A client's amount is refused with a 422
`invalid_amount`; an event's (the aggregator's numbers, another service's strings) fails validation, so
the consumer sends the record to the DLQ with the reason.

- `parse_amount(text, currency)`: what a client sends over HTTP (bodies and query parameters). Only an
  ASCII decimal: an optional leading `-`, digits, an optional `.` and digits (`"-42.50"`, `"12"`). Not
  `"+1.50"`, `"1_000.00"`, `"1e3"`, `" 12"`, `"NaN"`, nor other scripts' digits (`"١٢"`).
- `to_amount(value, currency)`: what the aggregator sends (JSON numbers such as -42.5, read through their
  shortest repr, never their binary expansion) and what our own events carry (decimal strings, read by
  `parse_amount`). A number is judged by its value: `1200.0` is a whole JPY amount, `-1.005` is no EUR one.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

CENT = Decimal("0.01")
# a bank line beyond this is not a household's: refuse it rather than store nonsense
MAX_ABS_AMOUNT = Decimal("100000000")
# a client's amount longer than this is no amount (the range above needs far fewer characters)
MAX_AMOUNT_CHARS = 32
# a client's amount: ASCII digits only ([0-9], not \d, which takes every script's digits)
AMOUNT_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
_CLIENT_AMOUNT = re.compile(r"-?[0-9]+(?:\.([0-9]+))?")

# ISO 4217 minor units (decimal places) of the currencies a French household meets; others: the default
MINOR_UNITS: dict[str, int] = {
    "EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "SEK": 2, "NOK": 2, "DKK": 2,
    "PLN": 2, "CZK": 2, "HUF": 2, "RON": 2, "MAD": 2, "CNY": 2, "HKD": 2, "SGD": 2, "MXN": 2,
    "BRL": 2, "INR": 2, "TRY": 2, "ZAR": 2,
    "JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "XOF": 0, "XAF": 0, "XPF": 0, "KMF": 0,
    "TND": 3, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "IQD": 3, "LYD": 3,
}  # fmt: skip
DEFAULT_MINOR_UNITS = 2
# operations are kept in cents (the importer's `cents`, `amount_of`): a currency with three places (TND,
# KWD...) is refused beyond the cent rather than truncated to it
STORED_PLACES = 2
# messages never quote the amount: they go to logs, DLQ headers and problem documents
_OUT_OF_RANGE = f"amount out of range (at most {MAX_ABS_AMOUNT} in absolute value, excluded)"


class InvalidAmount(ValueError):
    pass


def places_of(currency: str | None) -> int:
    """How many decimal places an amount in this currency may have (None: the default currency's)."""
    units = MINOR_UNITS.get(currency, DEFAULT_MINOR_UNITS) if currency else DEFAULT_MINOR_UNITS
    return min(units, STORED_PLACES)


def parse_amount(text: object, currency: str | None = None) -> Decimal:
    """A client's amount (a decimal string) in `currency`, exact; `InvalidAmount` says why it is not one."""
    if not isinstance(text, str):
        raise InvalidAmount(f'expected a decimal string (e.g. "-42.50"), not {type(text).__name__}')
    found = _CLIENT_AMOUNT.fullmatch(text) if len(text) <= MAX_AMOUNT_CHARS else None
    if found is None:
        raise InvalidAmount(
            'not a decimal amount: ASCII digits with an optional leading "-" and an optional "." '
            'followed by digits (e.g. "-42.50")'
        )
    places = places_of(currency)
    if len(found.group(1) or "") > places:
        raise InvalidAmount(_too_precise(currency, places))
    return _in_range(Decimal(text), places)


def to_amount(value: object, currency: str | None = None) -> Decimal:
    """An amount of an event in `currency`, exact: an aggregator number (JSON float like -42.5, int), a
    Decimal, or a decimal string (`parse_amount`). Never rounded: more places than the currency has is
    `InvalidAmount`."""
    if isinstance(value, str):
        return parse_amount(value, currency)
    if isinstance(value, bool) or not isinstance(value, float | int | Decimal):
        raise InvalidAmount(f"not an amount: {type(value).__name__}")
    try:
        # a float's shortest repr (`str(-42.5)` is "-42.5"), never its binary expansion
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation as exc:  # pragma: no cover - str() of a float or an int is always a number
        raise InvalidAmount("not an amount") from exc
    places = places_of(currency)
    if not amount.is_finite() or abs(amount) >= MAX_ABS_AMOUNT:
        raise InvalidAmount(_OUT_OF_RANGE)
    if amount != amount.quantize(_unit(places)):
        raise InvalidAmount(_too_precise(currency, places))
    return _in_range(amount, places)


def format_amount(amount: Decimal) -> str:
    return str(amount.quantize(CENT))


def _unit(places: int) -> Decimal:
    return Decimal(1).scaleb(-places)


def _too_precise(currency: str | None, places: int) -> str:
    where = f" in {currency}" if currency else ""
    return f"an amount{where} has at most {places} decimal places (never rounded)"


def _in_range(amount: Decimal, places: int) -> Decimal:
    if not amount.is_finite() or abs(amount) >= MAX_ABS_AMOUNT:
        raise InvalidAmount(_OUT_OF_RANGE)
    # exact (never more places than `places` here); `+ 0` makes "-0.00" plain zero
    return amount.quantize(_unit(places)) + 0
