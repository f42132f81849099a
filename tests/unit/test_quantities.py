from __future__ import annotations

from decimal import Decimal

import pytest

from models.domain.quantities import QuantityError, canonical, parse_decimal, split_whole_and_fraction

D = Decimal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.123456789012345678", D("0.123456789012345678")),
        (D("1.5"), D("1.5")),
        (7, D(7)),
        (" 2.50 ", D("2.50")),
    ],
)
def test_parse_decimal_reads_exactly(value: object, expected: Decimal) -> None:
    assert parse_decimal(value, field="quantity") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("0.1234567890123456789", "more than 18 decimal places"),
        ("1" * 21, "more than 20 integer digits"),
        ("1" * 40, "more than 20 integer digits"),
        ("abc", "not a decimal"),
        (True, "decimal string or number"),
        (1.5, "decimal string or number"),  # float-ok: proves floats are refused
        (None, "decimal string or number"),
    ],
)
def test_parse_decimal_refuses_what_numeric_would_alter(value: object, message: str) -> None:
    with pytest.raises(QuantityError, match=message):
        parse_decimal(value, field="quantity")


@pytest.mark.parametrize(
    ("quantity", "whole", "rest"),
    [
        (D("3.7"), D(3), D("0.7")),
        (D("-3.7"), D(3), D("-0.7")),
        (D("0.999"), D(0), D("0.999")),
        (D(2), D(2), D(0)),
    ],
)
def test_split_whole_and_fraction_keeps_the_sign_in_the_remainder(
    quantity: Decimal, whole: Decimal, rest: Decimal
) -> None:
    assert split_whole_and_fraction(quantity) == (whole, rest)


def test_canonical_text_ignores_trailing_zeros() -> None:
    assert canonical(D("1.500")) == canonical(D("1.5")) == "1.5"
    assert canonical(D("1E+2")) == "100"
    assert canonical(D("-0.0")) == "0"
