"""The input grammar of SPEC section 3 (models/domain/grammar.py), without a server."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from models.domain.grammar import (
    GrammarError,
    loads_exact,
    parse_bool,
    parse_count,
    parse_decimal,
    parse_symbol,
    parse_time,
    parse_trade_id,
    plain,
)
from models.domain.quantities import canonical


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", "1"), ("007.50", "7.5"), ("0.000000000000000001", "0.000000000000000001"), ("9" * 20, "9" * 20)],
)
def test_plain_decimals_are_read_exactly(text: str, expected: str) -> None:
    assert plain(parse_decimal(text)) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("\u0661\u0662", "ASCII digits"),
        ("\uff11", "ASCII digits"),
        ("1_000", "ASCII digits"),
        ("1e2", "ASCII digits"),
        ("-1", "ASCII digits"),
        ("+1", "ASCII digits"),
        (" 1", "ASCII digits"),
        ("1\n", "ASCII digits"),
        ("NaN", "ASCII digits"),
        (".5", "ASCII digits"),
        ("0.0000000000000000001", "more than 18 decimal places"),
        ("1" * 21, "more than 20 integer digits"),
    ],
)
def test_decimals_outside_the_grammar_are_refused_with_the_problem(text: str, problem: str) -> None:
    with pytest.raises(GrammarError, match=problem):
        parse_decimal(text)


def test_json_numbers_are_judged_by_the_text_they_were_written_in() -> None:
    body = loads_exact(b'{"ok": 0.100000000000000001, "exponent": 1e2, "tiny": 0.0000001}')
    assert parse_decimal(body["ok"]) == Decimal("0.100000000000000001")
    assert parse_decimal(body["tiny"]) == Decimal("0.0000001")
    with pytest.raises(GrammarError):
        parse_decimal(body["exponent"])


@pytest.mark.parametrize("value", [True, False, None, [], {}])
def test_decimals_of_another_json_type_are_refused(value: object) -> None:
    with pytest.raises(GrammarError, match="decimal"):
        parse_decimal(value)


def test_zero_is_a_decimal_but_not_a_positive_one() -> None:
    assert parse_decimal("0.000") == 0
    with pytest.raises(GrammarError, match="greater than 0"):
        parse_decimal("0.000", positive=True)


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, "1", None, [True], loads_exact(b"1")])
def test_booleans_are_json_true_or_false_only(value: object) -> None:
    assert parse_bool(True) is True and parse_bool(False) is False
    with pytest.raises(GrammarError, match="true or false"):
        parse_bool(value)


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-11-02T14:30:00Z", datetime(2026, 11, 2, 14, 30, tzinfo=UTC)),
        ("2026-11-02t14:30:00.5z", datetime(2026, 11, 2, 14, 30, 0, 500000, tzinfo=UTC)),
        ("2026-11-02T14:30:00+23:59", datetime(2026, 11, 1, 14, 31, tzinfo=UTC)),
        ("2026-11-02T14:30:00-23:59", datetime(2026, 11, 3, 14, 29, tzinfo=UTC)),
        ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("1970-01-01T01:00:00+01:00", datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_times_are_normalized_to_utc(text: str, utc: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == utc and parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0001-01-01T00:00:00+01:00", "outside"),
        ("9999-12-31T23:59:59-00:01", "outside"),
        ("1969-12-31T23:59:59Z", "outside"),
        ("0000-01-01T00:00:00Z", "outside"),
        ("9999-12-31T23:59:59.5Z", "outside"),
        ("2026-11-02T14:30:60Z", "leap second"),
        ("2026-11-02T14:30:00+24:00", "offset"),
        ("2026-11-02T14:30:00+05:60", "offset"),
        ("2026-02-30T14:30:00Z", "calendar"),
        ("2026-11-02T14:30:00.1234567Z", "6 fractional"),
        ("2026-11-02T14:30:00", "RFC 3339"),
        ("2026-11-02 14:30:00Z", "RFC 3339"),
        ("2026-11-02T14:30:00Z\n", "RFC 3339"),
        ("\u0662026-11-02T14:30:00Z", "RFC 3339"),
        ("2026-11-02T14:30:00+0100", "RFC 3339"),
    ],
)
def test_times_outside_the_grammar_or_the_range_are_refused(text: str, problem: str) -> None:
    with pytest.raises(GrammarError, match=problem):
        parse_time(text)


def test_trade_ids_and_symbols_follow_their_patterns_to_the_last_character() -> None:
    assert parse_trade_id("Fill.2026:x_1-a") == "Fill.2026:x_1-a"
    assert parse_symbol("BTC/USD") == "BTC/USD"
    for bad_id in ("a/b", "", "x" * 129, "a\n", "é", 7):
        with pytest.raises(GrammarError):
            parse_trade_id(bad_id)
    for bad_symbol in ("aapl", "A" * 17, "AAPL\n", "ÄPL", "A B", None):
        with pytest.raises(GrammarError):
            parse_symbol(bad_symbol)


@pytest.mark.parametrize("text", ["1_0", " 10", "+10", "10.0", "\uff11", "-1", ""])
def test_query_counts_are_ascii_digits_only(text: str) -> None:
    assert parse_count("10") == 10
    with pytest.raises(GrammarError):
        parse_count(text)


def test_zero_with_eighteen_decimals_is_written_plain() -> None:
    assert plain(Decimal("0E-18")) == "0"
    assert canonical(Decimal("-0.000000000000000000")) == "0"


def test_thirty_eight_digit_values_are_written_without_rounding() -> None:
    assert canonical(Decimal("12345678901234567890.123456789012345678")) == "12345678901234567890.123456789012345678"
    assert canonical(Decimal("100000000000000000.000000000010000000")) == "100000000000000000.00000000001"
