"""Hostile values for the input grammar (SPEC section 3), shared by the property tests and the fuzz run.

Unicode digits and spaces, exponents, signs, underscores, huge and tiny magnitudes, offsets up
to +-23:59 and beyond, years 1 to 9999, NaN and Infinity, wrong JSON types. JSON numbers are
``RawNumber`` text written into the body as is, so that they never pass through float.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st


class RawNumber(str):
    """JSON number text written as is, so that exact decimals travel as numbers too."""


def to_json(value: Any) -> str:
    if isinstance(value, RawNumber):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


FOREIGN_DIGITS = "\u0660\u0661\u0665\u0669\u06f1\u0966\u0967\u09e7\uff10\uff11\uff19\U0001d7ce\U0001d7cf\u00b2\u2460"
ODD_SPACES = " \u00a0\u2007\u202f\u3000\t\n\u200b"
HOSTILE_NUMBER_CHARS = "0123456789" * 3 + ".-+eE_,x" + FOREIGN_DIGITS + ODD_SPACES
WRONG_TYPES = st.one_of(
    st.none(),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=1),
)
DECIMAL_STRINGS = st.one_of(
    st.from_regex(r"[0-9]{1,22}(\.[0-9]{1,20})?", fullmatch=True),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),  # exponents, signs, NaN, huge and tiny
    st.text(st.sampled_from(HOSTILE_NUMBER_CHARS), min_size=1, max_size=24),
    st.from_regex(r"[0-9]{1,3}", fullmatch=True).map(lambda s: s + "_000"),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "sNaN", "1e999999", "0E-18", "-0", "+1", "0x10", ".5", "5."]),
)
JSON_NUMBERS = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,21})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
# (kind, value): kind "string" or "number" says how the text travels; "other" is another JSON type.
DECIMALS = st.one_of(
    st.tuples(st.just("string"), DECIMAL_STRINGS),
    st.tuples(st.just("number"), JSON_NUMBERS),
    st.tuples(st.just("other"), WRONG_TYPES),
)


def on_the_wire(kind: str, value: Any) -> Any:
    return RawNumber(value) if kind == "number" else value


@st.composite
def time_texts(draw: st.DrawFn) -> str:
    """RFC 3339 look-alikes: every component now and then just out of range or in another script."""
    year = draw(st.integers(1, 9999) | st.sampled_from([0, 1, 1969, 1970, 9999]))
    month = draw(st.integers(1, 12) | st.sampled_from([0, 13]))
    day = draw(st.integers(1, 28) | st.integers(29, 32) | st.just(0))
    hms = draw(st.tuples(st.integers(0, 23) | st.just(24), st.integers(0, 59), st.integers(0, 59) | st.just(60)))
    fraction = draw(st.none() | st.text("0123456789", min_size=1, max_size=9))
    sign, hours, minutes = draw(st.sampled_from("+-")), draw(st.integers(0, 25)), draw(st.integers(0, 60))
    numeric = [f"{sign}{hours:02d}:{minutes:02d}", f"{sign}{hours:02d}{minutes:02d}"]
    offset = draw(st.sampled_from(["Z", "z", "", *numeric]))
    text = f"{year:04d}-{month:02d}-{day:02d}{draw(st.sampled_from('TtT _'))}{hms[0]:02d}:{hms[1]:02d}:{hms[2]:02d}"
    text += (f".{fraction}" if fraction else "") + offset
    if draw(st.integers(0, 9)) == 0:  # one digit written in another script
        at = draw(st.sampled_from([i for i, c in enumerate(text) if c.isdigit()]))
        text = text[:at] + draw(st.sampled_from(FOREIGN_DIGITS)) + text[at + 1 :]
    return text


TIMES = st.one_of(
    time_texts(), time_texts(), time_texts(), st.text(max_size=30), WRONG_TYPES, JSON_NUMBERS.map(RawNumber)
)
OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
# Valid times only: any year the range allows, any offset to +-23:59 (kept inside the range in UTC).
VALID_TIMES = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS).map(
    lambda moment: moment.isoformat()
)
VALID_TIMES_UTC = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
TRADE_IDS = st.one_of(
    st.from_regex(r"[A-Za-z0-9._:-]{1,130}", fullmatch=True),
    st.text(max_size=40),
    st.text(st.sampled_from("ab09._:-/ \\%?#é\u0661\n"), min_size=1, max_size=12),
    st.sampled_from([".", "..", "a/b", "%2F", "x" * 129, "x" * 128]),
    WRONG_TYPES,
)
SYMBOLS = st.one_of(
    st.from_regex(r"[A-Z0-9./-]{1,18}", fullmatch=True),
    st.text(st.sampled_from("AZ09./-_ az\u00c4\u0130\u0661\uff21\n"), min_size=1, max_size=18),
    st.text(max_size=20),
    WRONG_TYPES,
)
BOOLEANS = st.one_of(
    st.booleans(),
    st.sampled_from(["true", "false", "yes", "no", "on", "off", "1", "0", "True", ""]),
    st.sampled_from(["1", "0", "1.0", "0.0", "-1"]).map(RawNumber),
    WRONG_TYPES,
)
# For the fuzz run's plain random overlay (not Hypothesis draws).
HOSTILE_AMOUNTS = ["\u0661\u0662", "\uff11\uff10", "1_000", "1e2", "1E-18", "-1", "+1", " 1", "1\u00a0", "NaN", "0E-18"]
HOSTILE_BOOLEANS: list[Any] = ["yes", "true", "on", 1, "1", 0, None, [True]]
