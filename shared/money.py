"""Money is never a float: amounts are Decimals with two places, sent as strings ("-42.50")."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

CENT = Decimal("0.01")
# a bank line beyond this is not a household's: refuse it rather than store nonsense
MAX_ABS_AMOUNT = Decimal("100000000")


class InvalidAmount(ValueError):
    pass


def to_amount(value: object) -> Decimal:
    """From an aggregator number (JSON float like -42.5), a string or a Decimal, to exact cents.

    A float goes through its shortest repr (`str(-42.5)`), never its binary expansion.
    """
    if isinstance(value, bool) or value is None:
        raise InvalidAmount(f"not an amount: {value!r}")
    try:
        amount = Decimal(str(value)) if isinstance(value, float | int) else Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise InvalidAmount(f"not an amount: {value!r}") from exc
    if not amount.is_finite() or abs(amount) >= MAX_ABS_AMOUNT:
        raise InvalidAmount(f"amount out of range: {value!r}")
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def format_amount(amount: Decimal) -> str:
    return str(amount.quantize(CENT))
