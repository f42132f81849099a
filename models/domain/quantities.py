"""Exact quantities: parsing, signing and whole/fraction splitting, all in Decimal."""

from __future__ import annotations

from decimal import ROUND_DOWN, Context, Decimal, InvalidOperation
from enum import StrEnum

# NUMERIC(38, 18): at most 20 integer digits and 18 fractional digits.
SCALE = 18
MAX_INTEGER_DIGITS = 38 - SCALE
# normalize() rounds to its context's precision, and Python's default keeps 28 significant digits,
# fewer than the 38 a stored quantity has: 100000000000000000.00000000001 would print rounded.
_EXACT = Context(prec=2 * 38)
ONE = Decimal(1)
ZERO = Decimal(0)


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class QuantityError(ValueError):
    """A quantity or price that can never be stored or traded."""


def parse_decimal(value: object, *, field: str) -> Decimal:
    """Read a JSON string or an exactly-parsed JSON number as a storable, finite Decimal."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise QuantityError(f"{field} must be a decimal string or number")
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise QuantityError(f"{field} is not a decimal number") from None
    if not number.is_finite():
        raise QuantityError(f"{field} must be finite")
    check_storable(number, field=field)
    return number


def check_storable(number: Decimal, *, field: str) -> None:
    """Refuse anything NUMERIC(38, 18) would round or overflow, instead of storing it altered."""
    _sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    while len(digits) > 1 and digits[-1] == 0:  # trailing zeros say nothing about precision
        digits, exponent = digits[:-1], exponent + 1
    fraction_digits = max(0, -exponent)
    integer_digits = max(0, len(digits) + exponent)
    if fraction_digits > SCALE:
        raise QuantityError(f"{field} has more than {SCALE} decimal places")
    if integer_digits > MAX_INTEGER_DIGITS:
        raise QuantityError(f"{field} has more than {MAX_INTEGER_DIGITS} integer digits")


def signed(side: Side, quantity: Decimal) -> Decimal:
    return quantity if side is Side.BUY else -quantity


def split_whole_and_fraction(quantity: Decimal) -> tuple[Decimal, Decimal]:
    """Whole part of |quantity| and the signed remainder: quantity == sign * whole + remainder."""
    whole = abs(quantity).quantize(ONE, rounding=ROUND_DOWN)
    remainder = quantity - (whole if quantity >= 0 else -whole)
    return whole, remainder


def order_increment(quantity: Decimal) -> Decimal:
    """The finest step an order quantity is written in: 1 for whole shares, 0.001 for 0.003."""
    exponent = quantity.normalize(_EXACT).as_tuple().exponent
    assert isinstance(exponent, int)
    return ONE.scaleb(min(0, exponent))


def money_text(amount: Decimal) -> str:
    """USD as text: exact, trailing zeros dropped, but never fewer than two decimals ("90.00")."""
    text = canonical(amount)
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def canonical(number: Decimal) -> str:
    """One text per value ("1.50" and "1.5" are the same quantity), without exponent notation."""
    text = format(number.normalize(_EXACT), "f")
    return "0" if text in ("-0", "0") else text
